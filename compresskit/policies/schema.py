"""The policy file format: pydantic models, from which the JSON Schema is generated.

A policy's nodes are one typed union, a variant per registered pass discriminated by
``pass``, each with that pass's config model (:func:`typed_policy_model`). Loading a file
validates it through that union, and ``compresskit policies schema`` is generated from the
same model, so the published schema describes exactly what the loader accepts.
Validation is strict: ``"3"`` is not a number and ``true`` is not ``1``.
"""

from __future__ import annotations

from functools import lru_cache, reduce
from operator import or_
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    create_model,
    field_validator,
)

from compresskit.budget import Budget
from compresskit.passes.base import PassConfig

__all__ = [
    "Budget",
    "NodeSpec",
    "Policy",
    "policy_json_schema",
    "typed_policy_model",
]

POLICY_VERSION = 1
NODE_ID_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
# Names the report gives models that are not nodes.
RESERVED_IDS = frozenset({"baseline"})
# A policy's name is the default run directory's name: one plain path component.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
MAX_NODES = 256

NodeId = Annotated[str, Field(pattern=NODE_ID_PATTERN)]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, strict=True)


class NodeSpec(_Strict):
    """One node of the graph: a pass, its config, and the node it follows."""

    id: NodeId = Field(description="unique node id; 'baseline' is reserved")
    pass_: str = Field(alias="pass", description="registered pass name")
    after: NodeId | None = Field(
        default=None, description="id of the node whose output this node takes; none: the input"
    )
    config: SerializeAsAny[PassConfig] = Field(
        default_factory=PassConfig, description="the pass's config"
    )
    candidate: bool = Field(
        default=False,
        description="report this node's result too, though other nodes follow it (every "
        "leaf is a candidate anyway)",
    )

    @field_validator("id")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_IDS:
            raise ValueError(f"node id {value!r} is reserved for the report; choose another id")
        return value


class Policy(_Strict):
    """A compression policy: a graph of passes, the targets to measure, and a budget.

    Files are read through :func:`typed_policy_model` (``load_policy``); in code, build a
    :class:`~compresskit.pipeline.Pipeline` and call ``policy_of(pipeline)``.

    >>> from compresskit.policies.loader import load_policy
    >>> load_policy("default").nodes[0].pass_
    'prune_channels'
    """

    version: Literal[1] = Field(description="policy format version")
    name: Annotated[str, Field(pattern=NAME_PATTERN)] = Field(
        description="the policy's name, also the default run directory's (runs/NAME-TIME)"
    )
    description: str = Field(default="", max_length=4000)
    teacher: str = Field(
        default="input",
        description="'input' (the model as it entered the pipeline) or a checkpoint path",
    )
    nodes: list[NodeSpec] = Field(min_length=1, max_length=MAX_NODES)
    targets: list[str] = Field(
        default_factory=lambda: ["cpu-ort"],
        min_length=1,
        max_length=16,
        description="export targets to measure on: built-in names (compresskit targets "
        "list) or target .yaml files",
    )
    batch_sizes: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=lambda: [1, 32], min_length=1, max_length=16
    )
    sequence_length: int | None = Field(
        default=None,
        ge=1,
        le=131072,
        description="text models: the sequence length latency is measured at (overrides the "
        "targets'); none: the targets' own, else the data's",
    )
    budget: Budget = Field(default_factory=Budget)

    @field_validator("version", mode="before")
    @classmethod
    def _integer_version(cls, value: Any) -> Any:  # noqa: ANN401
        if type(value) is not int:  # 1.0 and True equal 1, but are not a version number
            raise ValueError(f"version must be the integer {POLICY_VERSION}")
        return value

    @field_validator("teacher")
    @classmethod
    def _teacher_exists(cls, value: str) -> str:
        if value != "input" and not value.startswith("example:") and not Path(value).exists():
            raise ValueError(
                f"teacher {value!r}: no such file or directory; give a checkpoint path or 'input'"
            )
        return value

    @field_validator("targets")
    @classmethod
    def _known_targets(cls, value: list[str]) -> list[str]:
        from compresskit.export.targets import builtin_target_names

        known = builtin_target_names()
        for name in value:
            is_file = name.endswith((".yaml", ".yml")) and Path(name).is_file()
            if name not in known and not is_file:
                raise ValueError(
                    f"unknown target {name!r}; known: {', '.join(known)} (or a target .yaml "
                    "file that exists)"
                )
        if len(set(value)) != len(value):
            raise ValueError("a target is listed twice")
        return value


@lru_cache(maxsize=8)
def _typed(passes: tuple[tuple[str, type[PassConfig]], ...]) -> type[Policy]:
    variants = [
        create_model(
            f"Node_{name}",
            __base__=NodeSpec,
            pass_=(Literal[name], Field(alias="pass")),  # type: ignore[valid-type,arg-type]
            config=(config_cls, Field(default_factory=config_cls)),
        )
        for name, config_cls in passes
    ]
    union: Any = reduce(or_, variants)
    node = Annotated[union, Field(discriminator="pass_")]
    return create_model(  # type: ignore[no-any-return]
        "Policy",
        __base__=Policy,
        nodes=(list[node], Field(min_length=1, max_length=MAX_NODES)),  # type: ignore[valid-type]
    )


def typed_policy_model() -> type[Policy]:
    """The policy model whose nodes are the union of every registered pass's node."""
    from compresskit.passes import registered_passes

    return _typed(tuple((name, cls.config_cls) for name, cls in registered_passes().items()))


def policy_json_schema() -> dict[str, Any]:
    """The JSON Schema of policy files, with each pass's config typed by its pass."""
    schema = typed_policy_model().model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "compresskit policy"
    return schema
