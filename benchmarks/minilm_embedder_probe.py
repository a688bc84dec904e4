"""What all-MiniLM-L6-v2 can lose as an embedder: one cut at a time, before any training.

    python benchmarks/minilm_embedder_probe.py

The embedding-fidelity recipe (``policies/minilm-embedder.yaml``) prunes what this
measurement says is cheap to lose. Each branch of one compresskit run removes one kind of
structure (FFN neurons, attention heads, whole layers), with no distillation, so the cosine
to the fp32 teacher on 512 held-out Rotten Tomatoes snippets says how much that structure
carries, next to how much compute it frees (MACs at sequence 64). Records
``results/minilm_embedder_probe.{md,json}``.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (sets thread env vars before torch starts)
import minilm  # noqa: E402
import minilm_case  # noqa: E402
from rotten_tomatoes import load_rt_split  # noqa: E402

CUTS: dict[str, dict] = {
    "ffn-50": {"pass": "prune_transformer", "config": {"heads": 0.0, "ffn": 0.5}},
    "ffn-75": {"pass": "prune_transformer", "config": {"heads": 0.0, "ffn": 0.75}},
    "heads-50": {"pass": "prune_transformer", "config": {"heads": 0.5, "ffn": 0.0}},
    "heads-25-ffn-50": {"pass": "prune_transformer", "config": {"heads": 0.25, "ffn": 0.5}},
    "heads-50-ffn-50": {"pass": "prune_transformer", "config": {"heads": 0.5, "ffn": 0.5}},
    "layers-1": {"pass": "prune_blocks", "config": {"remove": 1, "criterion": "output"}},
    "layers-2": {"pass": "prune_blocks", "config": {"remove": 2, "criterion": "output"}},
    "layers-3": {"pass": "prune_blocks", "config": {"remove": 3, "criterion": "output"}},
}
PRUNE_DEFAULTS = {"importance": "sensitivity", "round_to": 64, "calibration_batches": 4}


def policy() -> dict:
    nodes = []
    for name, cut in CUTS.items():
        config = dict(cut["config"])
        if cut["pass"] == "prune_transformer":
            config = PRUNE_DEFAULTS | config
        nodes.append({"id": name, "pass": cut["pass"], "config": config})
    return {
        "version": 1,
        "name": "minilm-embedder-probe",
        "teacher": "input",
        "nodes": nodes,
        "targets": ["cpu-ort"],
        "batch_sizes": [32],
    }


def main() -> Path:
    from compresskit.models.loading import LoadedModel
    from compresskit.policies.loader import parse_policy

    start = time.perf_counter()
    bert, tokenizer = minilm.load_bert()
    split = load_rt_split()
    data = minilm_case.rotten_tomatoes_bundle(tokenizer, split, embedding=True, quick=False)
    model = minilm.SentenceEncoder(copy.deepcopy(bert)).eval()
    out = common.ARTIFACTS / "minilm_embedder_probe"
    import shutil

    import compresskit

    shutil.rmtree(out, ignore_errors=True)
    result = compresskit.run(
        parse_policy(json.dumps(policy())),
        model=LoadedModel(model, {"kind": "python"}),
        data=data,
        out=out,
        latency_seconds=0.5,
        profile=False,
    )
    report = result.report
    base = report.baseline
    rows = []
    for entry in report.candidates:
        b32 = entry.latency_at("cpu-ort", 32)
        rows.append(
            {
                "cut": entry.name,
                "macs_kept": entry.macs / base.macs,
                "params_kept": entry.params / base.params,
                "cosine": entry.metrics["cosine"],
                "cosine_p5": entry.metrics["cosine_p5"],
                "b32_speedup": b32.speedup if b32 is not None else None,
            }
        )
    rows.sort(key=lambda r: -r["cosine"])
    lines = [
        "# minilm_embedder_probe",
        "",
        "all-MiniLM-L6-v2 as a sentence embedder: one structural cut at a time, no "
        "distillation, cosine of the sentence embedding to the fp32 teacher on the 512 "
        "held-out snippets of compresskit's eval split (`python "
        "benchmarks/minilm_embedder_probe.py`; b32 speedup: fp32 ORT at sequence 64, "
        f"short timing, indicative only). Wall time {time.perf_counter() - start:.0f}s.",
        "",
        "| cut | MACs kept | params kept | cosine | cos p5 | b32 speedup (fp32) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        speed = f"{r['b32_speedup']:.2f}x" if r["b32_speedup"] else "–"
        lines.append(
            f"| {r['cut']} | {r['macs_kept']:.2f} | {r['params_kept']:.2f} | "
            f"{r['cosine']:.4f} | {r['cosine_p5']:.4f} | {speed} |"
        )
    path = common.RESULTS / "minilm_embedder_probe.md"
    path.write_text("\n".join(lines) + "\n")
    (common.RESULTS / "minilm_embedder_probe.json").write_text(
        json.dumps({"rows": rows, "environment": common.environment()}, indent=1) + "\n"
    )
    print("\n".join(lines))
    return path


if __name__ == "__main__":
    main()
