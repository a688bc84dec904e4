"""Distillation losses compared on a Fashion-MNIST ResNet pruned by 70% of its channels.

    python benchmarks/distill_fashion_mnist.py            # full: ~6 min on 2 quiet cores
    python benchmarks/distill_fashion_mnist.py --quick    # smoke test: ~20 s

The teacher is the benchmark ResNet (``benchmarks/artifacts/fashion_mnist_resnet.pt``,
trained by ``fashion_mnist_teacher.py`` in the main checkout; read here, never written).
One pruned student (prune_channels, ratio 0.7, L2) is trained from the same starting
weights, with the same schedule and seed, by each recipe: labels only (fine-tune), KD,
KD + hidden states (projector), NKD, DTS and TAID. Each is scored on the official test
set (which training never sees): accuracy, agreement with the teacher, churn (good /
bad), and the training curve. Writes ``benchmarks/results/distill_fashion_mnist*.{json,md}``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("COMPRESSKIT_QUIET", "1")

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MAIN_BENCH = Path(__file__).resolve().parent  # the teacher artifacts and case helpers

TASK = {"kind": "task", "weight": 0.5}
RECIPES: dict[str, list[dict[str, Any]]] = {
    "fine-tune": [{"kind": "task", "weight": 1.0}],
    "kd": [TASK, {"kind": "kd", "weight": 0.5, "temperature": 4.0}],
    "kd+hidden": [
        TASK,
        {"kind": "kd", "weight": 0.5, "temperature": 4.0},
        {"kind": "hidden", "weight": 0.5, "metric": "cosine", "layers": "last"},
    ],
    "nkd": [{"kind": "nkd", "weight": 1.0, "temperature": 1.0, "gamma": 1.5}],
    "dts": [TASK, {"kind": "dts", "weight": 0.5}],
    "taid": [TASK, {"kind": "taid", "weight": 0.5}],
}


def load_teacher() -> torch.nn.Module:
    sys.path.insert(0, str(MAIN_BENCH))
    from models import resnet_fmnist

    path = MAIN_BENCH / "artifacts" / "fashion_mnist_resnet.pt"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run {MAIN_BENCH}/fashion_mnist_teacher.py first")
    model = resnet_fmnist()
    model.load_state_dict(torch.load(path, weights_only=True))
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.eval()


@torch.no_grad()
def logits(model: torch.nn.Module, loader) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    outs, labels = [], []
    for x, y in loader:
        outs.append(model(x))
        labels.append(y)
    return torch.cat(outs), torch.cat(labels)


def scores(out: torch.Tensor, labels: torch.Tensor, teacher_out: torch.Tensor) -> dict[str, float]:
    from compresskit.tasks import get_task

    return get_task("classification").score(out.numpy(), labels.numpy(), teacher_out.numpy())


def curve(history: dict[str, Any]) -> str:
    return " ".join(
        f"{e['loss']:.3f}/{e['metrics'].get('accuracy', float('nan')):.3f}"
        for e in history["epochs"]
    )


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--train-samples", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--only", nargs="*", default=None, help="recipe names to run")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)

    from compresskit.context import Context
    from compresskit.data import load_data
    from compresskit.models.size import count_macs, count_params
    from compresskit.passes.distill import Distill, DistillConfig
    from compresskit.passes.prune_channels import PruneChannels, PruneChannelsConfig
    from compresskit.training.loop import TrainConfig

    train_samples = args.train_samples or (2048 if args.quick else 12000)
    epochs = args.epochs or (1 if args.quick else 3)
    eval_samples = 1024 if args.quick else None
    data = load_data("fashion-mnist", seed=0)
    # A fixed slice of the training split keeps six recipes within ~20 minutes on 2 cores.
    data = dataclasses.replace(
        data,
        train=Subset(data.train, range(min(train_samples, len(data.train)))),
        val=Subset(data.val, range(min(2000 if not args.quick else 512, len(data.val)))),
        eval=data.eval if eval_samples is None else Subset(data.eval, range(eval_samples)),
    )
    teacher = load_teacher()
    eval_loader = data.loader("eval", batch_size=512)
    teacher_out, labels = logits(teacher, eval_loader)
    example = data.example_inputs(2)
    ctx = Context(data=data, teacher=teacher, example_inputs=example, seed=0)
    torch.manual_seed(0)
    pruned = PruneChannels(PruneChannelsConfig(ratio=0.7, importance="l2")).apply(
        copy.deepcopy(teacher).requires_grad_(True), ctx.for_node()
    )
    rows: list[dict[str, Any]] = [
        {
            "recipe": "teacher",
            "params": count_params(teacher),
            "macs": count_macs(teacher, example),
            **scores(teacher_out, labels, teacher_out),
        },
        {
            "recipe": "pruned (no training)",
            "params": count_params(pruned),
            "macs": count_macs(pruned, example),
            **scores(logits(pruned, eval_loader)[0], labels, teacher_out),
        },
    ]
    schedule = TrainConfig(epochs=epochs, lr=2e-3, batch_size=128, warmup_steps=20)
    for name, losses in RECIPES.items():
        if args.only and name not in args.only:
            continue
        node = ctx.for_node()
        start = time.perf_counter()
        student = Distill(DistillConfig(losses=losses, train=schedule)).apply(
            copy.deepcopy(pruned), node
        )
        seconds = time.perf_counter() - start
        out, _ = logits(student, eval_loader)
        rows.append(
            {
                "recipe": name,
                "params": count_params(student),
                "macs": count_macs(student, example),
                **scores(out, labels, teacher_out),
                "train_seconds": round(seconds, 1),
                "losses": losses,
                "history": node.records["history"],
                "distill": node.records["distill"],
            }
        )
        print(
            f"{name}: accuracy {rows[-1]['accuracy']:.4f} agreement "
            f"{rows[-1]['agreement']:.4f} ({seconds:.0f} s)",
            flush=True,
        )

    meta = {
        "teacher": "benchmarks/artifacts/fashion_mnist_resnet.pt (main checkout)",
        "prune": "prune_channels ratio 0.7, l2",
        "train_samples": len(data.train),  # type: ignore[arg-type]
        "eval_samples": len(labels),
        "schedule": schedule.model_dump(),
        "torch_threads": torch.get_num_threads(),
        "quick": args.quick,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"distill_fashion_mnist{'_quick' if args.quick else ''}"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Distillation recipes: Fashion-MNIST ResNet pruned 70%",
        "",
        f"{meta['train_samples']} training samples, {epochs} epochs, eval on "
        f"{meta['eval_samples']} test images; agreement and churn are against the teacher. "
        "Curve: train loss / val accuracy per epoch.",
        "",
        "| recipe | params | acc | agree | churn | good churn | bad churn | train s | curve |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['recipe']} | {row['params']:,} | {row['accuracy']:.4f} | "
            f"{row['agreement']:.4f} | {row['churn']:.4f} | {row['churn_good']:.4f} | "
            f"{row['churn_bad']:.4f} | {row.get('train_seconds', '-')} | "
            f"{curve(row['history']) if 'history' in row else '-'} |"
        )
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return stem


if __name__ == "__main__":
    main()
