"""Pipeline graphs of passes and their execution."""

from compresskit.pipeline.graph import Node, Pipeline
from compresskit.pipeline.runner import BranchFailure, Candidate, NodeResult, run_pipeline

__all__ = ["BranchFailure", "Candidate", "Node", "NodeResult", "Pipeline", "run_pipeline"]
