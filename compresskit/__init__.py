"""compresskit: structured pruning, int8 quantization and distillation for PyTorch models,
exported to ONNX and measured.

Example::

    import compresskit
    result = compresskit.run("default")          # the embedded digits example
    print(result.report.candidates[0].latency)

The public API is imported lazily so ``import compresskit`` stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from compresskit._version import __version__

_EXPORTS = {
    "CompressKitError": "compresskit.errors",
    "Context": "compresskit.context",
    "DataBundle": "compresskit.data",
    "load_data": "compresskit.data",
    "load_model": "compresskit.models.loading",
    "save_model": "compresskit.models.checkpoint",
    "Pipeline": "compresskit.pipeline",
    "Policy": "compresskit.policies",
    "load_policy": "compresskit.policies",
    "Pass": "compresskit.passes",
    "PassConfig": "compresskit.passes",
    "register_pass": "compresskit.passes",
    "run": "compresskit.compress",
    "RunResult": "compresskit.compress",
    "search": "compresskit.policy_search",
    "SearchOptions": "compresskit.policy_search",
    "export_onnx": "compresskit.export.onnx",
}

__all__ = [
    "CompressKitError",
    "Context",
    "DataBundle",
    "Pass",
    "PassConfig",
    "Pipeline",
    "Policy",
    "RunResult",
    "SearchOptions",
    "__version__",
    "export_onnx",
    "load_data",
    "load_model",
    "load_policy",
    "register_pass",
    "run",
    "save_model",
    "search",
]

if TYPE_CHECKING:
    from compresskit.compress import RunResult, run
    from compresskit.context import Context
    from compresskit.data import DataBundle, load_data
    from compresskit.errors import CompressKitError
    from compresskit.export.onnx import export_onnx
    from compresskit.models.checkpoint import save_model
    from compresskit.models.loading import load_model
    from compresskit.passes import Pass, PassConfig, register_pass
    from compresskit.pipeline import Pipeline
    from compresskit.policies import Policy, load_policy
    from compresskit.policy_search import SearchOptions, search


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'compresskit' has no attribute {name!r}")
