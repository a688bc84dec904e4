"""Hugging Face model directories as users bring them: loaded with their head, wrapped,
exported, saved back as directories that ``from_pretrained`` reloads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from compresskit.data import load_data
from compresskit.errors import CompressKitError
from compresskit.export.onnx import export_onnx
from compresskit.export.verify import ort_session, run_session
from compresskit.models.checkpoint import save_model
from compresskit.models.loading import load_model

transformers = pytest.importorskip("transformers")

from compresskit.testing.hf import (  # noqa: E402
    save_tiny_text_model,
    save_tiny_vit,
    write_image_folder,
    write_text_csv,
)

TEXT = ["bert", "distilbert", "roberta", "minilm", "gpt2"]


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_text_csv(tmp_path_factory.mktemp("data") / "reviews.csv", count=60)


def _reference(directory: Path, ids: torch.Tensor, mask: torch.Tensor, task: str) -> torch.Tensor:
    """What the model computes through transformers' own code (its 2-D mask)."""
    config = transformers.AutoConfig.from_pretrained(directory)
    cls = getattr(transformers, config.architectures[0])
    model = cls.from_pretrained(directory, attn_implementation="eager").eval()
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = 3  # the tiny tokenizer pads GPT-2 with [SEP]
    with torch.no_grad():
        raw = model(input_ids=ids, attention_mask=mask)
    if task == "classification":
        return raw.logits
    weights = mask.unsqueeze(-1).float()
    return (raw.last_hidden_state * weights).sum(1) / weights.sum(1)


@pytest.mark.parametrize("kind", TEXT)
def test_text_model_loads_with_its_head_and_exports(
    kind: str, tmp_path: Path, csv_file: Path
) -> None:
    directory = save_tiny_text_model(kind, tmp_path / kind)
    loaded = load_model(directory)
    task = "embedding" if kind == "minilm" else "classification"
    assert loaded.source["task"] == task
    assert loaded.preprocessing is not None and loaded.preprocessing.tokenizer is not None
    bundle = load_data(str(csv_file), preprocessing=loaded.preprocessing)
    ids, mask = bundle.example_inputs(batch_size=4)
    assert bool((mask == 0).any()), "the example batch should hold padding"
    with torch.no_grad():
        ours = loaded.model(ids, mask)
    # The additive mask the wrapper builds computes what transformers' own mask does.
    torch.testing.assert_close(ours, _reference(directory, ids, mask, task), atol=1e-5, rtol=1e-4)
    if kind == "gpt2":  # Conv1D layers are Linear inside compresskit
        assert loaded.model.conv1d and not any(
            type(m).__name__ == "Conv1D" for m in loaded.model.modules()
        )
    exported = export_onnx(
        loaded.model,
        (ids, mask),
        tmp_path / "m.onnx",
        exporter="legacy",
        dynamic_sequence=True,
        input_names=loaded.model.input_names,
    )
    session = ort_session(exported.path)
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    np.testing.assert_allclose(run_session(session, [ids, mask]), ours.numpy(), atol=1e-4)


def test_vit_loads_with_its_processor(tmp_path: Path) -> None:
    directory = save_tiny_vit(tmp_path / "vit")
    folder = write_image_folder(tmp_path / "images", per_class=4)
    loaded = load_model(directory)
    bundle = load_data(str(folder), preprocessing=loaded.preprocessing)
    (pixels,) = bundle.example_inputs(batch_size=2)
    assert tuple(pixels.shape) == (2, 3, 16, 16)  # resized by the processor from 20x20
    assert bundle.labels == ("circle", "square", "stripes")
    bundle.check_model(loaded.model)


def test_saved_model_restores_the_wrapper(tmp_path: Path, csv_file: Path) -> None:
    directory = save_tiny_text_model("gpt2", tmp_path / "gpt2")
    loaded = load_model(directory)
    save_model(loaded.model, tmp_path / "m.pt", source=loaded.source)
    restored = load_model(tmp_path / "m.pt").model
    ids = torch.tensor([[2, 6, 7, 8, 3, 3], [2, 9, 10, 11, 12, 3]])
    mask = (ids != 3).long()
    with torch.no_grad():
        torch.testing.assert_close(restored(ids, mask), loaded.model(ids, mask))


def test_pruned_model_saves_as_a_directory_from_pretrained_reloads(tmp_path: Path) -> None:
    from compresskit.models.hf_save import save_hf_directory
    from compresskit.pruning.heads import attention_blocks, keep_heads

    directory = save_tiny_text_model("distilbert", tmp_path / "d")
    model = load_model(directory).model
    for layer in model.model.distilbert.transformer.layer:  # FFN 64 -> 16, every layer
        keep = torch.arange(16)
        layer.ffn.lin1.weight = torch.nn.Parameter(layer.ffn.lin1.weight[keep].detach())
        layer.ffn.lin1.bias = torch.nn.Parameter(layer.ffn.lin1.bias[keep].detach())
        layer.ffn.lin1.out_features = 16
        layer.ffn.lin2.weight = torch.nn.Parameter(layer.ffn.lin2.weight[:, keep].detach())
        layer.ffn.lin2.in_features = 16
    assert save_hf_directory(model, tmp_path / "out") is None
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["hidden_dim"] == 16
    assert (tmp_path / "out" / "model.safetensors").is_file()
    reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    encoded = tokenizer(["great film", "the dull plot"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(encoded["input_ids"], encoded["attention_mask"])
        got = reloaded(**encoded).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    # Heads removed in one layer only: no config field says so, and the reason is given.
    block = attention_blocks(model)[0]
    keep_heads(model, block, [0, 1])
    reason = save_hf_directory(model, tmp_path / "heads")
    assert reason is not None and "q_lin.weight" in reason and not (tmp_path / "heads").exists()


def test_refusals_name_the_way_around(tmp_path: Path) -> None:
    config = transformers.BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    transformers.BertForMaskedLM(config).save_pretrained(tmp_path / "mlm")
    with pytest.raises(CompressKitError, match="BertForMaskedLM has no head .*--task embedding"):
        load_model(tmp_path / "mlm")
    assert load_model(tmp_path / "mlm", task="embedding").source["task"] == "embedding"
    custom = json.loads((tmp_path / "mlm" / "config.json").read_text())
    custom["auto_map"] = {"AutoModel": "modeling_mine.MyModel"}
    (tmp_path / "mlm" / "config.json").write_text(json.dumps(custom))
    with pytest.raises(CompressKitError, match="never runs code from a model directory"):
        load_model(tmp_path / "mlm")


def test_a_bare_encoder_classifies_through_a_fitted_head(tmp_path: Path, csv_file: Path) -> None:
    from compresskit.models.hf_head import fit_head
    from compresskit.models.hf_save import save_hf_directory

    directory = save_tiny_text_model("minilm", tmp_path / "minilm")
    loaded = load_model(directory, task="classification")
    assert loaded.model.needs_head
    bundle = load_data(str(csv_file), preprocessing=loaded.preprocessing)
    note = fit_head(loaded.model, bundle, loaded.source)
    assert "3 classes" in note and not loaded.model.needs_head
    bundle.check_model(loaded.model)
    ids, mask, y = next(iter(bundle.loader("train", batch_size=256)))
    with torch.no_grad():
        logits = loaded.model(ids, mask)
    accuracy = float((logits.argmax(-1) == y).float().mean())
    assert logits.shape == (len(y), 3) and accuracy > 0.5  # logistic regression on 3 classes
    save_model(loaded.model, tmp_path / "m.pt", source=loaded.source)
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "m.pt").model(ids, mask), logits)
    assert "fitted by compresskit" in (save_hf_directory(loaded.model, tmp_path / "hf") or "")
