"""The measurement schema: one set of types from the benchmark worker's JSON to
``report.json``, ``compresskit bench --json`` and the benchmark scripts' results.

- :class:`Latency`: one model timed on one target at one batch size (or on one named
  workload: a list of inputs cycled, e.g. texts at their real lengths);
- :class:`Session`: loading that model there (time to a ready session, memory);
- :class:`Profile`: where one model's time goes on one target at one batch size: ONNX
  Runtime's profiler, each kernel's time summed per torch module (:class:`LayerCost`);
- :class:`ModelRun`: one model's session, latencies and profiles on one target;
- :class:`TargetInfo`: how a target was measured (threads, spinning, noise verdict);
- :class:`TargetRun`: one worker process: the target and every model it measured.

Example::

    run = TargetRun.model_validate_json(worker_output)
    run.latency("int8", 32).speedup      # baseline p50 / int8 p50, same worker

Pydantic only: the worker of an ONNX Runtime target imports this module, never torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Latency(_Model):
    """One model on one target at one batch size (or workload), in milliseconds per call."""

    target: str
    batch: int
    workload: str | None = Field(
        default=None,
        description="name of the input set timed, when not the target's own batch of the "
        "sample (benchmark workloads: e.g. texts at their real lengths)",
    )
    p50_ms: float
    p90_ms: float
    repeats: int
    p99_ms: float | None = None
    mean_ms: float | None = None
    cv: float | None = Field(default=None, description="robust CV: IQR / 1.349 / median")
    throughput: float | None = Field(default=None, description="samples per second at p50")
    stable: bool = Field(default=True, description="the median settled before the time cap")
    noisy: bool = False
    noise_reason: str | None = None
    speedup: float | None = Field(
        default=None,
        description="baseline p50 / this p50: same target, batch and workload, timed "
        "interleaved in the same worker process",
    )

    def key(self) -> tuple[str, int, str | None]:
        return (self.target, self.batch, self.workload)


class Session(_Model):
    """Loading one model on one target: time to a ready session, and the memory it took."""

    target: str
    load_ms: float | None = None
    rss_delta_mb: float | None = Field(default=None, description="RSS after load - before")
    peak_rss_delta_mb: float | None = Field(
        default=None, description="peak RSS during load and one run per batch size - before"
    )
    error: str | None = Field(default=None, description="why it could not be measured")


class LayerCost(_Model):
    """The kernels of one torch module (as exported, then optimised by ONNX Runtime) and
    their time per call."""

    module: str = Field(
        description="the torch module the nodes come from ('' for ops of the top-level "
        "forward); quantizers count to the layer or block that owns them"
    )
    ops: list[str] = Field(description="kernel types run for it, most costly first")
    ms: float = Field(description="kernel time per call: the sum of its nodes' medians")
    share: float = Field(description="of the model's kernel time per call")
    nodes: int


class Profile(_Model):
    """Where one model's time goes on one target at one batch size (or workload): ONNX
    Runtime's profiler over ``runs`` calls, interleaved with the run's other models, each
    node of the graph ORT optimised mapped back to the torch module it came from."""

    target: str
    batch: int
    workload: str | None = None
    runs: int
    kernel_ms: float = Field(description="the sum of every node's median kernel time")
    layers: list[LayerCost] = Field(default_factory=list, description="per module, costliest first")
    unmapped_ms: float = Field(
        default=0.0, description="kernel time of nodes no module could be found for"
    )
    by_op: dict[str, float] = Field(
        default_factory=dict,
        description="kernel ms per call by ORT kernel type (QGemm, Softmax, ...), costliest "
        "first: what no single module shows, such as the float attention core's share",
    )

    def key(self) -> tuple[str, int, str | None]:
        return (self.target, self.batch, self.workload)

    def layer_ms(self) -> dict[str, float]:
        """Kernel ms per call by module."""
        return {layer.module: layer.ms for layer in self.layers}


class ModelRun(_Model):
    """One model on one target: its session, its latency per batch size / workload and,
    when asked, where its time goes (ONNX Runtime targets)."""

    name: str
    session: Session
    latency: list[Latency] = Field(default_factory=list)
    profiles: list[Profile] = Field(default_factory=list)
    skipped: list[str] = Field(
        default_factory=list,
        description="what was not timed and why (a batch size the graph does not take, a "
        "target that cannot run this kind of model); failures are the session's error",
    )

    @property
    def error(self) -> str | None:
        return self.session.error

    def at(self, batch: int, workload: str | None = None) -> Latency | None:
        return next((x for x in self.latency if (x.batch, x.workload) == (batch, workload)), None)

    def profile_at(self, batch: int, workload: str | None = None) -> Profile | None:
        return next((x for x in self.profiles if (x.batch, x.workload) == (batch, workload)), None)


class TargetInfo(_Model):
    """How a target was measured: its worker's thread settings and noise verdict, or why
    it was skipped."""

    target: str
    runtime: str
    provider: str
    precision: str
    skipped: str | None = Field(default=None, description="why it could not run here")
    threads: int | None = None
    inter_op_threads: int | None = None
    allow_spinning: bool | None = None
    denormal_as_zero: bool | None = Field(
        default=None, description="denormal floats flushed to zero while timing"
    )
    noisy: bool = False
    noise_reasons: list[str] = Field(default_factory=list)
    seconds: float = 0.0

    @property
    def denormals(self) -> str:
        """How denormal floats were timed, in words ("" when the run did not say)."""
        flag = self.denormal_as_zero
        return "" if flag is None else ("denormals flushed to zero" if flag else "denormals kept")


class TargetRun(TargetInfo):
    """Everything one worker measured on one target; the first model is the baseline of
    every speedup."""

    models: list[ModelRun] = Field(default_factory=list)

    def model(self, name: str) -> ModelRun | None:
        return next((m for m in self.models if m.name == name), None)

    def latency(self, name: str, batch: int, workload: str | None = None) -> Latency | None:
        model = self.model(name)
        return model.at(batch, workload) if model else None

    def info(self) -> TargetInfo:
        return TargetInfo.model_validate(self.model_dump(exclude={"models"}))

    def add_speedups(self, baseline: str) -> None:
        """Set every latency's speedup: ``baseline``'s p50 over its own, same key."""
        base = self.model(baseline)
        if base is None:
            return
        reference = {x.key(): x.p50_ms for x in base.latency}
        for model in self.models:
            for latency in model.latency:
                p50 = reference.get(latency.key())
                if p50 is not None and latency.p50_ms > 0:
                    latency.speedup = p50 / latency.p50_ms


BENCH_JSON_VERSION = 2


class BenchDocument(_Model):
    """What ``compresskit bench --json`` writes.

    Version history: 1 had flat ``results`` rows and a ``skipped`` map next to the target
    runs; 2 keeps only the runs, in the measurement schema (each latency has its speedup,
    each model its session, each run its ``skipped`` reason).
    """

    schema_version: int = BENCH_JSON_VERSION
    models: list[str] = Field(description="the files measured; the first is the baseline")
    cores: int
    targets: list[TargetRun]


def cpu_description(cpuinfo: str) -> str | None:
    """The CPU model and the vector extensions int8 and fp32 kernels choose by, from the
    text of ``/proc/cpuinfo``: "Intel(R) Xeon(R) Processor; AVX-512, VNNI". Two machines
    of the same "x86_64" can differ here, and their speedups with them (ORT's int8 GEMMs
    use VNNI where the CPU has it; fp32 uses AVX-512). None when the text says neither."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    model = fields.get("model name")
    flags = set(fields.get("flags", "").split())
    if not model and not flags:
        return None
    widest = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
    isa = []
    if widest:
        isa.append(widest)
        vnni = {"avx512_vnni", "avx_vnni"} & flags
        isa.append("VNNI" if vnni else "no VNNI")
    return "; ".join(part for part in (model, ", ".join(isa)) if part)


def this_cpu() -> str | None:
    """:func:`cpu_description` of this machine (Linux; None elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    return cpu_description(cpuinfo.read_text()) if cpuinfo.is_file() else None


def machine_info() -> dict[str, Any]:
    """Where a run measured: cores, platform, processor (and on Linux the CPU model and
    vector extensions), Python, torch and ORT versions (torch and onnxruntime are
    imported here, when asked, not with this module)."""
    import platform

    import onnxruntime
    import torch

    from compresskit.bench.noise import usable_cores

    cpu = this_cpu()
    return {
        "cores": usable_cores(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        **({"cpu": cpu} if cpu else {}),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
