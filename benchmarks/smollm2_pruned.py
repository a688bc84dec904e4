"""The pruned + distilled + int4 branch of ``policies/causal-lm.yaml`` on SmolLM2, for
``real_smollm2.py``: the policy's nodes run by compresskit's pipeline runner on a
Wikipedia bundle whose training articles exclude every held-out title.

What the benchmark changes in the policy, and why:

- ``distill.train.steps`` (and so ``eval_every``/``warmup_steps``): sized to a compression
  budget on 2 cores, not to the policy's 400 steps;
- ``quantize_int4``: asymmetric GPTQ on the script's calibration windows, the settings of
  its ``compresskit int4 (GPTQ)`` row, so the two int4 rows differ only by pruning;
- with ``quick``, the pruning passes score on one small calibration batch.
"""

from __future__ import annotations

import sys
from collections.abc import Collection
from typing import Any

from compresskit.bench.markdown import blocks_markdown
from compresskit.data.bundle import DataBundle
from compresskit.data.text import text_bundle
from compresskit.data.wiki import wiki_documents
from compresskit.pipeline import Candidate, Pipeline
from compresskit.policies import load_policy, pipeline_of

POLICY = "causal-lm"
BRANCH = "pruned-int4"  # the policy's leaf: depth -> width -> distill -> pruned-int4
VAL_WINDOWS = 16
QUICK_VAL_WINDOWS = 4


def distill_bundle(
    tokenizer: Any,  # noqa: ANN401  (a Hugging Face tokenizer)
    *,
    seq_len: int,
    held_out: Collection[str],
    train_windows: int | None,
    quick: bool,
) -> DataBundle:
    """Every Wikipedia article but ``held_out`` as training (and validation) windows; the
    held-out articles form the bundle's eval split, which training never reads."""
    return text_bundle(
        wiki_documents(),
        tokenizer,
        seq_len=seq_len,
        name="wiki-en",
        eval_keys=held_out,
        max_train_windows=train_windows,
        max_val_windows=QUICK_VAL_WINDOWS if quick else VAL_WINDOWS,
        max_eval_windows=1,  # the script scores on its own eval windows
    )


def pruned_pipeline(*, steps: int, calibration_windows: int, quick: bool) -> Pipeline:
    """The policy's pruned branch, with the benchmark's changes (see the module doc)."""
    policy = pipeline_of(load_policy(POLICY), where=f"policy {POLICY}")
    pipeline = Pipeline()
    for node in policy.path(BRANCH):
        settings = node.pass_.config.model_dump()
        if node.pass_.name in ("prune_decoder_depth", "prune_decoder_width") and quick:
            settings |= {"calibration_batches": 1, "batch_size": 4}
        if node.pass_.name == "distill":
            train = settings["train"]
            train |= {
                "steps": steps,
                "eval_every": max(1, min(train["eval_every"], steps // 4)),
                "warmup_steps": min(train["warmup_steps"], steps // 10),
            }
        if node.pass_.name == "quantize_int4":
            settings |= {"symmetric": False, "calibration_windows": calibration_windows}
        config = type(node.pass_.config).model_validate(settings)
        pipeline.add(node.id, type(node.pass_)(config), after=node.after)
    return pipeline


def log_steps(candidate: Candidate) -> None:
    """What each node did (layers and widths removed, the distillation curve) on stderr."""
    for step in candidate.nodes:
        print(f"[{step.id}] {step.pass_name} ({step.seconds:.0f} s)", file=sys.stderr)
        for line in blocks_markdown(step.record.summary()):
            print(f"  {line}", file=sys.stderr)
    sys.stderr.flush()


def step_facts(candidate: Candidate) -> list[dict[str, Any]]:
    """The nodes' records as the results JSON keeps them."""
    return [
        {"id": s.id, "pass": s.pass_name, "seconds": round(s.seconds, 1), "records": s.records}
        for s in candidate.nodes
    ]
