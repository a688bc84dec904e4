"""Structured pruning on Fashion-MNIST: accuracy and measured ONNX Runtime latency of a
small ResNet pruned at 0.3 / 0.5 / 0.7, without fine-tuning, with fine-tuning on labels,
and with distillation from the unpruned model; criteria side by side; and depth pruning.

Every row is exported to ONNX, checked against torch and scored with ONNX Runtime on the
10k test images; then all rows are timed together on ``cpu-ort`` (batch 1 and 32),
interleaved in one worker, so speedups are ratios taken at the same moment.

    python benchmarks/prune_fashion_mnist.py            # full: ~10 min on 2 quiet cores
    python benchmarks/prune_fashion_mnist.py --quick    # proof it runs: ~1-2 min, writes to --out
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import copy
import dataclasses
import datetime as dt
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset

from compresskit.bench.harness import BenchModel, measure_target
from compresskit.bench.measurement import TargetRun
from compresskit.context import Context
from compresskit.data import DataBundle, load_data
from compresskit.errors import CompressKitError
from compresskit.export.onnx import export_onnx
from compresskit.export.targets import load_target
from compresskit.export.verify import onnx_outputs, torch_outputs
from compresskit.models.size import count_macs, count_params
from compresskit.passes.prune_blocks import PruneBlocks, PruneBlocksConfig
from compresskit.passes.prune_channels import PruneChannels, PruneChannelsConfig
from compresskit.training.loop import TrainConfig, train

RESULTS = Path(__file__).resolve().parent / "results"
RATIOS = (0.3, 0.5, 0.7)
CRITERIA = ("l1", "l2", "taylor", "bn_scale", "random")
RECOVERY_CRITERION = "taylor"


class Block(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or strided 1x1 projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """Stride-2 stem, three stages of two blocks (14, 7, 4 px), pool, linear."""

    def __init__(self, widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.stem = nn.Sequential(
            nn.Conv2d(1, w1, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w1), nn.ReLU()
        )
        self.stage1 = nn.Sequential(Block(w1, w1), Block(w1, w1))
        self.stage2 = nn.Sequential(Block(w1, w2, 2), Block(w2, w2))
        self.stage3 = nn.Sequential(Block(w2, w3, 2), Block(w3, w3))
        self.fc = nn.Linear(w3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.fc(x.mean((2, 3)))


def subset(data: DataBundle, train: int, eval_: int) -> DataBundle:
    return dataclasses.replace(
        data,
        train=Subset(data.train, range(min(train, len(data.train)))),  # type: ignore[arg-type]
        val=Subset(data.val, range(min(2000, len(data.val)))),  # type: ignore[arg-type]
        eval=Subset(data.eval, range(min(eval_, len(data.eval)))),  # type: ignore[arg-type]
    )


def row(
    name: str, model: nn.Module, data: DataBundle, work: Path, extra: dict[str, Any]
) -> dict[str, Any]:
    """Export, check ORT against torch, score with ORT (timed later, with all rows)."""
    example = data.example_inputs(2)
    path = export_onnx(model, example, work / f"{name}.onnx").path
    loader = data.loader("eval", batch_size=256)
    labels = torch.cat([y for _, y in loader]).numpy()
    ort_out = onnx_outputs(path, loader)
    parity = float(np.abs(ort_out - torch_outputs(model, loader)).max())
    return {
        "name": name,
        **extra,
        "accuracy": float((ort_out.argmax(-1) == labels).mean()),
        "params": count_params(model),
        "macs": count_macs(model, example),
        "ort_max_abs_error": parity,
        "onnx": path,
    }


def time_rows(rows: list[dict[str, Any]], data: DataBundle, seconds: float) -> TargetRun:
    """Every row on cpu-ort at batch 1 and 32, interleaved in one worker (the first row
    is the speedups' baseline); each row gets its latency in the measurement schema."""
    target = load_target("cpu-ort").model_copy(update={"batch_sizes": [1, 32]})
    models = [BenchModel(r["name"], onnx=r.pop("onnx")) for r in rows]
    sample = [x.numpy() for x in data.example_inputs(2)]
    run = measure_target(target, models, sample, max_seconds=seconds)
    for r in rows:
        measured = run.model(r["name"])
        latency = measured.latency if measured else []
        r["latency"] = [x.model_dump(mode="json") for x in latency]
        for x in latency:
            r[f"b{x.batch}_p50_ms"] = x.p50_ms
            r[f"b{x.batch}_speedup"] = x.speedup
        r["noisy"] = any(x.noisy for x in latency)
    return run


def baseline_p50(path: Path, data: DataBundle, seconds: float) -> float:
    """The baseline's batch-1 p50 alone: the goal of the latency-target row."""
    target = load_target("cpu-ort").model_copy(update={"batch_sizes": [1]})
    sample = [x.numpy() for x in data.example_inputs(2)]
    run = measure_target(target, [BenchModel("baseline", onnx=path)], sample, max_seconds=seconds)
    latency = run.latency("baseline", 1)
    if latency is None:
        raise CompressKitError(f"the baseline could not be timed: {run.skipped}")
    return latency.p50_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budget: proves the script runs")
    parser.add_argument("--out", type=Path, default=None, help="results directory")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = args.out or (Path(tempfile.mkdtemp(prefix="prune-fmnist-")) if args.quick else RESULTS)
    quick = args.quick
    full = load_data("fashion-mnist", seed=0)
    data = subset(full, 2000 if quick else 54000, 1000 if quick else 10000)
    tune_data = subset(full, 1000 if quick else 12000, 1000 if quick else 10000)
    epochs = 1 if quick else 3
    tune = TrainConfig(epochs=1, lr=2e-3, batch_size=128)
    ratios = RATIOS[:2] if quick else RATIOS
    criteria = ("l2", "taylor") if quick else CRITERIA
    seconds = 0.2 if quick else 1.0
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        teacher = SmallResNet((16, 32, 64))
        t0 = time.perf_counter()
        train(
            teacher,
            data,
            TrainConfig(epochs=epochs, lr=3e-3, batch_size=128),
            description="baseline",
        )
        print(f"baseline trained in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        teacher.eval()
        frozen = copy.deepcopy(teacher).requires_grad_(False)
        rows.append(row("baseline", teacher, data, work, {"ratio": 0.0}))

        def context(bundle: DataBundle) -> Context:
            return Context(data=bundle, teacher=frozen, example_inputs=bundle.example_inputs(2))

        for ratio in ratios:
            for criterion in criteria:
                config = PruneChannelsConfig(ratio=ratio, importance=criterion, round_to=4)
                pruned = PruneChannels(config).apply(copy.deepcopy(teacher), context(data))
                rows.append(
                    row(
                        f"{criterion}-{ratio}",
                        pruned,
                        data,
                        work,
                        {"ratio": ratio, "criterion": criterion, "recovery": "none"},
                    )
                )
            for recovery, alpha in (("finetune", 1.0), ("distill", 0.3)):
                config = PruneChannelsConfig(
                    ratio=ratio,
                    importance=RECOVERY_CRITERION,
                    round_to=4,
                    finetune={"alpha": alpha, "train": tune.model_dump()},
                )
                pruned = PruneChannels(config).apply(copy.deepcopy(teacher), context(tune_data))
                rows.append(
                    row(
                        f"{RECOVERY_CRITERION}-{ratio}-{recovery}",
                        pruned,
                        data,
                        work,
                        {"ratio": ratio, "criterion": RECOVERY_CRITERION, "recovery": recovery},
                    )
                )
            print(f"ratio {ratio} done at {time.perf_counter() - started:.0f} s", file=sys.stderr)
        # Latency target: prune until the exported model measures 0.7x the baseline's b1 p50.
        goal = 0.7 * baseline_p50(rows[0]["onnx"], data, seconds)
        config = PruneChannelsConfig(
            importance=RECOVERY_CRITERION,
            round_to=4,
            target={"latency_ms": goal, "batch": 1, "step": 0.1, "measure_seconds": seconds},
            finetune={"alpha": 0.3, "train": tune.model_dump()},
        )
        ctx = context(tune_data)
        try:
            pruned = PruneChannels(config).apply(copy.deepcopy(teacher), ctx)
            rows.append(
                row(
                    "latency-0.7x-distill",
                    pruned,
                    data,
                    work,
                    {
                        "ratio": ctx.records["steps"][-1].get("ratio", 0.0),
                        "criterion": RECOVERY_CRITERION,
                        "recovery": "distill",
                        "latency_goal_ms": goal,
                        "search": ctx.records["steps"],
                    },
                )
            )
        except CompressKitError as error:  # noisy machine: say so instead of a row
            print(f"latency target row skipped: {error}", file=sys.stderr)
        # Depth: remove the least sensitive blocks (never the first), then distil.
        for remove in (1, 2):
            config = PruneBlocksConfig(
                remove=remove,
                protect_first=1,
                finetune={"alpha": 0.3, "train": tune.model_dump()},
            )
            ctx = context(tune_data)
            pruned = PruneBlocks(config).apply(copy.deepcopy(teacher), ctx)
            rows.append(
                row(
                    f"blocks-{remove}-distill",
                    pruned,
                    data,
                    work,
                    {
                        "ratio": 0.0,
                        "criterion": "block loss",
                        "recovery": "distill",
                        "removed": ctx.records["removed"],
                    },
                )
            )

        run = time_rows(rows, data, seconds)
    meta = {
        "benchmark": "prune_fashion_mnist",
        "quick": quick,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 1),
        "threads": args.threads,
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "baseline_epochs": epochs,
        "finetune": tune.model_dump(),
        "finetune_train_samples": len(tune_data.train),  # type: ignore[arg-type]
        "eval_samples": len(data.eval),  # type: ignore[arg-type]
        "target": run.info().model_dump(mode="json"),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "prune_fashion_mnist.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2)
    )
    (out / "prune_fashion_mnist.md").write_text(render(meta, rows))
    print(render(meta, rows))
    print(f"wrote {out}", file=sys.stderr)


def render(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Structured pruning on Fashion-MNIST"
        + (" (QUICK RUN: not a result)" if meta["quick"] else ""),
        "",
        f"{meta['created']}, {meta['seconds']} s, {meta['threads']} threads, {meta['machine']}. "
        f"Accuracy: ONNX Runtime on {meta['eval_samples']} test images. Latency: p50 on cpu-ort, "
        "all rows interleaved in one worker; speedup = baseline p50 / row p50 there. "
        "Fine-tuning and distillation: "
        f"{meta['finetune']['epochs']} epoch on {meta['finetune_train_samples']} training images.",
        "",
        "| row | ratio | criterion | recovery | acc | params | MACs | b1 ms | b1 x | b32 ms "
        "| b32 x | ORT err |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['ratio']} | {r.get('criterion', '-')} | {r.get('recovery', '-')} "
            f"| {r['accuracy']:.4f} | {r['params']:,} | {r['macs'] / 1e6:.2f}M "
            f"| {r['b1_p50_ms']:.3f} | {r['b1_speedup']:.2f} | {r['b32_p50_ms']:.3f} "
            f"| {r['b32_speedup']:.2f} | {r['ort_max_abs_error']:.1e} |"
        )
    slower = [r["name"] for r in rows[1:] if r["b1_speedup"] < 1.05]
    if slower:
        lines += ["", f"NOT faster at batch 1 (speedup < 1.05): {', '.join(slower)}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
