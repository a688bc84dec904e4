"""What a run reads: its data, as the task it is judged by, and its teacher.

The task is the user's (``--task``), else what a Hugging Face model's head computes, else
the data's own; a causal language model reads documents as token windows of its own
tokenizer (:mod:`compresskit.data.text`).
"""

from __future__ import annotations

import copy
from dataclasses import replace

from torch import nn

from compresskit.data import Columns, DataBundle, load_data
from compresskit.data.preprocessing import DEFAULT_TEXT_LENGTH
from compresskit.errors import CompressKitError
from compresskit.models.loading import LoadedModel, load_model
from compresskit.policies import Policy
from compresskit.tasks import get_task


def run_data(
    data: DataBundle | str | None,
    loaded: LoadedModel,
    seed: int,
    columns: Columns | None,
    sequence_length: int | None,
    task: str | None,
) -> DataBundle:
    """The run's data bundle, for the task the model is judged by."""
    if isinstance(data, DataBundle):
        return _with_task(data, task)
    model_task = loaded.source.get("task")  # a Hugging Face model says what it computes
    chosen = task or (model_task if isinstance(model_task, str) else None)
    if chosen == "causal-lm":
        return _text_windows(data, loaded, seed, columns, sequence_length)
    spec = data or loaded.default_data
    if spec is None:
        raise CompressKitError(
            "no data given and the model has no default dataset: pass --data "
            "(digits, fashion-mnist, a .npz file, a .csv of texts, an image folder or "
            "module:factory)"
        )
    bundle = load_data(
        spec,
        seed=seed,
        preprocessing=loaded.preprocessing,
        columns=columns,
        sequence_length=sequence_length,
    )
    return _with_task(bundle, chosen)


def _text_windows(
    data: str | None,
    loaded: LoadedModel,
    seed: int,
    columns: Columns | None,
    sequence_length: int | None,
) -> DataBundle:
    """Documents tokenized with the model's own tokenizer, split by document and packed
    into windows of the policy's sequence length (see :mod:`compresskit.data.text`)."""
    from compresskit.data.text import load_text

    if data is None:
        raise CompressKitError(
            "no data given: a causal language model needs --data (a .txt file, a .jsonl file "
            "with a text field, or a folder of .txt files)"
        )
    preprocessing = loaded.preprocessing
    tokenizer = preprocessing.tokenizer if preprocessing is not None else None
    length = preprocessing.text_length(sequence_length) if preprocessing else sequence_length
    return load_text(
        data,
        tokenizer,
        seq_len=length or DEFAULT_TEXT_LENGTH,
        seed=seed,
        text_field=(columns.text if columns else None) or "text",
    )


def _with_task(bundle: DataBundle, task: str | None) -> DataBundle:
    if task is None or task == bundle.task:
        return bundle
    labelled = get_task(task).labelled
    return replace(bundle, task=task, num_classes=bundle.num_classes if labelled else None)


def run_teacher(policy: Policy, loaded: LoadedModel, *, trust_factory: bool) -> nn.Module:
    """The policy's teacher (the input model, or a file), frozen."""
    teacher = (
        copy.deepcopy(loaded.model)
        if policy.teacher == "input"
        else load_model(policy.teacher, trust_factory=trust_factory).model
    )
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher.eval()
