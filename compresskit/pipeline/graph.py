"""A pipeline: a forest of nodes, each a pass with its config and the node it follows.

A node with two children is a branch: each child gets its own copy of the model, and
every leaf becomes a candidate. The graph is checked whole before anything runs, in time
linear in its size: unique ids, known parents, no cycles, and along every chain what each
pass does to the model's precision (:class:`~compresskit.passes.base.Effects`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import compresskit.passes  # noqa: F401  (registers the built-in passes)
from compresskit.errors import CompressKitError
from compresskit.passes.base import DataNeed, Pass

RESERVED_IDS = frozenset({"baseline"})


class GraphError(CompressKitError):
    """The graph cannot run: names the node and what to change."""


@dataclass(frozen=True)
class Node:
    """One pass in the graph; ``after`` is the id of the node it follows (None: the input).
    ``candidate``: an inner node's result is measured too (a leaf always is)."""

    id: str
    pass_: Pass[Any]
    after: str | None = None
    candidate: bool = False


@dataclass(frozen=True)
class _State:
    """The model's precision after a node: which parts are quantized, and by whom."""

    quantized: dict[str, str] = field(default_factory=dict)  # part -> node id
    packed_by: str | None = None


@dataclass
class Pipeline:
    """A validated graph of passes.

    >>> from compresskit.passes.prune_channels import PruneChannels, PruneChannelsConfig
    >>> from compresskit.passes.quantize import Quantize, QuantizeConfig
    >>> pipeline = Pipeline()
    >>> pipeline = pipeline.add("prune", PruneChannels(PruneChannelsConfig(ratio=0.5)))
    >>> pipeline = pipeline.add("int8", Quantize(QuantizeConfig()), after="prune")
    >>> pipeline = pipeline.add("int8-only", Quantize(QuantizeConfig()))  # a second branch
    >>> [node.id for node in pipeline.nodes]
    ['prune', 'int8', 'int8-only']
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

    # -- structure -------------------------------------------------------------------

    def validate(self) -> None:
        """Check ids, references, cycles and what each chain does to the model; raise
        :class:`GraphError` with the first problem."""
        by_id: dict[str, Node] = {}
        for node in self.nodes:
            if node.id in RESERVED_IDS:
                raise GraphError(f"node id {node.id!r} is reserved for the report; rename it")
            if node.id in by_id:
                raise GraphError(f"node id {node.id!r} is used twice; ids must be unique")
            by_id[node.id] = node
        for node in self.nodes:
            if node.after is not None and node.after not in by_id:
                known = ", ".join(list(by_id)[:10]) + (" ..." if len(by_id) > 10 else "")
                raise GraphError(
                    f"node {node.id!r}: after: {node.after!r} is not a node id (known: {known})"
                )
        states: dict[str, _State] = {}
        for node in self._topological(by_id):
            parent = states[node.after] if node.after is not None else _State()
            states[node.id] = self._effect(node, parent, by_id)

    def _topological(self, by_id: dict[str, Node]) -> list[Node]:
        """Nodes parents-first; a cycle is an error (each node is visited once)."""
        order: list[Node] = []
        done: set[str] = set()
        for start in self.nodes:
            chain: list[Node] = []
            on_chain: set[str] = set()
            current: Node | None = start
            while current is not None and current.id not in done:
                if current.id in on_chain:
                    names = [n.id for n in chain]
                    cycle = names[names.index(current.id) :] + [current.id]
                    raise GraphError(f"nodes form a cycle: {' -> '.join(cycle)}")
                chain.append(current)
                on_chain.add(current.id)
                current = by_id[current.after] if current.after is not None else None
            for node in reversed(chain):
                done.add(node.id)
                order.append(node)
        return order

    @staticmethod
    def _effect(node: Node, state: _State, by_id: dict[str, Node]) -> _State:
        effects = type(node.pass_).effects
        name = f"{node.id!r} ({node.pass_.name})"

        def by(node_id: str) -> str:
            return f"{node_id!r} ({by_id[node_id].pass_.name})"

        if effects.trains and state.packed_by is not None:
            raise GraphError(
                f"node {name} trains the model, but {by(state.packed_by)} made layers that "
                f"cannot be trained; move {node.id!r} before {state.packed_by!r}"
            )
        for part in sorted(effects.quantizes - effects.refines):
            if part in state.quantized:
                earlier = state.quantized[part]
                raise GraphError(
                    f"node {name} quantizes {part} that {by(earlier)} already quantized; "
                    "remove one of them or put them on separate branches"
                )
        if effects.float_only and state.quantized:
            earlier = next(iter(state.quantized.values()))
            raise GraphError(
                f"node {name} needs a float model, but {by(earlier)} quantized it; move "
                f"{node.id!r} before {earlier!r}"
            )
        quantized = dict(state.quantized) | {part: node.id for part in effects.quantizes}
        return _State(quantized, node.id if effects.packs else state.packed_by)

    def data_needs(self) -> dict[str, frozenset[DataNeed]]:
        """The data splits each node reads, by node id."""
        return {node.id: node.pass_.data_needs() for node in self.nodes}

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
