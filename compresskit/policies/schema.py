"""The policy file format: pydantic models, from which the JSON Schema is generated."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from compresskit.budget import Budget

__all__ = ["Budget", "NodeSpec", "Policy", "policy_json_schema"]

POLICY_VERSION = 1
NODE_ID_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class NodeSpec(_Strict):
    """One node of the graph: a pass, its config, and the node it follows."""

    id: Annotated[str, Field(pattern=NODE_ID_PATTERN)]
    pass_: str = Field(alias="pass", description="registered pass name")
    after: str | None = Field(
        default=None, description="id of the node whose output this node takes; none: the input"
    )
    config: dict[str, Any] = Field(default_factory=dict)
    candidate: bool = Field(
        default=False,
        description="report this node's result too, though other nodes follow it (every "
        "leaf is a candidate anyway)",
    )


class Policy(_Strict):
    """A compression policy: a graph of passes, the targets to measure, and a budget.

    >>> load_policy("default").nodes[0].pass_                     # doctest: +SKIP
    'prune_channels'
    """

    version: Literal[1] = Field(description="policy format version")
    name: str
    description: str = ""
    teacher: str = Field(
        default="input",
        description="'input' (the model as it entered the pipeline) or a checkpoint path",
    )
    nodes: list[NodeSpec] = Field(min_length=1)
    targets: list[str] = Field(default_factory=lambda: ["cpu-ort"], min_length=1)
    batch_sizes: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [1, 32], min_length=1
    )
    sequence_length: int | None = Field(
        default=None,
        ge=1,
        description="text models: the sequence length latency is measured at (overrides the "
        "targets'); none: the targets' own, else the data's",
    )
    budget: Budget = Field(default_factory=Budget)


def policy_json_schema() -> dict[str, Any]:
    """The JSON Schema of policy files, with each pass's config typed by its pass."""
    from compresskit.passes import registered_passes

    variants = []
    for name, cls in registered_passes().items():
        variants.append(
            create_model(
                f"Node_{name}",
                __base__=_Strict,
                id=(Annotated[str, Field(pattern=NODE_ID_PATTERN)], ...),
                pass_=(Literal[name], Field(alias="pass")),  # type: ignore[valid-type,arg-type]
                after=(str | None, None),
                config=(cls.config_cls, Field(default_factory=cls.config_cls)),
            )
        )
    node_union = Annotated[Any, Field(discriminator="pass_")]
    if variants:
        from functools import reduce
        from operator import or_

        node_union = Annotated[reduce(or_, variants), Field(discriminator="pass_")]  # type: ignore[misc]
    typed = create_model(
        "Policy",
        __base__=Policy,
        nodes=(list[node_union], Field(min_length=1)),  # type: ignore[valid-type]
    )
    schema = typed.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "compresskit policy"
    return schema
