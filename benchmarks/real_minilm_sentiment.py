"""all-MiniLM-L6-v2 + a linear sentiment head on Rotten Tomatoes, side by side with peers.

    python benchmarks/real_minilm_sentiment.py            # all 2,652 held-out snippets
    python benchmarks/real_minilm_sentiment.py --quick    # 128 snippets, short timings

Teacher: the encoder is FROZEN (not fine-tuned); a logistic-regression head is trained on
the mean-pooled, L2-normalised embeddings of the 10,156 training snippets and stored as an
``nn.Linear(384, 2)``. Fine-tuning was measured instead of run (see ``finetune_estimate``
in the results). Rows: ``minilm_case.PRODUCERS``; compresskit's policies are appended there.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (sets thread env vars before torch starts)
import minilm  # noqa: E402
import minilm_case  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import ARTIFACTS  # noqa: E402
from rotten_tomatoes import RTSplit, load_rt_split  # noqa: E402
from torch import nn  # noqa: E402

CASE = "minilm_sentiment"
HEAD_PATH = ARTIFACTS / "minilm_sentiment_head.pt"


def measure_finetune_step(
    bert: nn.Module,
    tokenizer,
    texts: list[str],
    labels: list[int],
    *,
    steps: int = 4,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Seconds per full fine-tuning step (encoder + head, AdamW) at real lengths, and
    the implied time of one epoch; the weights used are thrown away."""
    import copy

    model = minilm.SentimentModel(minilm.SentenceEncoder(copy.deepcopy(bert)), nn.Linear(384, 2))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
    times = []
    for step in range(steps + 1):
        batch = slice(step * batch_size, (step + 1) * batch_size)
        ids, mask = minilm.tokenize(tokenizer, texts[batch])
        start = time.perf_counter()
        loss = nn.functional.cross_entropy(model(ids, mask), torch.tensor(labels[batch]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step:  # the first step pays for allocator warm-up
            times.append(time.perf_counter() - start)
    per_step = float(np.median(times))
    steps_per_epoch = -(-len(texts) // batch_size)
    return {
        "batch_size": batch_size,
        "seconds_per_step": per_step,
        "steps_per_epoch": steps_per_epoch,
        "epoch_seconds_estimate": per_step * steps_per_epoch,
        "steps_measured": steps,
    }


def train_head(bert: nn.Module, tokenizer, split: RTSplit, *, quick: bool) -> dict[str, Any]:
    """Logistic regression on frozen embeddings; C picked on a 10% slice of train."""
    from sklearn.linear_model import LogisticRegression

    texts, labels = split.train_texts, np.asarray(split.train_labels)
    if quick:
        texts, labels = texts[:1024], labels[:1024]
    start = time.perf_counter()
    # Cached: embedding the training snippets is most of the cost of the teacher.
    cache = ARTIFACTS / f"rt_train_embeddings{'_quick' if quick else ''}.npy"
    if cache.is_file():
        x = np.load(cache)
    else:
        encoder = common.torch_runner(minilm.SentenceEncoder(bert))
        x = np.concatenate([encoder(f) for f in minilm.feeds(tokenizer, texts, batch_size=64)])
        np.save(cache, x)
    embed_s = time.perf_counter() - start
    order = np.random.default_rng(0).permutation(len(x))
    n_val = len(x) // 10
    val, fit = order[:n_val], order[n_val:]
    scores = {}
    for c in (1.0, 10.0, 100.0):
        clf = LogisticRegression(C=c, max_iter=5000).fit(x[fit], labels[fit])
        scores[c] = float(clf.score(x[val], labels[val]))
    best_c = max(scores, key=scores.get)
    clf = LogisticRegression(C=best_c, max_iter=5000).fit(x, labels)
    # Binary logistic regression as two logits whose difference is w.x + b.
    w = torch.tensor(clf.coef_[0], dtype=torch.float32)
    b = float(clf.intercept_[0])
    head = nn.Linear(384, 2)
    with torch.no_grad():
        head.weight.copy_(torch.stack([-w / 2, w / 2]))
        head.bias.copy_(torch.tensor([-b / 2, b / 2]))
    return {
        "head": head,
        "encoder": "frozen (not fine-tuned)",
        "classifier": "sklearn LogisticRegression on mean-pooled L2-normalised embeddings",
        "C": best_c,
        "val_accuracy_by_C": scores,
        "train_samples": len(x),
        "train_accuracy": float(clf.score(x, labels)),
        "embed_train_s": embed_s,
        "train_s": time.perf_counter() - start,
        "finetune_estimate": measure_finetune_step(bert, tokenizer, texts, labels.tolist()),
    }


def load_head(
    bert: nn.Module, tokenizer, split: RTSplit, *, quick: bool
) -> tuple[nn.Linear, dict[str, Any]]:
    path = (
        HEAD_PATH
        if HEAD_PATH.is_file() or not quick
        else HEAD_PATH.with_stem(HEAD_PATH.stem + "_quick")
    )
    info_path = path.with_suffix(".json")
    if not path.is_file():
        info = train_head(bert, tokenizer, split, quick=quick)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(info.pop("head").state_dict(), path)
        info_path.write_text(json.dumps(info, indent=2) + "\n")
    head = nn.Linear(384, 2)
    head.load_state_dict(torch.load(path, weights_only=True))
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    info["path"] = str(path.relative_to(common.BENCH_DIR))
    return head.eval(), info


def load_case(*, quick: bool) -> tuple[minilm_case.MiniLMCase, dict[str, Any]]:
    split = load_rt_split()
    bert, tokenizer = minilm.load_bert()
    head, head_info = load_head(bert, tokenizer, split, quick=quick)
    case = minilm_case.rotten_tomatoes_case(CASE, bert, tokenizer, split, head=head, quick=quick)
    case.teacher_info = head_info
    return case, head_info


def describe(
    case: minilm_case.MiniLMCase, rows: list[common.Row], meta: dict[str, Any]
) -> tuple[str, str]:
    teacher_acc = float((case.teacher_out.argmax(1) == case.eval_labels).mean())
    meta.update(
        teacher={"accuracy": teacher_acc, **case.teacher_info},
        **minilm_case.describe_eval(case),
    )
    preface = (
        f"Teacher: frozen all-MiniLM-L6-v2 + logistic-regression head, test accuracy "
        f"{teacher_acc:.4f}. Eval: {meta['eval']}. Speedup: fp32-ort p50 / row p50, "
        f"same run. Real lengths: {meta['latency_lengths']}."
    )
    return minilm_case.table_and_meta(case, rows), preface


SCRIPT = common.CaseScript(
    name=CASE,
    doc=__doc__ or "",
    quick_help="128 snippets, short timings",
    load_case=lambda quick: load_case(quick=quick)[0],
    producers=minilm_case.PRODUCERS,
    min_repeats=7,
    describe=describe,
)


def main(argv: list[str] | None = None) -> Path:
    return common.case_main(SCRIPT, argv)


if __name__ == "__main__":
    main()
