"""Policy files: schema and loading."""

from compresskit.policies.loader import builtin_policy_names, load_policy, parse_policy
from compresskit.policies.schema import Budget, NodeSpec, Policy, policy_json_schema

__all__ = [
    "Budget",
    "NodeSpec",
    "Policy",
    "builtin_policy_names",
    "load_policy",
    "parse_policy",
    "policy_json_schema",
]
