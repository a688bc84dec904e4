"""The contract every registered pass keeps, as a base class its test file subclasses
(in the spirit of NNCF's template tests): a new pass brings one test class, not an entry
in a central table.

    class TestPruneChannelsContract(PassContract):
        pass_name = "prune_channels"
        settings = {"ratio": 0.5}

``tests/passes/test_contract.py`` checks that every built-in pass has such a class.
"""

from __future__ import annotations

import copy
import importlib
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from compresskit.bench.markdown import blocks_markdown
from compresskit.context import Context
from compresskit.data.bundle import DataBundle
from compresskit.export.onnx import export_onnx, needs_legacy_exporter
from compresskit.export.qdq import NotExportableError
from compresskit.export.verify import compare, onnx_outputs, parity_tolerance, torch_outputs
from compresskit.passes import registered_passes
from compresskit.passes.base import Pass
from compresskit.pipeline import Pipeline, run_pipeline
from compresskit.policies.loader import dump_config
from compresskit.records import Line
from compresskit.testing.tiny_lm import LogitsOnly


class PassContract:
    """What every pass must do on a small real model: its config survives YAML, it is
    deterministic for a seed, it keeps the output shape, and its result exports to ONNX
    with ONNX Runtime matching torch (or refuses export in one line, if it has no ONNX
    form)."""

    pass_name: ClassVar[str]
    # Small but real settings, so the contract runs in seconds.
    settings: ClassVar[dict[str, Any]] = {}
    # False for passes whose result has no ONNX form (bitsandbytes layers).
    exportable: ClassVar[bool] = True
    # Causal LMs return a ModelOutput: their logits are what the checks compare and export.
    language_model: ClassVar[bool] = False

    def subject(
        self, trained_tiny_cnn: nn.Module, tiny: DataBundle
    ) -> tuple[nn.Module, DataBundle]:
        """The model and data the pass is tried on (default: the trained tiny CNN)."""
        return trained_tiny_cnn, tiny

    def make(self) -> Pass[Any]:
        cls = registered_passes()[self.pass_name]
        return cls(cls.config_cls.model_validate(self.settings))

    def apply(self, model: nn.Module, data: DataBundle, seed: int = 0) -> nn.Module:
        ctx = Context(
            data=data,
            teacher=copy.deepcopy(model).eval(),
            example_inputs=data.example_inputs(2),
            seed=seed,
        )
        torch.manual_seed(seed)
        return self.make().apply(copy.deepcopy(model), ctx)

    def tensors(self, model: nn.Module) -> nn.Module:
        return LogitsOnly(model).eval() if self.language_model else model

    def test_config_round_trips_through_yaml(self) -> None:
        config = self.make().config
        again = type(config).model_validate(yaml.safe_load(yaml.safe_dump(dump_config(config))))
        assert again == config

    def test_runner_types_its_record_and_the_record_renders(
        self, trained_tiny_cnn: nn.Module, tiny: DataBundle
    ) -> None:
        torch.manual_seed(0)
        model, data = self.subject(trained_tiny_cnn, tiny)
        ctx = Context(
            data=data, teacher=copy.deepcopy(model).eval(), example_inputs=data.example_inputs(2)
        )
        torch.manual_seed(0)
        (candidate,) = run_pipeline(Pipeline().add("node", self.make()), model, ctx)
        (result,) = candidate.nodes
        assert type(result.record) is type(self.make()).record_cls
        assert result.records  # the facts, as report.json keeps them
        blocks = result.record.summary()
        assert blocks and isinstance(blocks[0], Line) and blocks[0].text
        assert blocks_markdown(blocks)[0].startswith("- ")

    def test_apply_is_deterministic_and_keeps_output_shape(
        self, trained_tiny_cnn: nn.Module, tiny: DataBundle
    ) -> None:
        torch.manual_seed(0)
        original, data = self.subject(trained_tiny_cnn, tiny)
        x = data.example_inputs(8)
        first = self.tensors(self.apply(original, data))
        second = self.tensors(self.apply(original, data))
        with torch.no_grad():
            out_first, out_second = first.eval()(*x), second.eval()(*x)
            assert out_first.shape == self.tensors(original)(*x).shape
        torch.testing.assert_close(out_first, out_second)

    def test_result_exports_and_onnx_runtime_matches_torch(
        self, trained_tiny_cnn: nn.Module, tiny: DataBundle, tmp_path: Path
    ) -> None:
        torch.manual_seed(0)
        original, data = self.subject(trained_tiny_cnn, tiny)
        model = self.tensors(self.apply(original, data))
        if not self.exportable:
            with pytest.raises(NotExportableError, match="no ONNX form"):
                export_onnx(model, data.example_inputs(2), tmp_path / "m.onnx")
            assert not (tmp_path / "m.onnx").exists()
            return
        result = export_onnx(
            model,
            data.example_inputs(2),
            tmp_path / "m.onnx",
            dynamic_sequence=data.dynamic_sequence,
        )
        loader = data.loader("eval", batch_size=64)
        reference = torch_outputs(model, loader)
        quantized = needs_legacy_exporter(model) or result.post_quantization is not None
        tolerance, min_agreement = parity_tolerance(quantized, reference)
        parity = compare(
            reference,
            onnx_outputs(result.path, loader),
            tolerance=tolerance,
            min_agreement=min_agreement,
        )
        assert parity.ok, parity
        assert np.isfinite(parity.max_abs_error)


def contract_classes() -> dict[str, type[PassContract]]:
    """The contract class of each pass, by pass name, from the test modules beside this
    file (imported here if the run has not collected them)."""
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        importlib.import_module(path.stem)
    found: dict[str, type[PassContract]] = {}
    pending = list(PassContract.__subclasses__())
    while pending:
        cls = pending.pop()
        pending += cls.__subclasses__()
        if "pass_name" in vars(cls):
            found[cls.pass_name] = cls
    return found
