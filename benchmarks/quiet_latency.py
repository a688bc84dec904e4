"""Re-time a case's exported models together, interleaved in one worker process.

    python benchmarks/quiet_latency.py fashion_mnist       # after real_fashion_mnist.py
    python benchmarks/quiet_latency.py minilm_sentiment    # after real_minilm_sentiment.py
    python benchmarks/quiet_latency.py minilm_embedding    # after real_minilm_embedding.py

The case scripts time each row right after building it, so rows minutes apart see
different machine load (the compression run itself takes 20 minutes on the MiniLM cases).
This script times the ONNX files those runs left in ``artifacts/<case>/`` with
``compresskit bench``'s harness: all models in one worker, interleaved round-robin per
batch, the noisy-machine check on; so every speedup here is a ratio taken at the same
moment. MiniLM inputs are 128 tokens (ids all 1, full mask). Writes
``results/<case>_latency.{json,md}``; the accuracy/cosine columns stay in
``results/<case>.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (sets thread env vars before torch starts)
from common import ARTIFACTS, RESULTS  # noqa: E402

_MINILM_PEERS = {
    "fp32-ort": "fp32.onnx",
    "ort-dynamic-int8": "ort_dynamic.onnx",
    "ort-static-qdq (MatMul,Gemm)": "ort_static_qdq_matmul.onnx",
    "torch-pruning heads50%+ffn50%": "tp_heads_ffn.onnx",
}
# Row name -> ONNX file under artifacts/<case>/ (the baseline first), and input shapes.
CASES: dict[str, tuple[dict[str, str], list[tuple[int, ...]]]] = {
    "fashion_mnist": (
        {
            "fp32-ort": "fp32.onnx",
            "ort-dynamic-int8": "ort_dynamic.onnx",
            "ort-static-qdq": "ort_static_qdq.onnx",
            "torch-pruning-50%": "tp_channels50.onnx",
            "compresskit fashion-mnist-cnn": "compresskit-fashion-mnist-cnn/pruned-int8/model.onnx",
            "compresskit fashion-mnist-cnn (fp32)": (
                "compresskit-fashion-mnist-cnn/distilled/model.onnx"
            ),
        },
        [(1, 28, 28)],
    ),
    "minilm_sentiment": (
        {**_MINILM_PEERS, "compresskit minilm": "compresskit-minilm/pruned-int8/model.onnx"},
        [(128,), (128,)],
    ),
    "minilm_embedding": (
        {
            **_MINILM_PEERS,
            "compresskit minilm-embedding": "compresskit-minilm-embedding/pruned-int8/model.onnx",
        },
        [(128,), (128,)],
    ),
}


def main(argv: list[str] | None = None) -> Path:
    from compresskit.bench.files import bench_files

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("--seconds", type=float, default=3.0, help="time cap per model/batch")
    args = parser.parse_args(argv)
    files, shapes = CASES[args.case]
    workdir = ARTIFACTS / args.case
    rows = {name: workdir / rel for name, rel in files.items() if (workdir / rel).is_file()}
    missing = sorted(set(files) - set(rows))
    if "fp32-ort" not in rows:
        raise SystemExit(f"{workdir / files['fp32-ort']} is missing: run the case script first")
    runs = bench_files(
        list(rows.values()), ["cpu-ort"], [1, 32], seconds=args.seconds, input_shapes=shapes
    )
    (run,) = runs
    lines = [
        f"# {args.case}: latency, all rows interleaved in one worker",
        "",
        f"`python benchmarks/quiet_latency.py {args.case}`: ONNX Runtime CPU (target "
        f"cpu-ort), inputs {', '.join(str(s) for s in shapes)} per sample, up to "
        f"{args.seconds:g} s per model and batch. Speedup: fp32-ort p50 / row p50, this run.",
        "",
        "| row | ONNX | b1 p50 ms | b1 speedup | b32 p50 ms | b32 speedup | noisy |",
        "|---|---|---|---|---|---|---|",
    ]
    results = []
    for (name, path), model in zip(rows.items(), run.models, strict=True):
        by_batch = {x.batch: x for x in model.latency}
        noisy = any(x.noisy for x in model.latency)
        cells = []
        for batch in (1, 32):
            point = by_batch[batch]
            cells += [f"{point.p50_ms:.2f}", f"{model.speedup[batch]:.2f}x"]
        size = common.onnx_bytes(path)
        lines.append(f"| {name} | {size / 1e6:.2f} MB | {' | '.join(cells)} | {noisy} |")
        results.append(
            {
                "name": name,
                "onnx": str(path.relative_to(common.BENCH_DIR)),
                "onnx_bytes": size,
                **{f"p50_ms_b{b}": by_batch[b].p50_ms for b in (1, 32)},
                **{f"speedup_b{b}": model.speedup[b] for b in (1, 32)},
                "noisy": noisy,
                "noise": sorted({x.noise_reason for x in model.latency if x.noise_reason}),
            }
        )
    if missing:
        lines += ["", f"Not found (not timed): {', '.join(missing)}."]
    out = RESULTS / f"{args.case}_latency"
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    payload = {"case": args.case, "environment": common.environment(), "rows": results}
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    print("\n".join(lines))
    return out.with_suffix(".md")


if __name__ == "__main__":
    main()
