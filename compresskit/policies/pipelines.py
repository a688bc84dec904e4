"""Between policies and pipelines: the graph a policy declares, and the policy of a graph
built in code (to save it, or to run it with targets and a budget).

>>> from compresskit.policies.loader import load_policy
>>> pipeline = pipeline_of(load_policy("default"))
>>> policy = policy_of(pipeline, "mine", targets=["cpu-ort"])
"""

from __future__ import annotations

from typing import Any

from compresskit.errors import CompressKitError
from compresskit.passes import get_pass
from compresskit.pipeline.graph import Node, Pipeline
from compresskit.policies.schema import NodeSpec, Policy


def pipeline_of(policy: Policy, *, where: str = "policy") -> Pipeline:
    """The validated graph of ``policy`` (its configs were validated when it was loaded)."""
    nodes = []
    for spec in policy.nodes:
        try:
            pass_cls = get_pass(spec.pass_)
        except KeyError as error:
            raise CompressKitError(f"{where}: node {spec.id!r}: {error.args[0]}") from None
        config = spec.config
        if not isinstance(config, pass_cls.config_cls):  # a Policy built in code
            config = pass_cls.config_cls.model_validate(config.model_dump())
        nodes.append(Node(spec.id, pass_cls(config), spec.after, spec.candidate))
    pipeline = Pipeline(nodes)
    try:
        pipeline.validate()
    except CompressKitError as error:
        raise CompressKitError(f"{where}: {error}") from None
    return pipeline


def policy_of(pipeline: Pipeline, name: str = "pipeline", **fields: Any) -> Policy:  # noqa: ANN401
    """The policy that builds ``pipeline`` (``fields``: targets, batch_sizes, budget...)."""
    nodes = [
        NodeSpec.model_validate(
            {
                "id": node.id,
                "pass": node.pass_.name,
                "after": node.after,
                "config": node.pass_.config,
                "candidate": node.candidate,
            }
        )
        for node in pipeline.nodes
    ]
    return Policy(version=1, name=name, nodes=nodes, **fields)
