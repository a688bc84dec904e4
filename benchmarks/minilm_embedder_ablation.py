"""What the embedding-fidelity recipe was chosen from: int8 kinds and distillation losses.

    python benchmarks/minilm_embedder_ablation.py --study int8      # ~6 min
    python benchmarks/minilm_embedder_ablation.py --study distill   # ~35 min
    python benchmarks/minilm_embedder_ablation.py --study widths    # ~10 min

Each study is one branching compresskit run on all-MiniLM-L6-v2 as a sentence embedder,
scored by the cosine to the fp32 teacher on the 512 held-out snippets of compresskit's
eval split, timed at batch 32 against the fp32 baseline in one worker (short timings:
indicative):

* ``int8``: the whole model under dynamic int8 and under static int8 with each calibration
  method (``auto`` included), with the layers most sensitive to int8 kept float
  (``static-auto-mixed-NNN``: ``mixed_precision`` with ``max_cosine_drop`` NNN thousandths
  of cosine on calibration data, at most 4 layers), and static int8 after
  removing 1 or 2 layers (no training); the run report shows where the int8 models' time
  goes.
* ``distill``: 2 of 6 layers removed, then one epoch of distillation on the Rotten
  Tomatoes training snippets plus 6,000 Wikipedia sentences, with different loss terms
  and learning rates (no int8).
* ``widths``: how much each amount of heads and FFN neurons removed buys in speed once
  int8, before any training (what distillation then has to win back), to size the
  recipe's ``narrower`` candidate.

Records ``results/minilm_embedder_ablation/<study>.md`` (the run report's table) and
``<study>_report.md`` (the whole report); the run itself stays under ``artifacts/``.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (sets thread env vars before torch starts)
import minilm  # noqa: E402
import minilm_case  # noqa: E402
from rotten_tomatoes import load_rt_split  # noqa: E402

DISTILL_WIKI = 6_000
STATIC = {"calibration_batches": 8}
REMOVE = {"criterion": "output", "calibration_batches": 4}


def int8_nodes() -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = [{"id": "dynamic", "pass": "quantize_dynamic"}]
    for method in ("minmax", "percentile", "mse", "entropy", "auto"):
        config = STATIC | {"calibration": method}
        nodes.append({"id": f"static-{method}", "pass": "quantize", "config": config})
    for cosine_drop in (0.004, 0.002):  # the most sensitive layers float, up to 4
        mixed = {"max_cosine_drop": cosine_drop, "max_float_layers": 4}
        config = STATIC | {"calibration": "auto", "mixed_precision": mixed}
        name = f"static-auto-mixed-{cosine_drop * 1000:03.0f}"  # of a thousandth
        nodes.append({"id": name, "pass": "quantize", "config": config})
    for removed in (1, 2):
        nodes += [
            {
                "id": f"remove-{removed}",
                "pass": "prune_blocks",
                "config": REMOVE | {"remove": removed},
            },
            {
                "id": f"remove-{removed}-static-auto",
                "pass": "quantize",
                "after": f"remove-{removed}",
                "config": STATIC | {"calibration": "auto"},
            },
        ]
    return nodes


def distill_nodes() -> list[dict[str, Any]]:
    output = {"kind": "output", "weight": 10.0, "metric": "cosine"}
    hidden = {"kind": "hidden", "weight": 1.0, "metric": "mse", "layers": "auto"}
    last = {"kind": "hidden", "weight": 1.0, "metric": "mse", "layers": "last"}
    variants = {
        "output+hidden": ([output, hidden], 2e-4),
        "output": ([output], 2e-4),
        "output+last": ([output, last], 2e-4),
        "output+hidden-lr5e-4": ([output, hidden], 5e-4),
    }
    nodes: list[dict[str, Any]] = [
        {"id": "remove-2", "pass": "prune_blocks", "config": REMOVE | {"remove": 2}}
    ]
    for name, (losses, lr) in variants.items():
        train = {"epochs": 1, "lr": lr, "batch_size": 32, "warmup_steps": 50, "keep_best": False}
        nodes.append(
            {
                "id": name,
                "pass": "distill",
                "after": "remove-2",
                "config": {"losses": losses, "train": train},
            }
        )
    return nodes


WIDTHS = {  # heads, FFN neurons removed (fractions, ranked across the model)
    "h17-f15": (0.1667, 0.15),
    "h17-f30": (0.1667, 0.30),
    "h25-f15": (0.25, 0.15),
    "h25-f30": (0.25, 0.30),
    "h33-f15": (0.3333, 0.15),
}


def widths_nodes() -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = []
    for name, (heads, ffn) in WIDTHS.items():
        prune = {
            "heads": heads,
            "ffn": ffn,
            "importance": "sensitivity",
            "global_ranking": True,
            "calibration_batches": 4,
        }
        nodes += [
            {"id": name, "pass": "prune_transformer", "config": prune},
            {
                "id": f"{name}-int8-linear",
                "pass": "quantize",
                "after": name,
                "config": STATIC | {"calibration": "auto"},
            },
            {"id": f"{name}-int8", "pass": "quantize_embeddings", "after": f"{name}-int8-linear"},
        ]
    return nodes


STUDIES = {"int8": int8_nodes, "distill": distill_nodes, "widths": widths_nodes}


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--study", choices=sorted(STUDIES), required=True)
    args = parser.parse_args(argv)

    import compresskit
    from compresskit.models.loading import LoadedModel
    from compresskit.policies.loader import parse_policy

    start = time.perf_counter()
    bert, tokenizer = minilm.load_bert()
    unlabelled = minilm_case.wiki_sentences(DISTILL_WIKI) if args.study == "distill" else ()
    data = minilm_case.rotten_tomatoes_bundle(
        tokenizer, load_rt_split(), embedding=True, quick=False, unlabelled=unlabelled
    )
    policy = {
        "version": 1,
        "name": f"minilm-embedder-{args.study}",
        "teacher": "input",
        "nodes": STUDIES[args.study](),
        "targets": ["cpu-ort"],
        "batch_sizes": [32],
        "budget": {"min_cosine": 0.5},
    }
    out = common.ARTIFACTS / f"minilm_embedder_ablation_{args.study}"
    shutil.rmtree(out, ignore_errors=True)
    result = compresskit.run(
        parse_policy(json.dumps(policy)),
        model=LoadedModel(minilm.SentenceEncoder(copy.deepcopy(bert)).eval(), {"kind": "python"}),
        data=data,
        out=out,
        latency_seconds=2.0,
    )
    assert result.run_dir is not None
    report = (result.run_dir / "report.md").read_text()
    table = report[report.index("| model |") :].split("\n\n")[0]
    lines = [
        f"# minilm_embedder_ablation: {args.study}",
        "",
        f"`python benchmarks/minilm_embedder_ablation.py --study {args.study}` "
        f"({len(data.train):,} training texts; cosine to the fp32 teacher on the 512 "
        "held-out snippets of compresskit's eval split; b32 as compresskit's run times it, "
        "short and interleaved with the baseline: indicative). Wall time "
        f"{time.perf_counter() - start:.0f}s. The run's report, with where each model's time "
        f"goes: `{args.study}_report.md`.",
        "",
        table,
    ]
    path = common.RESULTS / "minilm_embedder_ablation" / f"{args.study}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    path.with_name(f"{args.study}_report.md").write_text(report)
    print("\n".join(lines))
    return path


if __name__ == "__main__":
    main()
