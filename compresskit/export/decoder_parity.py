"""Evidence that a decoder ONNX folder computes what torch computes, through its KV cache.

:class:`DecoderSession` runs the folder's graph with ONNX Runtime and an explicit cache:
the first ``prefill`` tokens of each window in one call, then one token per call, each
fed the present key/values of the call before (so prefill and decode are both checked).
:func:`decoder_parity` compares those teacher-forced logits with the Hugging Face model's
on the same windows; :func:`greedy_match` compares greedy tokens of onnxruntime-genai with
``generate``. Names and shapes come from ``genai_config.json``, as onnxruntime-genai reads
them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from compresskit.errors import CompressKitError

# fp32 export against torch: max |logit difference| <= FLOAT_TOLERANCE x max |logit|.
FLOAT_TOLERANCE = 1e-3


class DecoderSession:
    """ONNX Runtime (CPU) over ``folder/model.onnx`` with the KV cache made explicit.

    Example::

        DecoderSession(Path("onnx")).logits(windows, prefill=8)
    """

    def __init__(self, folder: Path, *, threads: int = 0, graph: Path | None = None) -> None:
        """``graph``: another file for the same decoder (e.g. with extra outputs)."""
        import onnxruntime as ort

        config_path = Path(folder) / "genai_config.json"
        if not config_path.is_file():
            raise CompressKitError(f"{folder}: no genai_config.json; export with export_decoder")
        decoder = json.loads(config_path.read_text())["model"]["decoder"]
        self.layers = int(decoder["num_hidden_layers"])
        self.kv_heads = int(decoder["num_key_value_heads"])
        self.head_size = int(decoder["head_size"])
        self.inputs = decoder["inputs"]
        self.outputs = decoder["outputs"]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(graph or Path(folder) / decoder["filename"]),
            options,
            providers=["CPUExecutionProvider"],
        )
        self.input_names = {i.name for i in self.session.get_inputs()}
        past = self.inputs["past_key_names"] % 0
        past_type = next(i.type for i in self.session.get_inputs() if i.name == past)
        self.cache_dtype = np.float16 if "float16" in past_type else np.float32

    def _cache_names(self, kind: str) -> list[str]:
        """Past (``kind="in"``) or present cache names: key and value of each layer."""
        names, prefix = (self.inputs, "past") if kind == "in" else (self.outputs, "present")
        return [
            names[f"{prefix}_{part}_names"] % layer
            for layer in range(self.layers)
            for part in ("key", "value")
        ]

    def feed(self, ids: np.ndarray, cache: list[np.ndarray] | None) -> dict[str, np.ndarray]:
        """Graph inputs for ``ids`` [batch, new] after ``cache`` (None: an empty cache)."""
        batch, new = ids.shape
        if cache is None:
            shape = (batch, self.kv_heads, 0, self.head_size)
            cache = [np.zeros(shape, self.cache_dtype) for _ in range(2 * self.layers)]
        past = cache[0].shape[2]
        feed = dict(zip(self._cache_names("in"), cache, strict=True))
        feed[self.inputs["input_ids"]] = ids.astype(np.int64)
        if self.inputs.get("attention_mask") in self.input_names:
            feed[self.inputs["attention_mask"]] = np.ones((batch, past + new), np.int64)
        if self.inputs.get("position_ids") in self.input_names:
            positions = np.arange(past, past + new, dtype=np.int64)
            feed[self.inputs["position_ids"]] = np.broadcast_to(positions, (batch, new)).copy()
        return feed

    def step(
        self, ids: np.ndarray, cache: list[np.ndarray] | None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits for ``ids`` [batch, new] after ``cache`` (None: empty), and the new cache."""
        names = [self.outputs["logits"], *self._cache_names("out")]
        logits, *present = self.session.run(names, self.feed(ids, cache))
        return logits.astype(np.float32), present

    def logits(self, windows: np.ndarray, *, prefill: int | None = None) -> np.ndarray:
        """Teacher-forced logits [batch, length, vocab] of ``windows`` [batch, length]: the
        first ``prefill`` tokens in one call (all when None), the rest one per call."""
        windows = np.asarray(windows)
        prefill = windows.shape[1] if prefill is None else prefill
        if not 1 <= prefill <= windows.shape[1]:
            raise CompressKitError(f"prefill {prefill} is not in [1, {windows.shape[1]}]")
        logits, cache = self.step(windows[:, :prefill], None)
        parts = [logits]
        for position in range(prefill, windows.shape[1]):
            logits, cache = self.step(windows[:, position : position + 1], cache)
            parts.append(logits)
        return np.concatenate(parts, axis=1)


def decoder_feed(
    folder: Path, *, batch: int = 1, past: int = 128, sequence: int = 1, seed: int = 0
) -> dict[str, np.ndarray]:
    """Consistent graph inputs for one call of the folder's decoder: ``sequence`` new tokens
    after ``past`` cached ones (random cache; a decode step by default), ``past`` cut to
    the model's context length."""
    import onnx

    config = json.loads((Path(folder) / "genai_config.json").read_text())["model"]
    decoder = config["decoder"]
    past = max(0, min(past, int(config.get("context_length", past + sequence)) - sequence))
    graph = onnx.load(str(Path(folder) / decoder["filename"]), load_external_data=False).graph
    names = {i.name for i in graph.input}
    rng = np.random.default_rng(seed)
    shape = (batch, int(decoder["num_key_value_heads"]), past, int(decoder["head_size"]))
    feed: dict[str, np.ndarray] = {}
    inputs = decoder["inputs"]
    for layer in range(int(decoder["num_hidden_layers"])):
        for key in ("past_key_names", "past_value_names"):
            feed[inputs[key] % layer] = rng.standard_normal(shape).astype(np.float32)
    feed[inputs["input_ids"]] = rng.integers(0, 2, (batch, sequence)).astype(np.int64)
    if inputs.get("attention_mask") in names:
        feed[inputs["attention_mask"]] = np.ones((batch, past + sequence), np.int64)
    if inputs.get("position_ids") in names:
        positions = np.arange(past, past + sequence, dtype=np.int64)
        feed[inputs["position_ids"]] = np.broadcast_to(positions, (batch, sequence)).copy()
    return feed


class DecoderParity(BaseModel):
    """How closely the ONNX folder's logits follow torch's on the same token windows."""

    model_config = ConfigDict(frozen=True)

    windows: int
    tokens: int
    prefill: int
    max_abs_error: float
    logit_scale: float  # max |torch logit|
    agreement: float  # next-token top-1 agreement, ONNX vs torch
    tolerance: float  # relative: max_abs_error <= tolerance x logit_scale

    @property
    def ok(self) -> bool:
        return self.max_abs_error <= self.tolerance * self.logit_scale


def torch_logits(model: Any, windows: np.ndarray, *, batch: int = 4) -> np.ndarray:
    """The Hugging Face causal LM's logits [n, length, vocab] (float32) for ``windows``."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(windows), batch):
            ids = torch.as_tensor(np.asarray(windows[start : start + batch]), dtype=torch.long)
            out.append(model(input_ids=ids).logits.float().numpy())
    return np.concatenate(out)


def decoder_parity(
    model: Any,
    folder: Path,
    windows: np.ndarray,
    *,
    prefill: int | None = None,
    tolerance: float = FLOAT_TOLERANCE,
) -> DecoderParity:
    """Teacher-forced logits of the folder (prefill, then decode through the cache) against
    ``model``'s; ``prefill`` defaults to half of each window."""
    windows = np.asarray(windows)
    prefill = prefill if prefill is not None else max(1, windows.shape[1] // 2)
    reference = torch_logits(model, windows)
    actual = DecoderSession(folder).logits(windows, prefill=prefill)
    if actual.shape != reference.shape:
        raise CompressKitError(
            f"{folder}: ONNX logits {actual.shape} differ in shape from torch's {reference.shape}"
        )
    return DecoderParity(
        windows=len(windows),
        tokens=int(windows.size),
        prefill=prefill,
        max_abs_error=float(np.abs(actual - reference).max()),
        logit_scale=float(np.abs(reference).max()),
        agreement=top1_agreement(actual, reference),
        tolerance=tolerance,
    )


def top1_agreement(logits: np.ndarray, reference: np.ndarray) -> float:
    """Share of positions whose argmax token is the same."""
    return float((logits.argmax(-1) == reference.argmax(-1)).mean())


def window_perplexity(logits: np.ndarray, windows: np.ndarray) -> float:
    """exp(mean next-token negative log-likelihood) of ``windows`` under ``logits``."""
    logits = logits[:, :-1].astype(np.float64)
    targets = np.asarray(windows)[:, 1:]
    top = logits.max(-1, keepdims=True)
    log_norm = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
    picked = np.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return float(np.exp((log_norm - picked).mean()))


class GreedyMatch(BaseModel):
    """Greedy continuations of onnxruntime-genai against Hugging Face ``generate``."""

    model_config = ConfigDict(frozen=True)

    prompts: int
    new_tokens: int
    identical: bool
    first_divergence: list[int | None]  # per prompt: index of the first different token


def greedy_torch(model: Any, prompt: Sequence[int], new_tokens: int) -> list[int]:
    """``new_tokens`` greedy tokens of ``generate`` (end of sequence suppressed)."""
    import torch

    ids = torch.as_tensor([list(prompt)], dtype=torch.long)
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
        )
    return [int(t) for t in out[0, ids.shape[1] :]]


def greedy_genai(
    folder: Path, prompt: Sequence[int], new_tokens: int, model: Any = None
) -> list[int]:
    """``new_tokens`` greedy tokens of onnxruntime-genai on the folder (``model``: an
    ``og.Model`` to reuse)."""
    import onnxruntime_genai as og

    model = model or og.Model(str(folder))
    params = og.GeneratorParams(model)
    length = len(prompt) + new_tokens
    params.set_search_options(max_length=length, min_length=length, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(np.asarray([list(prompt)], dtype=np.int32))
    tokens = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens


def greedy_match(
    model: Any, folder: Path, prompts: Sequence[Sequence[int]], *, new_tokens: int = 16
) -> GreedyMatch:
    """Do onnxruntime-genai and ``generate`` pick the same greedy tokens for every prompt?"""
    import onnxruntime_genai as og

    genai_model = og.Model(str(folder))
    divergence: list[int | None] = []
    for prompt in prompts:
        ours = greedy_genai(folder, prompt, new_tokens, genai_model)
        theirs = greedy_torch(model, prompt, new_tokens)
        diff = [i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b]
        if len(ours) != len(theirs) and not diff:
            diff = [min(len(ours), len(theirs))]
        divergence.append(diff[0] if diff else None)
    return GreedyMatch(
        prompts=len(prompts),
        new_tokens=new_tokens,
        identical=all(d is None for d in divergence),
        first_divergence=divergence,
    )
