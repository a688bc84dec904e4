"""End to end on all-MiniLM-L6-v2 as a sentiment classifier (frozen encoder + linear head):
the minilm policy on 256 Rotten Tomatoes training snippets (a few minutes)."""

from __future__ import annotations

from pathlib import Path

import pytest
from _real import REPO, check_run, minilm_model_and_data

pytestmark = pytest.mark.e2e


def test_minilm_sentiment_policy_end_to_end(tmp_path: Path) -> None:
    import compresskit
    from compresskit.models.loading import LoadedModel

    model, data, policies = minilm_model_and_data("sentiment")
    policy = policies["accuracy"]
    assert policy.parent == REPO / "policies"
    result = compresskit.run(
        policy,
        model=LoadedModel(model, {"kind": "python"}),
        data=data,
        out=tmp_path / "run",
        latency_seconds=0.3,
    )
    candidate = check_run(result)
    assert candidate.nodes[:2] == ["prune_transformer", "distill"]
