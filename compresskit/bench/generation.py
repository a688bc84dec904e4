"""Generation benchmark: time to first token, decode tokens/s, peak memory and size.

Rows are Hugging Face ``generate`` in torch (fp32) and onnxruntime-genai folders
(``og.Model`` / ``og.Generator``), all in this process and timed *interleaved*
(round-robin, :func:`~compresskit.bench.latency.time_interleaved`) so that drift of the
machine hits every row alike and their ratios stay honest. Every scenario is judged by
the noisy-machine check (:mod:`compresskit.bench.noise`); a noisy number is flagged, not
dropped.

- time to first token: a batch-1 prompt of each length, one new token (prefill + pick);
- decode tokens/s: ``new_tokens`` tokens after a ``decode_prompt``-token prompt, at each
  batch size: (batch x (new_tokens - 1)) / (time after the first token);
- peak memory: growth of the process's peak RSS while the row loads and generates once.

Example::

    bench_generation([GenerationCandidate(name="fp32 ORT", runtime="onnxruntime-genai",
        path=Path("onnx"))], prompts)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from compresskit.bench.latency import robust_cv, time_interleaved
from compresskit.bench.noise import MAX_CV, assess, sample_machine, usable_cores
from compresskit.bench.worker import _proc_status, _reset_peak  # one home for /proc reading
from compresskit.errors import CompressKitError

Runtime = Literal["torch", "onnxruntime-genai"]


class GenerationConfig(BaseModel):
    """What to time and for how long."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt_lengths: list[int] = Field(default_factory=lambda: [128, 512])
    new_tokens: int = Field(default=128, ge=2)
    decode_prompt: int = Field(default=128, ge=1, description="prompt length for decode runs")
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 4])
    threads: int = Field(default=0, ge=0, description="0: every usable core")
    warmup: int = Field(default=1, ge=1)
    min_repeats: int = Field(default=5, ge=1)
    max_seconds: float = Field(default=30.0, gt=0, description="per row and scenario")


class GenerationCandidate(BaseModel):
    """A row: a Hugging Face directory run by torch, or an onnxruntime-genai folder."""

    model_config = ConfigDict(frozen=True)

    name: str
    runtime: Runtime
    path: Path


class GenerationRow(BaseModel):
    """One row's measurements (medians) and whether the machine was quiet meanwhile."""

    name: str
    runtime: Runtime
    file_bytes: int
    ttft_ms: dict[int, float] = Field(default_factory=dict)  # prompt length -> p50
    decode_tok_s: dict[int, float] = Field(default_factory=dict)  # batch -> tokens/s
    peak_rss_delta_mb: float | None = None
    load_s: float = 0.0
    samples: dict[str, int] = Field(default_factory=dict)
    noisy: bool = False
    noise_reasons: list[str] = Field(default_factory=list)


class GenerationResult(BaseModel):
    """All rows of one run, measured interleaved in one process."""

    rows: list[GenerationRow]
    threads: int
    config: GenerationConfig

    def row(self, name: str) -> GenerationRow:
        return next(r for r in self.rows if r.name == name)

    def decode_speedup(self, name: str, baseline: str, *, batch: int = 1) -> float | None:
        """Decode tokens/s of ``name`` over ``baseline``'s at ``batch`` (same run)."""
        ours, theirs = (
            self.row(name).decode_tok_s.get(batch),
            self.row(baseline).decode_tok_s.get(batch),
        )
        return ours / theirs if ours and theirs else None


class _Timing:
    """Seconds to the first token and to the end, of one generation."""

    def __init__(self, first: float, total: float, batch: int, tokens: int) -> None:
        self.first, self.total, self.batch, self.tokens = first, total, batch, tokens

    @property
    def decode_tok_s(self) -> float:
        rest = self.total - self.first
        return self.batch * (self.tokens - 1) / rest if rest > 0 else 0.0


class _TorchRow:
    def __init__(self, path: Path, threads: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    def generate(self, prompt: np.ndarray, new_tokens: int) -> _Timing:
        import torch
        from transformers.generation.streamers import BaseStreamer

        stamps: list[float] = []

        class Stamps(BaseStreamer):  # generate() calls put() for the prompt, then per step
            def put(self, value: Any) -> None:
                stamps.append(time.perf_counter())

            def end(self) -> None:
                pass

        ids = torch.as_tensor(prompt, dtype=torch.long)
        start = time.perf_counter()
        with torch.inference_mode():
            self.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                streamer=Stamps(),
            )
        end = time.perf_counter()
        return _Timing(stamps[1] - start, end - start, len(prompt), new_tokens)


class _GenaiRow:
    def __init__(self, path: Path, threads: int, spinning: bool) -> None:
        import onnxruntime_genai as og

        self.og = og
        config = og.Config(str(path))
        options: dict[str, Any] = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
        options["session.intra_op.allow_spinning"] = "1" if spinning else "0"
        config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        self.model = og.Model(config)

    def generate(self, prompt: np.ndarray, new_tokens: int) -> _Timing:
        og = self.og
        batch, length = prompt.shape
        params = og.GeneratorParams(self.model)
        total = length + new_tokens
        params.set_search_options(
            max_length=total, min_length=total, do_sample=False, batch_size=batch
        )
        start = time.perf_counter()
        generator = og.Generator(self.model, params)
        generator.append_tokens(prompt.astype(np.int32))
        generator.generate_next_token()
        first = time.perf_counter()
        while not generator.is_done():
            generator.generate_next_token()
        end = time.perf_counter()
        return _Timing(first - start, end - start, batch, new_tokens)


def candidate_bytes(candidate: GenerationCandidate) -> int:
    """Bytes of the weights a row loads: ONNX graph + data, or the safetensors files."""
    pattern = (
        ("*.onnx*",) if candidate.runtime == "onnxruntime-genai" else ("*.safetensors", "*.bin")
    )
    return sum(p.stat().st_size for glob in pattern for p in Path(candidate.path).glob(glob))


def _load(candidate: GenerationCandidate, threads: int, spinning: bool) -> _TorchRow | _GenaiRow:
    if not Path(candidate.path).is_dir():
        raise CompressKitError(f"generation row {candidate.name}: {candidate.path} is not a folder")
    if candidate.runtime == "torch":
        return _TorchRow(candidate.path, threads)
    return _GenaiRow(candidate.path, threads, spinning)


def _scenario(
    runners: Sequence[_TorchRow | _GenaiRow],
    prompt: np.ndarray,
    new_tokens: int,
    config: GenerationConfig,
) -> tuple[list[list[_Timing]], list[str]]:
    """Interleaved generations of every runner on ``prompt``; timings (warm-up dropped)
    and the machine's noise reasons."""
    records: list[list[_Timing]] = [[] for _ in runners]

    def call(index: int) -> Callable[[], object]:
        return lambda: records[index].append(runners[index].generate(prompt, new_tokens))

    before = sample_machine()
    time_interleaved(
        [call(i) for i in range(len(runners))],
        warmup=config.warmup,
        min_repeats=config.min_repeats,
        max_seconds=config.max_seconds,
    )
    kept = [r[config.warmup :] for r in records]
    noise = assess(before, sample_machine())
    return kept, list(noise.reasons)


def bench_generation(
    candidates: Sequence[GenerationCandidate],
    prompts: np.ndarray,
    *,
    config: GenerationConfig | None = None,
) -> GenerationResult:
    """Measure every candidate on ``prompts`` (token ids [n, length]; rows are reused for
    batches, and each length is a prefix) as described in the module docstring."""
    config = config or GenerationConfig()
    prompts = np.asarray(prompts, dtype=np.int64)
    longest = max([*config.prompt_lengths, config.decode_prompt])
    if prompts.ndim != 2 or prompts.shape[1] < longest:
        raise CompressKitError(
            f"generation prompts have shape {prompts.shape}; need [n, >= {longest}] token ids"
        )
    threads = config.threads or usable_cores()
    spinning = len(candidates) == 1
    _prime(candidates)
    rows, runners = [], []
    for candidate in candidates:
        has_peak = _reset_peak()
        before = _proc_status()
        start = time.perf_counter()
        runner = _load(candidate, threads, spinning)
        load_s = time.perf_counter() - start
        runner.generate(_batch(prompts, max(config.batch_sizes), longest), config.new_tokens)
        after = _proc_status()
        peak = None
        if has_peak and "VmHWM" in after and "VmRSS" in before:
            peak = (after["VmHWM"] - before["VmRSS"]) / 1024
        rows.append(
            GenerationRow(
                name=candidate.name,
                runtime=candidate.runtime,
                file_bytes=candidate_bytes(candidate),
                peak_rss_delta_mb=peak,
                load_s=load_s,
            )
        )
        runners.append(runner)
    for length in config.prompt_lengths:
        timings, reasons = _scenario(runners, _batch(prompts, 1, length), 1, config)
        _record(rows, timings, reasons, f"ttft p{length}")
        for row, series in zip(rows, timings, strict=True):
            row.ttft_ms[length] = 1000 * _median([t.first for t in series])
    for batch in config.batch_sizes:
        prompt = _batch(prompts, batch, config.decode_prompt)
        timings, reasons = _scenario(runners, prompt, config.new_tokens, config)
        _record(rows, timings, reasons, f"decode b{batch}")
        for row, series in zip(rows, timings, strict=True):
            row.decode_tok_s[batch] = _median([t.decode_tok_s for t in series])
    return GenerationResult(rows=rows, threads=threads, config=config)


def _prime(candidates: Sequence[GenerationCandidate]) -> None:
    """Import the runtimes first, so that the first row's load time and memory do not
    include their one-off start-up."""
    if any(c.runtime == "torch" for c in candidates):
        from transformers import AutoModelForCausalLM  # noqa: F401
        from transformers.generation.streamers import BaseStreamer  # noqa: F401
    if any(c.runtime == "onnxruntime-genai" for c in candidates):
        import onnxruntime_genai  # noqa: F401


def _batch(prompts: np.ndarray, batch: int, length: int) -> np.ndarray:
    rows = np.concatenate([prompts] * -(-batch // len(prompts)))[:batch]
    return np.ascontiguousarray(rows[:, :length])


def _median(values: Sequence[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def _record(
    rows: list[GenerationRow], timings: list[list[_Timing]], reasons: list[str], label: str
) -> None:
    """Samples and noise verdict of one scenario, on every row."""
    for row, series in zip(rows, timings, strict=True):
        row.samples[label] = len(series)
        mine = [f"{label}: {reason}" for reason in reasons]
        cv = robust_cv(np.array([t.total for t in series])) if len(series) >= 2 else 0.0
        if cv > MAX_CV:
            mine.append(f"{label}: timings vary (robust CV {cv:.0%})")
        row.noisy = row.noisy or bool(mine)
        row.noise_reasons.extend(mine)
