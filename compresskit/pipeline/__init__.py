"""Pipeline graphs of passes and their execution."""

from compresskit.pipeline.graph import Node, Pipeline
from compresskit.pipeline.runner import Candidate, NodeResult, run_pipeline

__all__ = ["Candidate", "Node", "NodeResult", "Pipeline", "run_pipeline"]
