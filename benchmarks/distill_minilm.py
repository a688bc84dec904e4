"""Layer-wise distillation of all-MiniLM-L6-v2 depth-pruned from 6 to 3 layers.

    python benchmarks/distill_minilm.py            # full: ~5 min on 2 quiet cores
    python benchmarks/distill_minilm.py --quick    # smoke test: ~1 min

The teacher is the sentence encoder plus a linear sentiment head (Rotten Tomatoes,
fresh/rotten). The student keeps teacher layers 0, 2 and 4 and learns, through the
distill pass, from the teacher's hidden states (student layer i <- teacher layer 2i+1,
the automatic uniform-by-depth mapping), its attention maps (MiniLM-style KL) and its
logits. Scored on held-out movies: cosine of the student's sentence embedding to the
teacher's, sentiment accuracy, and agreement with the teacher, before and after
distillation. Loading code comes from the main checkout's ``benchmarks/`` (read only).
Writes ``benchmarks/results/distill_minilm*.{json,md}``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("COMPRESSKIT_QUIET", "1")

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MAIN_BENCH = Path(__file__).resolve().parent  # the teacher artifacts and case helpers
KEEP = [0, 2, 4]
MAX_LENGTH = 48  # fixed padding: fixed-shape batches; most snippets are shorter

LOSSES = [
    {"kind": "kd", "weight": 1.0, "temperature": 2.0},
    {"kind": "hidden", "weight": 1.0, "metric": "mse", "layers": "auto"},
    {"kind": "attention", "weight": 1.0, "layers": "auto"},
]


def tensors(tokenizer, texts: list[str], labels: list[int]) -> TensorDataset:
    import minilm

    ids, mask = minilm.tokenize(tokenizer, texts, max_length=MAX_LENGTH, pad_to_max=True)
    return TensorDataset(ids, mask, torch.tensor(labels, dtype=torch.long))


def sentiment_head(bert: nn.Module, train: TensorDataset) -> tuple[nn.Linear, str]:
    """The main checkout's trained head if it exists, else logistic regression here."""
    import minilm

    path = MAIN_BENCH / "artifacts" / "minilm_sentiment_head.pt"
    head = nn.Linear(384, 2)
    if path.is_file():
        head.load_state_dict(torch.load(path, weights_only=True))
        return head.eval(), str(path)
    from sklearn.linear_model import LogisticRegression

    encoder = minilm.SentenceEncoder(bert).eval()
    ids, mask, y = train.tensors
    with torch.no_grad():
        x = torch.cat([encoder(ids[i : i + 64], mask[i : i + 64]) for i in range(0, len(y), 64)])
    clf = LogisticRegression(C=10.0, max_iter=5000).fit(x.numpy(), y.numpy())
    w = torch.tensor(clf.coef_[0], dtype=torch.float32)
    b = float(clf.intercept_[0])
    with torch.no_grad():
        head.weight.copy_(torch.stack([-w / 2, w / 2]))
        head.bias.copy_(torch.tensor([-b / 2, b / 2]))
    return head.eval(), "logistic regression on the distillation training texts"


@torch.no_grad()
def evaluate(model: nn.Module, teacher: nn.Module, data: TensorDataset) -> dict[str, float]:
    model.eval()
    ids, mask, y = data.tensors
    cos, pred, teacher_pred = [], [], []
    for i in range(0, len(y), 64):
        batch = ids[i : i + 64], mask[i : i + 64]
        e_s, e_t = model.encoder(*batch), teacher.encoder(*batch)
        cos.append(nn.functional.cosine_similarity(e_s, e_t, dim=1))
        pred.append(model.head(e_s).argmax(1))
        teacher_pred.append(teacher.head(e_t).argmax(1))
    c, p, tp = torch.cat(cos), torch.cat(pred), torch.cat(teacher_pred)
    return {
        "cosine": float(c.mean()),
        "cosine_p5": float(c.quantile(0.05)),
        "accuracy": float((p == y).float().mean()),
        "agreement": float((p == tp).float().mean()),
        "churn_bad": float(((p != tp) & (tp == y)).float().mean()),
        "churn_good": float(((p != tp) & (p == y)).float().mean()),
    }


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--train-samples", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    sys.path.insert(0, str(MAIN_BENCH))
    import minilm
    from rotten_tomatoes import load_rt_split

    from compresskit.context import Context
    from compresskit.data.bundle import DataBundle
    from compresskit.models.size import count_params
    from compresskit.passes.distill import Distill, DistillConfig
    from compresskit.training.loop import TrainConfig

    n_train = args.train_samples or (192 if args.quick else 1500)
    n_eval = 128 if args.quick else 1000
    epochs = args.epochs or (1 if args.quick else 2)
    split = load_rt_split()
    bert, tokenizer = minilm.load_bert()
    # Train texts spread over the corpus (it is ordered by movie); eval: held-out movies.
    step = max(1, len(split.train_texts) // (n_train + 256))
    picked = list(range(0, len(split.train_texts), step))[: n_train + 256]
    texts = [split.train_texts[i] for i in picked]
    labels = [split.train_labels[i] for i in picked]
    pool = tensors(tokenizer, texts, labels)
    eval_step = max(1, len(split.test_texts) // n_eval)
    eval_idx = list(range(0, len(split.test_texts), eval_step))[:n_eval]
    eval_set = tensors(
        tokenizer, [split.test_texts[i] for i in eval_idx], [split.test_labels[i] for i in eval_idx]
    )
    train_set = Subset(pool, range(n_train))
    val_set = Subset(pool, range(n_train, n_train + 256))
    head, head_source = sentiment_head(bert, pool)
    teacher = minilm.SentimentModel(minilm.SentenceEncoder(bert), head).eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)

    student_bert = copy.deepcopy(bert)
    student_bert.encoder.layer = nn.ModuleList(student_bert.encoder.layer[i] for i in KEEP)
    student_bert.config.num_hidden_layers = len(KEEP)
    student = minilm.SentimentModel(minilm.SentenceEncoder(student_bert), copy.deepcopy(head))
    student.requires_grad_(True)
    rows: list[dict[str, Any]] = [
        {
            "model": "teacher (6 layers)",
            "params": count_params(teacher),
            **evaluate(teacher, teacher, eval_set),
        },
        {
            "model": f"depth-pruned {KEEP} (no training)",
            "params": count_params(student),
            **evaluate(student, teacher, eval_set),
        },
    ]
    print(rows[-1], flush=True)
    data = DataBundle(
        name="rotten-tomatoes",
        num_classes=2,
        input_shape=(MAX_LENGTH,),
        train=train_set,
        val=val_set,
        calibration=Subset(pool, range(64)),
        eval=eval_set,
    )
    ids, mask, _ = pool.tensors
    ctx = Context(data=data, teacher=teacher, example_inputs=(ids[:2], mask[:2]), seed=0)
    schedule = TrainConfig(
        epochs=epochs, lr=1e-4, batch_size=16, warmup_steps=10, monitor="agreement"
    )
    start = time.perf_counter()
    distilled = Distill(DistillConfig(losses=LOSSES, train=schedule)).apply(student, ctx)
    seconds = time.perf_counter() - start
    rows.append(
        {
            "model": "depth-pruned + hidden/attention/logit distillation",
            "params": count_params(distilled),
            **evaluate(distilled, teacher, eval_set),
            "train_seconds": round(seconds, 1),
            "history": ctx.records["history"],
            "distill": ctx.records["distill"],
        }
    )
    print({k: v for k, v in rows[-1].items() if k not in ("history", "distill")}, flush=True)

    meta = {
        "keep_layers": KEEP,
        "max_length": MAX_LENGTH,
        "train_samples": n_train,
        "eval_samples": n_eval,
        "losses": LOSSES,
        "schedule": schedule.model_dump(),
        "head": head_source,
        "quick": args.quick,
        "torch_threads": torch.get_num_threads(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"distill_minilm{'_quick' if args.quick else ''}"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "# all-MiniLM-L6-v2 depth-pruned 6 -> 3 layers, layer-wise distillation",
        "",
        f"{n_train} Rotten Tomatoes training snippets, {epochs} epochs; eval on {n_eval} "
        "snippets of held-out movies. Cosine: student vs teacher sentence embedding.",
        "",
        "| model | params | cosine | cosine p5 | acc | agree | bad churn | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['params']:,} | {row['cosine']:.4f} | "
            f"{row['cosine_p5']:.4f} | {row['accuracy']:.4f} | {row['agreement']:.4f} | "
            f"{row['churn_bad']:.4f} | {row.get('train_seconds', '-')} |"
        )
    if "history" in rows[-1]:
        lines += [
            "",
            "Curve (train loss / val agreement): "
            + " ".join(
                f"{e['loss']:.3f}/{e['metrics']['agreement']:.3f}"
                for e in rows[-1]["history"]["epochs"]
            ),
        ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return stem


if __name__ == "__main__":
    main()
