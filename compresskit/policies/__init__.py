"""Policy files: schema and loading.

Imported lazily (like the package itself), so that ``compresskit policies list`` reads the
built-in files without importing torch: :mod:`compresskit.policies.files` is plain YAML.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Budget": "compresskit.budget",
    "NodeSpec": "compresskit.policies.schema",
    "Policy": "compresskit.policies.schema",
    "policy_json_schema": "compresskit.policies.schema",
    "builtin_policy_names": "compresskit.policies.files",
    "load_policy": "compresskit.policies.loader",
    "parse_policy": "compresskit.policies.loader",
    "pipeline_of": "compresskit.policies.pipelines",
    "policy_of": "compresskit.policies.pipelines",
}

__all__ = [
    "Budget",
    "NodeSpec",
    "Policy",
    "builtin_policy_names",
    "load_policy",
    "parse_policy",
    "pipeline_of",
    "policy_json_schema",
    "policy_of",
]

if TYPE_CHECKING:
    from compresskit.budget import Budget
    from compresskit.policies.files import builtin_policy_names
    from compresskit.policies.loader import load_policy, parse_policy
    from compresskit.policies.pipelines import pipeline_of, policy_of
    from compresskit.policies.schema import NodeSpec, Policy, policy_json_schema


def __getattr__(name: str) -> Any:  # noqa: ANN401
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'compresskit.policies' has no attribute {name!r}")
