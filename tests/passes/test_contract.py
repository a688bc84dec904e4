"""The contract every registered pass must keep (in the spirit of NNCF's template tests)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from compresskit.context import Context
from compresskit.export.onnx import export_onnx, needs_legacy_exporter
from compresskit.export.qdq import NotExportableError
from compresskit.export.verify import compare, onnx_outputs, parity_tolerance, torch_outputs
from compresskit.passes import registered_passes
from compresskit.policies.loader import dump_config
from compresskit.testing import TinyBertClassifier, TinyTransformer, tiny_data, tiny_text_data
from compresskit.testing.tiny_lm import LogitsOnly, tiny_llama, tiny_lm_bundle
from compresskit.training.loop import TrainConfig

# Small but real settings per pass, so the contract runs in seconds.
SETTINGS = {
    "prune_channels": {"ratio": 0.5},
    "prune_transformer": {"heads": 0.5, "ffn": 0.5, "importance": "l2"},
    "prune_blocks": {"remove": 1},
    "distill": {"train": TrainConfig(epochs=1, batch_size=64).model_dump()},
    "quantize": {"calibration_batches": 2},
    "qat": {
        "calibration_batches": 2,
        "train": TrainConfig(epochs=1, batch_size=64, lr=1e-3).model_dump(),
    },
    "quantize_dynamic": {},
    "quantize_embeddings": {},
    "weight_only": {"dtype": "nf4"},
    "prune_decoder_depth": {"remove": 1, "criterion": "hidden"},
    "prune_decoder_width": {"heads": 0.5, "mlp": 0.5, "importance": "magnitude"},
    "quantize_int4": {"algorithm": "rtn"},
}
# Passes whose result has no ONNX form (bitsandbytes); export must refuse in one line.
NOT_EXPORTABLE = {"weight_only"}
BUILTIN = [name for name in registered_passes() if not name.startswith("test_")]
# Passes that need another architecture than the tiny CNN: name -> (model, data) builder.
SUBJECTS = {
    "prune_transformer": lambda: (TinyBertClassifier().eval(), tiny_text_data()),
    "prune_blocks": lambda: (TinyTransformer().eval(), tiny_data()),
    "quantize_embeddings": lambda: (TinyBertClassifier().eval(), tiny_text_data()),
    "prune_decoder_depth": lambda: (tiny_llama(), tiny_lm_bundle(seq_len=16)),
    "prune_decoder_width": lambda: (tiny_llama(), tiny_lm_bundle(seq_len=16)),
    "quantize_int4": lambda: (tiny_llama(), tiny_lm_bundle(seq_len=16)),
}
# Causal LMs return a ModelOutput: their logits are what the checks compare and export.
LANGUAGE_MODELS = {"prune_decoder_depth", "prune_decoder_width", "quantize_int4"}


def tensor_model(pass_name: str, model: torch.nn.Module) -> torch.nn.Module:
    return LogitsOnly(model).eval() if pass_name in LANGUAGE_MODELS else model


def test_every_builtin_pass_has_contract_settings() -> None:
    assert set(BUILTIN) == set(SETTINGS)


@pytest.fixture(params=BUILTIN)
def pass_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make(pass_name: str):
    cls = registered_passes()[pass_name]
    return cls(cls.config_cls.model_validate(SETTINGS[pass_name]))


def apply(pass_name: str, model: torch.nn.Module, tiny, seed: int = 0) -> torch.nn.Module:
    ctx = Context(
        data=tiny,
        teacher=copy.deepcopy(model).eval(),
        example_inputs=tiny.example_inputs(2),
        seed=seed,
    )
    torch.manual_seed(seed)
    return make(pass_name).apply(copy.deepcopy(model), ctx)


def test_config_round_trips_through_yaml(pass_name: str) -> None:
    config = make(pass_name).config
    again = type(config).model_validate(yaml.safe_load(yaml.safe_dump(dump_config(config))))
    assert again == config


def subject(pass_name: str, trained_tiny_cnn, tiny):
    if pass_name in SUBJECTS:
        torch.manual_seed(0)
        return SUBJECTS[pass_name]()
    return trained_tiny_cnn, tiny


def test_apply_is_deterministic_and_keeps_output_shape(
    pass_name: str, trained_tiny_cnn, tiny
) -> None:
    original, tiny = subject(pass_name, trained_tiny_cnn, tiny)
    x = tiny.example_inputs(8)
    first = tensor_model(pass_name, apply(pass_name, original, tiny))
    second = tensor_model(pass_name, apply(pass_name, original, tiny))
    original = tensor_model(pass_name, original)
    with torch.no_grad():
        out_first, out_second = first.eval()(*x), second.eval()(*x)
        assert out_first.shape == original(*x).shape
    torch.testing.assert_close(out_first, out_second)


def test_result_exports_and_onnx_runtime_matches_torch(
    pass_name: str, trained_tiny_cnn, tiny, tmp_path: Path
) -> None:
    original, tiny = subject(pass_name, trained_tiny_cnn, tiny)
    model = tensor_model(pass_name, apply(pass_name, original, tiny))
    if pass_name in NOT_EXPORTABLE:
        with pytest.raises(NotExportableError, match="no ONNX form"):
            export_onnx(model, tiny.example_inputs(2), tmp_path / "m.onnx")
        assert not (tmp_path / "m.onnx").exists()
        return
    result = export_onnx(
        model, tiny.example_inputs(2), tmp_path / "m.onnx", dynamic_sequence=tiny.dynamic_sequence
    )
    loader = tiny.loader("eval", batch_size=64)
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
