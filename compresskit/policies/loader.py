"""YAML policy files -> validated :class:`Policy`, with errors that name file, node and field."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from compresskit.errors import CompressKitError
from compresskit.policies.schema import Policy


def builtin_policy_names() -> list[str]:
    """Names of the policies shipped in ``policies/``."""
    root = resources.files("compresskit") / "builtin" / "policies"
    return sorted(p.name.removesuffix(".yaml") for p in root.iterdir() if p.name.endswith(".yaml"))


def policy_text(name_or_path: str | Path) -> tuple[str, str]:
    """(text, where) of a policy given by built-in name or file path."""
    ref = str(name_or_path)
    if ref in builtin_policy_names():
        entry = resources.files("compresskit") / "builtin" / "policies" / f"{ref}.yaml"
        return entry.read_text(encoding="utf-8"), f"policies/{ref}.yaml"
    path = Path(ref)
    if not path.is_file():
        raise CompressKitError(
            f"policy {ref!r}: no such file and not a built-in policy "
            f"({', '.join(builtin_policy_names())}); see `compresskit policies list`"
        )
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except (OSError, UnicodeDecodeError) as error:
        raise CompressKitError(f"policy {path}: cannot read it ({error})") from None


def load_policy(name_or_path: str | Path) -> Policy:
    """Load and fully validate a policy: the YAML, the graph, and every pass config.

    >>> policy = load_policy("default")                           # doctest: +SKIP
    """
    text, where = policy_text(name_or_path)
    return parse_policy(text, where=where)


def parse_policy(text: str, *, where: str = "<policy>") -> Policy:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise CompressKitError(f"policy {where}: invalid YAML{at}: {problem}") from None
    if not isinstance(raw, dict):
        raise CompressKitError(
            f"policy {where}: expected a mapping at the top, got {type(raw).__name__}"
        )
    try:
        policy = Policy.model_validate(raw)
    except ValidationError as error:
        raise CompressKitError(f"policy {where}: {describe_error(error, raw)}") from None
    from compresskit.pipeline.graph import Pipeline

    Pipeline.from_policy(policy, where=where)  # validates pass names, configs and the graph
    return policy


def describe_error(error: ValidationError, raw: Any = None, *, prefix: str = "") -> str:
    """The first validation error as ``nodes[2] (id 'prune').config.ratio: message``."""
    first = error.errors()[0]
    parts: list[str] = []
    for item in first["loc"]:
        if isinstance(item, int):
            label = f"[{item}]"
            node_id = _node_id(raw, parts, item)
            parts.append(label + (f" (id {node_id!r})" if node_id else ""))
        else:
            parts.append(("." if parts else "") + str(item))
    location = prefix + "".join(parts)
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown field (check its spelling)"
    elif first["type"] == "missing":
        message = "required field is missing"
    value = first.get("input")
    shown = f" (got {value!r})" if first["type"] not in ("missing", "extra_forbidden") else ""
    more = len(error.errors()) - 1
    return f"{location}: {message}{shown}" + (f" [+{more} more]" if more else "")


def _node_id(raw: Any, parts: list[str], index: int) -> str | None:
    if parts == ["nodes"] and isinstance(raw, dict):
        nodes = raw.get("nodes")
        if isinstance(nodes, list) and index < len(nodes) and isinstance(nodes[index], dict):
            node_id = nodes[index].get("id")
            return str(node_id) if node_id is not None else None
    return None


def dump_config(config: BaseModel) -> dict[str, Any]:
    """A pass config as plain YAML-able data (the round trip of a policy)."""
    return config.model_dump(mode="json", by_alias=True)
