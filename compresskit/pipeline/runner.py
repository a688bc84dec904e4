"""Executes a pipeline: each node's pass on a copy of its parent's output.

The input model is never modified: every root starts from its own copy, and a node
with several children hands each child its own copy, so no change leaks across
branches. Each leaf's result is a candidate.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from compresskit.context import Context
from compresskit.errors import CompressKitError
from compresskit.passes.base import DataNeed
from compresskit.pipeline.graph import Node, Pipeline
from compresskit.progress import status
from compresskit.records import PassRecord


@dataclass
class NodeResult:
    """What one node did: its pass, how long it took, and its typed record."""

    id: str
    pass_name: str
    seconds: float
    record: PassRecord = field(default_factory=PassRecord)

    @property
    def records(self) -> dict[str, Any]:
        """The recorded facts as JSON-ready data."""
        return self.record.facts()


@dataclass
class Candidate:
    """A leaf of the pipeline: the compressed model and the nodes that made it."""

    name: str
    model: nn.Module
    nodes: list[NodeResult]


def check_data_needs(pipeline: Pipeline, ctx: Context) -> None:
    """Fail before anything runs if a pass needs a split the context lacks."""
    sizes = {
        DataNeed.CALIBRATION: len(ctx.data.calibration),  # type: ignore[arg-type]
        DataNeed.TRAIN: len(ctx.data.train),  # type: ignore[arg-type]
        DataNeed.EVAL: len(ctx.data.eval),  # type: ignore[arg-type]
    }
    for node_id, needs in pipeline.data_needs().items():
        node = pipeline.node(node_id)
        for need in sorted(needs):
            if sizes[need] == 0:
                raise CompressKitError(
                    f"node {node.id!r} ({node.pass_.name}) needs {need.value} data but the "
                    f"{need.value} split of {ctx.data.name!r} is empty; give more data"
                )


def run_pipeline(pipeline: Pipeline, model: nn.Module, ctx: Context) -> list[Candidate]:
    """Run every node once; return one candidate per leaf (and per node marked
    ``candidate``), in declaration order."""
    check_data_needs(pipeline, ctx)
    candidates: dict[str, Candidate] = {}

    def visit(node: Node, model: nn.Module, history: list[NodeResult]) -> None:
        status(f"[{node.id}] {node.pass_.name}")
        node_ctx = ctx.for_node()
        start = time.perf_counter()
        model = node.pass_.apply(model, node_ctx)
        seconds = time.perf_counter() - start
        where = f"node {node.id!r} ({node.pass_.name})"
        record = type(node.pass_).record_cls.from_facts(node_ctx.records, where=where)
        result = NodeResult(node.id, node.pass_.name, seconds, record)
        history = [*history, result]
        children = pipeline.children(node.id)
        if not children:
            candidates[node.id] = Candidate(node.id, model, history)
        elif node.candidate:  # its children change the model in place: keep a copy
            candidates[node.id] = Candidate(node.id, copy.deepcopy(model), history)
        for index, child in enumerate(children):
            # The last child may take the model itself: no one else will see it.
            visit(child, model if index == len(children) - 1 else copy.deepcopy(model), history)

    for root in pipeline.children(None):
        visit(root, copy.deepcopy(model), [])
    return [candidates[node.id] for node in pipeline.candidates()]
