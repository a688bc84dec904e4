"""Executes a pipeline: each node's pass on a copy of its parent's output.

The input model is never modified: every root starts from its own copy, and a node
with several children hands each child its own copy, so no change leaks across
branches. Each leaf's result is a candidate.

Before any node runs, every node's pass checks the input model (``Pass.check``): a pass
that cannot handle a layer says so in seconds, not after the training of another node.
Given a ``failures`` list, a node that fails takes only its own branch down: the failure
is recorded there (node, pass, one-line reason, the candidates it cost) and the other
branches run on.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from compresskit import interrupts
from compresskit.context import Context
from compresskit.errors import CompressKitError, first_line
from compresskit.passes.base import DataNeed
from compresskit.pipeline.graph import Node, Pipeline
from compresskit.progress import status
from compresskit.records import PassRecord, RecordError


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


@dataclass
class BranchFailure:
    """A node that failed: its pass, the one-line reason, and the candidates it cost."""

    node: str
    pass_name: str
    error: str
    candidates: list[str]


def check_passes(pipeline: Pipeline, model: nn.Module, ctx: Context) -> None:
    """Ask every node's pass whether it can handle ``model``, before anything runs."""
    for node in pipeline:
        try:
            node.pass_.check(model, ctx)
        except CompressKitError as error:
            raise CompressKitError(f"node {node.id!r} ({node.pass_.name}): {error}") from None


def run_pipeline(
    pipeline: Pipeline,
    model: nn.Module,
    ctx: Context,
    *,
    failures: list[BranchFailure] | None = None,
) -> list[Candidate]:
    """Run every node once; return one candidate per leaf (and per node marked
    ``candidate``), in declaration order. With ``failures``, a failing node is recorded
    there and its branch dropped instead of stopping the run."""
    check_data_needs(pipeline, ctx)
    check_passes(pipeline, model, ctx)
    candidates: dict[str, Candidate] = {}
    wanted = {node.id for node in pipeline.candidates()}

    def lost(node: Node) -> list[str]:
        below = [node.id] + [
            n.id for c in pipeline.children(node.id) for n in _subtree(pipeline, c)
        ]
        return [name for name in below if name in wanted]

    def visit(node: Node, model: nn.Module, history: list[NodeResult]) -> None:
        status(f"[{node.id}] {node.pass_.name}")
        node_ctx = ctx.for_node()
        start = time.perf_counter()
        try:
            model = node.pass_.apply(model, node_ctx)
        except RecordError:
            raise  # a pass's own bug, not the model's
        except Exception as error:
            interrupts.check(error)
            if failures is None:
                raise
            reason = str(error) if isinstance(error, CompressKitError) else first_line(error)
            failures.append(BranchFailure(node.id, node.pass_.name, reason, lost(node)))
            status(f"[{node.id}] failed: {reason}", style="red")
            return
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
    return [candidates[node.id] for node in pipeline.candidates() if node.id in candidates]


def _subtree(pipeline: Pipeline, node: Node) -> list[Node]:
    return [node] + [n for child in pipeline.children(node.id) for n in _subtree(pipeline, child)]
