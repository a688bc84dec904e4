"""The longest sequence a model accepts, so text is never timed longer than that."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

from compresskit.models.size import position_limit
from compresskit.testing import TinyCNN
from compresskit.testing.tiny import TinyTokenTransformer


def test_position_tables_and_configs(tmp_path: Path) -> None:
    assert position_limit(TinyTokenTransformer(max_length=40)) == 40  # a 2-D parameter
    table = nn.Module()
    table.pos_embedding = nn.Embedding(17, 4)
    assert position_limit(table) == 17
    assert position_limit(TinyCNN()) is None
    pytest.importorskip("transformers")
    from compresskit.models.loading import load_model
    from compresskit.testing.hf import save_tiny_text_model

    gpt2 = load_model(save_tiny_text_model("gpt2", tmp_path / "gpt2")).model
    roberta = load_model(save_tiny_text_model("roberta", tmp_path / "roberta")).model
    assert position_limit(gpt2) == 24  # n_positions
    assert position_limit(roberta) == 32  # 34 positions, the first two are padding's
