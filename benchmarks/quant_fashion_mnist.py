"""Fashion-MNIST CNN: float vs PTQ (four calibrations) vs QAT with and without
distillation - accuracy, int8 coverage, ORT latency at batch 1 and 32, one run.

    python benchmarks/quant_fashion_mnist.py            # full data (lead: ~30-40 min on 2 cores)
    python benchmarks/quant_fashion_mnist.py --quick    # 3k train / 1k eval images, 1 epoch

Everything goes through ``compresskit.run`` (the product, not a side path), so every
number is what the report shows: accuracy with ONNX Runtime on the held-out test set,
``int8`` read from the graph ORT optimises, speedup vs the float baseline in the same run.
Writes ``benchmarks/results/quant_fashion_mnist[_quick]/`` (report.json, report.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from torch.utils.data import Subset  # noqa: E402

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

import compresskit  # noqa: E402
from compresskit.data import load_data  # noqa: E402
from compresskit.models.examples import DigitsCNN  # noqa: E402
from compresskit.passes.qat import QAT, QATConfig  # noqa: E402
from compresskit.passes.quantize import Quantize, QuantizeConfig  # noqa: E402
from compresskit.policies import policy_of  # noqa: E402
from compresskit.tasks.classification import evaluate_accuracy  # noqa: E402
from compresskit.training.loop import TrainConfig, train  # noqa: E402


def subset(data, quick: bool):
    if not quick:
        return data
    return dataclasses.replace(
        data,
        train=Subset(data.train, range(3000)),
        val=Subset(data.val, range(500)),
        eval=Subset(data.eval, range(1000)),
    )


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = subset(load_data("fashion-mnist", seed=0), args.quick)
    epochs, qat_epochs = (1, 1) if args.quick else (8, 3)

    torch.manual_seed(0)
    model = DigitsCNN(num_classes=10, width=16)  # conv-bn-relu x4 + linear, 28x28 inputs
    train(model, data, TrainConfig(epochs=epochs, lr=3e-3, batch_size=128), description="float")
    accuracy = evaluate_accuracy(model, data.loader("eval", batch_size=512))
    print(f"float accuracy (torch): {accuracy:.4f}")

    qat_train = TrainConfig(epochs=qat_epochs, lr=1e-4, batch_size=128)
    pipeline = (
        compresskit.Pipeline()
        .add("ptq-minmax", Quantize(QuantizeConfig(calibration="minmax")))
        .add("ptq-percentile", Quantize(QuantizeConfig(calibration="percentile")))
        .add("ptq-mse", Quantize(QuantizeConfig(calibration="mse")))
        .add("ptq-entropy", Quantize(QuantizeConfig(calibration="entropy")))
        .add("qat", QAT(QATConfig(calibration="mse", train=qat_train)))
        .add("qat-lsq", QAT(QATConfig(calibration="mse", learn_scales=True, train=qat_train)))
        .add("qat-kd", QAT(QATConfig(calibration="mse", alpha=0.5, train=qat_train)))
    )
    policy = policy_of(
        pipeline,
        "quant-fashion-mnist",
        targets=["cpu-ort"],
        batch_sizes=[1, 32],
        budget={"max_accuracy_drop": 0.01, "min_int8_coverage": 0.9},
    )
    out = ROOT / "results" / ("quant_fashion_mnist_quick" if args.quick else "quant_fashion_mnist")
    shutil.rmtree(out, ignore_errors=True)
    result = compresskit.run(
        policy, model=model.eval(), data=data, out=out, latency_seconds=0.5 if args.quick else 3.0
    )
    for entry in out.iterdir():  # keep the reports, not the model files
        if entry.is_dir():
            shutil.rmtree(entry)
    print((out / "report.md").read_text())
    del result
    return out


if __name__ == "__main__":
    main()
