"""A pipeline: a forest of nodes, each a pass with its config and the node it follows.

A node with two children is a branch: each child gets its own copy of the model, and
every leaf becomes a candidate. The graph is checked whole before anything runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

import compresskit.passes  # noqa: F401  (registers the built-in passes)
from compresskit.errors import CompressKitError
from compresskit.passes.base import Pass, get_pass

if TYPE_CHECKING:
    from compresskit.policies.schema import Policy


@dataclass(frozen=True)
class Node:
    """One pass in the graph; ``after`` is the id of the node it follows (None: the input).
    ``candidate``: an inner node's result is measured too (a leaf always is)."""

    id: str
    pass_: Pass[Any]
    after: str | None = None
    candidate: bool = False


@dataclass
class Pipeline:
    """A validated graph of passes.

    >>> pipeline = Pipeline()                                     # doctest: +SKIP
    >>> pipeline.add("prune", ChannelPruning(PruneConfig(ratio=0.5)))
    >>> pipeline.add("int8", Quantize(QuantizeConfig()), after="prune")
    >>> pipeline.add("int8-only", Quantize(QuantizeConfig()))      # a second branch
    """

    nodes: list[Node] = field(default_factory=list)

    def add(
        self,
        node_id: str,
        pass_: Pass[Any],
        *,
        after: str | None = None,
        candidate: bool = False,
    ) -> Pipeline:
        """Append a node and re-validate; returns the pipeline for chaining.

        ``candidate=True`` also reports this node's result when other nodes follow it
        (e.g. the float pruned model next to its int8 version)."""
        self.nodes.append(Node(node_id, pass_, after, candidate))
        try:
            self.validate()
        except CompressKitError:
            self.nodes.pop()
            raise
        return self

    @classmethod
    def from_policy(cls, policy: Policy, *, where: str = "policy") -> Pipeline:
        """Build the graph of a policy, validating each pass config against its pass."""
        from compresskit.policies.loader import describe_error

        nodes = []
        for index, spec in enumerate(policy.nodes):
            label = f"{where}: nodes[{index}] (id {spec.id!r})"
            try:
                pass_cls = get_pass(spec.pass_)
            except KeyError as error:
                raise CompressKitError(f"{label}.pass: {error.args[0]}") from None
            try:
                config = pass_cls.config_cls.model_validate(spec.config)
            except ValidationError as error:
                raise CompressKitError(f"{label}.config.{describe_error(error)}") from None
            nodes.append(Node(spec.id, pass_cls(config), spec.after, spec.candidate))
        pipeline = cls(nodes)
        try:
            pipeline.validate()
        except CompressKitError as error:
            raise CompressKitError(f"{where}: {error}") from None
        return pipeline

    def to_policy(self, name: str = "pipeline", **fields: Any) -> Policy:
        """The policy that builds this pipeline (``fields``: targets, batch_sizes, budget...)."""
        from compresskit.policies.loader import dump_config
        from compresskit.policies.schema import NodeSpec, Policy

        nodes = [
            NodeSpec.model_validate(
                {
                    "id": n.id,
                    "pass": n.pass_.name,
                    "after": n.after,
                    "config": dump_config(n.pass_.config),
                    **({"candidate": True} if n.candidate else {}),
                }
            )
            for n in self.nodes
        ]
        return Policy(version=1, name=name, nodes=nodes, **fields)

    # -- structure -------------------------------------------------------------------

    def validate(self) -> None:
        """Check ids, references, cycles and pass order; raise with the first problem."""
        by_id: dict[str, Node] = {}
        for node in self.nodes:
            if node.id in by_id:
                raise CompressKitError(f"node id {node.id!r} is used twice; ids must be unique")
            by_id[node.id] = node
        for node in self.nodes:
            if node.after is not None and node.after not in by_id:
                raise CompressKitError(
                    f"node {node.id!r}: after: {node.after!r} is not a node id "
                    f"(known: {', '.join(by_id)})"
                )
        for node in self.nodes:
            seen = [node.id]
            current = node
            while current.after is not None:
                if current.after in seen:
                    cycle = " -> ".join([*seen[seen.index(current.after) :], current.after])
                    raise CompressKitError(f"nodes form a cycle: {cycle}")
                seen.append(current.after)
                current = by_id[current.after]
        for leaf in self.leaves():
            self._check_order(self.path(leaf.id))

    @staticmethod
    def _check_order(path: list[Node]) -> None:
        for earlier_index, earlier in enumerate(path):
            for later in path[earlier_index + 1 :]:
                stage, before = type(later.pass_).stage, type(earlier.pass_).stage
                if before > stage and before not in type(later.pass_).may_follow:
                    raise CompressKitError(
                        f"node {later.id!r} ({later.pass_.name}, a {stage.name.lower()} pass) "
                        f"cannot come after {earlier.id!r} ({earlier.pass_.name}, a "
                        f"{before.name.lower()} pass); move it before {earlier.id!r}"
                    )

    def node(self, node_id: str) -> Node:
        return next(n for n in self.nodes if n.id == node_id)

    def children(self, node_id: str | None) -> list[Node]:
        """Nodes that follow ``node_id`` (None: the roots), in declaration order."""
        return [n for n in self.nodes if n.after == node_id]

    def leaves(self) -> list[Node]:
        parents = {n.after for n in self.nodes}
        return [n for n in self.nodes if n.id not in parents]

    def candidates(self) -> list[Node]:
        """The nodes whose results the report compares: every leaf, and every node marked
        ``candidate``, in declaration order."""
        leaves = {n.id for n in self.leaves()}
        return [n for n in self.nodes if n.id in leaves or n.candidate]

    def path(self, node_id: str) -> list[Node]:
        """The chain of nodes from a root to ``node_id``."""
        chain = [self.node(node_id)]
        while chain[-1].after is not None:
            chain.append(self.node(chain[-1].after))
        return chain[::-1]

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)
