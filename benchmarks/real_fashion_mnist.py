"""Fashion-MNIST ResNet, side by side with the tools users would pick instead.

    python benchmarks/real_fashion_mnist.py            # full 10k test set -> results/
    python benchmarks/real_fashion_mnist.py --quick    # 512 test images -> results/quick/

Rows (one run, one model live at a time): fp32 torch eager, fp32 ONNX Runtime, ORT
dynamic int8, ORT static QDQ int8, torch-pruning 50% channels without fine-tuning.
compresskit's own rows are added by appending producers to ``PRODUCERS``.
The teacher comes from ``fashion_mnist_teacher.py`` (trained first if missing).
"""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (sets thread env vars before torch starts)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import ARTIFACTS, Candidate, Feed, Runner  # noqa: E402
from models import resnet_fmnist  # noqa: E402

CASE = "fashion_mnist"
PRUNE_RATIO = 0.5  # the channel ratio of compresskit's default policy
CALIBRATION_SAMPLES = 256
POLICY = common.BENCH_DIR.parent / "policies" / "fashion-mnist-cnn.yaml"
FAST_POLICY = POLICY.with_name("fashion-mnist-fast.yaml")
QUICK_TRAIN = 4096  # training images of --quick (and of the e2e test)


@dataclass
class FashionCase:
    """Teacher, data and scratch directory of the Fashion-MNIST case."""

    teacher: torch.nn.Module
    x_eval: np.ndarray
    y_eval: np.ndarray
    x_calibration: np.ndarray
    workdir: Path
    quick: bool
    name: str = CASE
    metric: Literal["accuracy", "cosine"] = "accuracy"
    input_name: str = "input"
    teacher_pred: np.ndarray = field(default_factory=lambda: np.empty(0))
    data: Any = None  # the compresskit DataBundle the policy rows train and calibrate on
    export_notes: dict[str, Any] = field(default_factory=dict)
    teacher_info: dict[str, Any] = field(default_factory=dict)
    _fp32_onnx: Path | None = None

    def predict(self, runner: Runner) -> np.ndarray:
        logits = [
            runner({self.input_name: self.x_eval[i : i + 500]})
            for i in range(0, len(self.x_eval), 500)
        ]
        return np.concatenate(logits).argmax(1)

    def evaluate(self, runner: Runner) -> dict[str, float]:
        pred = self.predict(runner)
        return {
            "accuracy": float((pred == self.y_eval).mean()),
            "agreement": float((pred == self.teacher_pred).mean()),
            "eval_samples": len(pred),
        }

    def latency_feeds(self) -> dict[str, list[Feed]]:
        return {
            "b1": [{self.input_name: self.x_eval[i : i + 1]} for i in range(32)],
            "b32": [{self.input_name: self.x_eval[i : i + 32]} for i in range(0, 256, 32)],
        }

    def calibration_feeds(self) -> list[Feed]:
        x = self.x_calibration
        return [{self.input_name: x[i : i + 32]} for i in range(0, len(x), 32)]

    def export(self, model: torch.nn.Module, path: Path) -> dict[str, Any]:
        from compresskit.export.onnx import export_onnx

        result = export_onnx(model, (torch.from_numpy(self.x_eval[:2]),), path)
        return {
            "exporter": result.exporter,
            "export_s": round(result.seconds, 2),
            "fallback": result.fallback_reason,
        }

    def fp32_onnx(self) -> Path:
        """The fp32 export every ORT peer starts from (written once per run)."""
        if self._fp32_onnx is None:
            path = self.workdir / "fp32.onnx"
            self.export_notes = self.export(self.teacher, path)
            self._fp32_onnx = path
        return self._fp32_onnx


@common.producer("fp32-torch", "baseline")
def fp32_torch(case: FashionCase) -> Candidate:
    return Candidate(
        "fp32-torch",
        "baseline",
        module=case.teacher,
        notes={"runtime": "torch eager", "threads": torch.get_num_threads()},
    )


@common.producer("fp32-ort", "baseline")
def fp32_ort(case: FashionCase) -> Candidate:
    path = case.fp32_onnx()
    return Candidate("fp32-ort", "baseline", onnx_path=path, notes=dict(case.export_notes))


@common.producer("ort-dynamic-int8", "peer")
def ort_dynamic(case: FashionCase) -> Candidate:
    dst = case.workdir / "ort_dynamic.onnx"
    notes = common.quantize_dynamic_int8(case.fp32_onnx(), dst)
    return Candidate("ort-dynamic-int8", "peer", onnx_path=dst, notes=notes)


@common.producer("ort-static-qdq", "peer")
def ort_static(case: FashionCase) -> Candidate:
    dst = case.workdir / "ort_static_qdq.onnx"
    notes = common.quantize_static_qdq(case.fp32_onnx(), dst, case.calibration_feeds())
    return Candidate("ort-static-qdq", "peer", onnx_path=dst, notes=notes)


@common.producer("torch-pruning-50%", "peer")
def torch_pruning_channels(case: FashionCase) -> Candidate:
    """Torch-Pruning alone: L2-magnitude channel pruning at the policy's ratio, no
    fine-tuning (what a user gets from the library without a recovery step)."""
    import torch_pruning as tp

    model = copy.deepcopy(case.teacher).eval()
    example = torch.from_numpy(case.x_eval[:1])
    params_before = sum(p.numel() for p in model.parameters())
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=PRUNE_RATIO,
        ignored_layers=[model.fc],
        round_to=8,
    )
    pruner.step()
    path = case.workdir / "tp_channels50.onnx"
    notes = {
        "library": f"torch-pruning {tp.__version__}"
        if hasattr(tp, "__version__")
        else "torch-pruning",
        "importance": "MagnitudeImportance(p=2)",
        "pruning_ratio": PRUNE_RATIO,
        "round_to": 8,
        "fine_tuned": False,
        "params": [params_before, sum(p.numel() for p in model.parameters())],
        "widths": [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)],
    }
    notes.update(case.export(model, path))
    return Candidate(
        f"torch-pruning-{int(PRUNE_RATIO * 100)}%", "peer", onnx_path=path, notes=notes
    )


def _policy_row(case: FashionCase, name: str, leaf: str, policy: Path = POLICY) -> Candidate:
    from compresskit.models.loading import LoadedModel

    teacher = copy.deepcopy(case.teacher).eval()
    return common.compresskit_candidate(
        name,
        policy,
        model=LoadedModel(teacher, {"kind": "python", "path": None}),
        data=case.data,
        out=case.workdir / f"compresskit-{policy.stem}",
        leaf=leaf,
    )


@common.producer("compresskit fashion-mnist-cnn", "compresskit")
def compresskit_policy(case: FashionCase) -> Candidate:
    """policies/fashion-mnist-cnn.yaml through ``compresskit.run``: prune 50% channels,
    distil from the teacher, static int8; its exported, ORT-verified ONNX is the row."""
    return _policy_row(case, "compresskit fashion-mnist-cnn", "pruned-int8")


@common.producer("compresskit fashion-mnist-cnn (fp32)", "compresskit")
def compresskit_policy_fp32(case: FashionCase) -> Candidate:
    """The same run's float candidate (pruned and distilled, before int8): at these
    widths ORT's fp32 convolutions beat its int8 ones, so it is the faster one."""
    return _policy_row(case, "compresskit fashion-mnist-cnn (fp32)", "distilled")


@common.producer("compresskit fashion-mnist-fast", "compresskit")
def compresskit_fast(case: FashionCase) -> Candidate:
    """policies/fashion-mnist-fast.yaml: per-stage ratios, rounding measured on the target,
    8 epochs of distillation, int8 only where measured faster (integer residuals)."""
    return _policy_row(case, "compresskit fashion-mnist-fast", "int8-by-latency", FAST_POLICY)


@common.producer("compresskit fashion-mnist-fast (fp32)", "compresskit")
def compresskit_fast_fp32(case: FashionCase) -> Candidate:
    """The same run's float candidate: whether int8 paid shows beside it."""
    return _policy_row(case, "compresskit fashion-mnist-fast (fp32)", "distilled", FAST_POLICY)


# The row producers of this case, in order; compresskit's policies are appended here.
PRODUCERS = [
    fp32_torch,
    fp32_ort,
    ort_dynamic,
    ort_static,
    torch_pruning_channels,
    compresskit_policy,
    compresskit_policy_fp32,
    compresskit_fast,
    compresskit_fast_fp32,
]


def slice_bundle(data: Any, *, train: int, eval_samples: int) -> Any:
    """The first ``train`` training images (val and calibration unchanged) and the first
    ``eval_samples`` test images: the --quick run and the e2e test."""
    import dataclasses

    from torch.utils.data import Subset

    return dataclasses.replace(
        data,
        train=Subset(data.train, range(min(train, len(data.train)))),
        val=Subset(data.val, range(min(1024, len(data.val)))),
        eval=Subset(data.eval, range(min(eval_samples, len(data.eval)))),
    )


def load_case(*, quick: bool) -> FashionCase:
    from compresskit.data import load_data

    teacher_path = ARTIFACTS / "fashion_mnist_resnet.pt"
    teacher_info: dict[str, Any] = {}
    if not teacher_path.is_file():
        from fashion_mnist_teacher import train_teacher

        teacher_path = ARTIFACTS / ("fashion_mnist_resnet_quick.pt" if quick else teacher_path.name)
        if not teacher_path.is_file():
            result = train_teacher(epochs=1 if quick else 4, quick=quick)
            teacher_path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(result.pop("model").state_dict(), teacher_path)
            teacher_path.with_suffix(".json").write_text(json.dumps(result, indent=2))
    if teacher_path.with_suffix(".json").is_file():
        teacher_info = json.loads(teacher_path.with_suffix(".json").read_text())
    teacher = resnet_fmnist()
    teacher.load_state_dict(torch.load(teacher_path, weights_only=True))
    teacher.eval()

    data = load_data("fashion-mnist", seed=0, calibration_size=CALIBRATION_SAMPLES)
    x_eval = data.eval.tensors[0].numpy()
    y_eval = data.eval.tensors[1].numpy()
    if quick:
        x_eval, y_eval = x_eval[:512], y_eval[:512]
        data = slice_bundle(data, train=QUICK_TRAIN, eval_samples=512)
    x_calibration = torch.stack([data.calibration[i][0] for i in range(len(data.calibration))])
    workdir = ARTIFACTS / (CASE + ("_quick" if quick else ""))
    workdir.mkdir(parents=True, exist_ok=True)
    case = FashionCase(
        teacher, np.ascontiguousarray(x_eval), y_eval, x_calibration.numpy(), workdir, quick
    )
    case.data = data
    case.teacher_pred = case.predict(common.torch_runner(teacher))
    case.teacher_info = {
        "path": str(teacher_path.relative_to(common.BENCH_DIR)),
        **{
            k: teacher_info.get(k)
            for k in ("test_accuracy", "val_accuracy", "best_epoch", "train_seconds", "params")
        },
    }
    return case


def describe(case: FashionCase, rows: list[common.Row], meta: dict[str, Any]):
    meta.update(
        teacher=case.teacher_info,
        eval=f"Fashion-MNIST official test set, first {len(case.y_eval)} images",
        calibration=f"{len(case.x_calibration)} training images (compresskit bundle "
        "'calibration' split, seed 0)",
        latency="every row timed together through compresskit's harness, interleaved in "
        "one worker per target (cpu-ort 2 threads, spinning off; torch-cpu 2 threads); b1 "
        "cycles 32 test images, b32 cycles 8 batches",
    )
    table = common.markdown_table(
        rows,
        metric="accuracy",
        latency_labels=["b1", "b32"],
        agreement_key="agreement",
        agreement_title="agree",
    )
    # The teacher's own record, or (a teacher file without one) its score in this run.
    accuracy = case.teacher_info.get("test_accuracy") or next(
        (r.metrics.get("accuracy") for r in rows if r.name == "fp32-torch"), None
    )
    preface = (
        f"Teacher: `models.resnet_fmnist`, test accuracy {accuracy}. Eval: {meta['eval']}. "
        f"Speedup: fp32-ort p50 / row p50, same run."
    )
    return table, preface


SCRIPT = common.CaseScript(
    name=CASE,
    doc=__doc__ or "",
    quick_help="512 test images, short timings",
    load_case=lambda quick: load_case(quick=quick),
    producers=PRODUCERS,
    min_repeats=20,
    describe=describe,
)


def main(argv: list[str] | None = None) -> Path:
    return common.case_main(SCRIPT, argv)


if __name__ == "__main__":
    main()
