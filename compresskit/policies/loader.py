"""YAML policy files -> validated :class:`Policy`, with errors that name file, node and field."""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from compresskit.errors import CompressKitError
from compresskit.policies.files import policy_text
from compresskit.policies.pipelines import pipeline_of
from compresskit.policies.schema import Policy, typed_policy_model
from compresskit.yaml_text import load_yaml


def load_policy(name_or_path: str | Path) -> Policy:
    """Load and fully validate a policy: the YAML, every pass config, and the graph.

    >>> policy = load_policy("default")
    >>> policy.name
    'default'
    """
    text, where = policy_text(name_or_path)
    return parse_policy(text, where=where)


def parse_policy(text: str, *, where: str = "<policy>") -> Policy:
    """Validate policy YAML ``text`` (``where`` names it in errors)."""
    raw = load_yaml(text, where=f"policy {where}")
    if not isinstance(raw, dict):
        raise CompressKitError(
            f"policy {where}: expected a mapping at the top, got {type(raw).__name__}"
        )
    try:
        policy = typed_policy_model().model_validate(raw)
    except ValidationError as error:
        raise CompressKitError(f"policy {where}: {describe_error(error, raw)}") from None
    pipeline_of(policy, where=f"policy {where}")  # the graph: ids, cycles, chains
    return policy


_short = reprlib.Repr()
_short.maxstring = _short.maxother = 60
_short.maxlist = _short.maxdict = _short.maxtuple = 4
_short.maxlevel = 2


def describe_error(error: ValidationError, raw: Any = None, *, prefix: str = "") -> str:  # noqa: ANN401
    """The first validation error as ``nodes[2] (id 'prune').config.ratio: message``."""
    first = error.errors()[0]
    parts: list[str] = []
    loc = list(first["loc"])
    for position, item in enumerate(loc):
        if isinstance(item, int):
            node_id = _node_id(raw, parts, item)
            parts.append(f"[{item}]" + (f" (id {node_id!r})" if node_id else ""))
            if node_id is not None and position + 1 < len(loc):
                # The union's tag (the pass name) follows a node's index: not a field.
                if loc[position + 1] == _node_pass(raw, item):
                    loc[position + 1] = None  # type: ignore[call-overload]
        elif item is not None:
            parts.append(("." if parts else "") + str(item))
    location = prefix + "".join(parts)
    message = first["msg"]
    kind = first["type"]
    if kind == "extra_forbidden":
        message = "unknown field (check its spelling)"
    elif kind == "missing":
        message = "required field is missing"
    elif kind == "union_tag_invalid":
        context = first.get("ctx", {})
        field = str(context.get("discriminator", "")).split("|")[0].strip(" '")
        if field == "pass_":
            from compresskit.passes import registered_passes

            known = ", ".join(registered_passes())
            message = f"unknown pass {context.get('tag')!r}; known passes: {known}"
            location += ".pass"
        else:
            message = (
                f"unknown {field} {context.get('tag')!r}; expected one of "
                f"{context.get('expected_tags')}"
            )
            location += f".{field}"
    elif kind == "union_tag_not_found":
        message = "required field 'pass' is missing"
    shown = ""
    if kind not in ("missing", "extra_forbidden", "union_tag_invalid", "union_tag_not_found"):
        shown = f" (got {_short.repr(first.get('input'))})"
    more = len(error.errors()) - 1
    return f"{location}: {message}{shown}" + (f" [+{more} more]" if more else "")


def _node(raw: Any, index: int) -> dict[str, Any] | None:  # noqa: ANN401
    nodes = raw.get("nodes") if isinstance(raw, dict) else None
    if isinstance(nodes, list) and index < len(nodes) and isinstance(nodes[index], dict):
        return nodes[index]
    return None


def _node_id(raw: Any, parts: list[str], index: int) -> str | None:  # noqa: ANN401
    node = _node(raw, index) if parts == ["nodes"] else None
    if node is None:
        return None
    node_id = node.get("id")
    return _short.repr(node_id).strip("'") if node_id is not None else ""


def _node_pass(raw: Any, index: int) -> Any:  # noqa: ANN401
    node = _node(raw, index)
    return node.get("pass") if node else None


def dump_config(config: BaseModel) -> dict[str, Any]:
    """A pass config as plain YAML-able data (the round trip of a policy)."""
    return config.model_dump(mode="json", by_alias=True)
