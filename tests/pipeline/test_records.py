"""Every built-in pass's facts fit its record class, through the runner, and render."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

from compresskit.bench.markdown import blocks_markdown
from compresskit.context import Context
from compresskit.passes import registered_passes
from compresskit.pipeline import Pipeline, run_pipeline
from compresskit.records import Line

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "passes"))
from test_contract import BUILTIN, SETTINGS, subject  # noqa: E402

# bitsandbytes' nf4 packing fails on some CPU builds; the int8 layers record the same facts.
SETTINGS_HERE = SETTINGS | {"weight_only": {"dtype": "int8"}}


def test_the_runner_types_each_pass_record(trained_tiny_cnn, tiny) -> None:
    for pass_name in BUILTIN:  # one test: the trained model fixture is built once
        model, data = subject(pass_name, trained_tiny_cnn, tiny)
        ctx = Context(
            data=data, teacher=copy.deepcopy(model).eval(), example_inputs=data.example_inputs(2)
        )
        cls = registered_passes()[pass_name]
        node = cls(cls.config_cls.model_validate(SETTINGS_HERE[pass_name]))
        torch.manual_seed(0)
        (candidate,) = run_pipeline(Pipeline().add("node", node), model, ctx)
        (result,) = candidate.nodes
        assert type(result.record) is cls.record_cls, pass_name
        assert result.records, pass_name  # the facts, as report.json keeps them
        blocks = result.record.summary()
        assert blocks and isinstance(blocks[0], Line) and blocks[0].text, pass_name
        assert blocks_markdown(blocks)[0].startswith("- "), pass_name
