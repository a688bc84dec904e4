from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch

from compresskit.context import Context
from compresskit.errors import CompressKitError
from compresskit.models.checkpoint import save_model
from compresskit.models.examples import EXAMPLES, _train_example
from compresskit.models.loading import load_model
from compresskit.passes.prune_channels import PruneChannels, PruneChannelsConfig
from compresskit.passes.quantize import Quantize, QuantizeConfig
from compresskit.testing import TinyCNN

ARCH = "compresskit.testing.tiny:TinyCNN"


def same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> None:
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x))


def test_state_dict_with_importable_factory(tmp_path: Path) -> None:
    model = TinyCNN()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    loaded = load_model(tmp_path / "w.pt", arch=ARCH)
    same_outputs(model, loaded.model)
    assert loaded.source == {"kind": "arch", "factory": ARCH}


def test_state_dict_with_factory_in_a_py_file(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text(
        "from compresskit.testing import TinyCNN\n\ndef build():\n    return TinyCNN(width=6)\n"
    )
    model = TinyCNN(width=6)
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "ckpt.pth")
    same_outputs(model, load_model(tmp_path / "ckpt.pth", arch=f"{tmp_path}/net.py:build").model)


def test_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = TinyCNN()
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    same_outputs(model, load_model(tmp_path / "w.safetensors", arch=ARCH).model)


def test_state_dict_without_arch_says_how(tmp_path: Path) -> None:
    torch.save(TinyCNN().state_dict(), tmp_path / "w.pt")
    with pytest.raises(CompressKitError, match="--arch MODULE:FACTORY"):
        load_model(tmp_path / "w.pt")


def test_arch_that_does_not_match_names_the_tensor(tmp_path: Path) -> None:
    torch.save(TinyCNN(width=6).state_dict(), tmp_path / "w.pt")
    with pytest.raises(CompressKitError, match=r"features.0.weight is \(6, 1, 3, 3\) in the file"):
        load_model(tmp_path / "w.pt", arch=ARCH)


def test_pickle_needs_trust(tmp_path: Path) -> None:
    model = TinyCNN()
    torch.save(model, tmp_path / "full.pt")
    with pytest.raises(CompressKitError, match="--trust-pickle"):
        load_model(tmp_path / "full.pt")
    same_outputs(model, load_model(tmp_path / "full.pt", trust_pickle=True).model)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.pt", None, "no such file"),
        ("garbage.pt", b"not a torch file", "not a readable torch file"),
        ("weights.txt", b"", "unknown file type"),
        ("bad.safetensors", b"xx", "not a readable safetensors file"),
    ],
)
def test_unreadable_checkpoints(
    tmp_path: Path, name: str, content: bytes | None, message: str
) -> None:
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(CompressKitError, match=message):
        load_model(tmp_path / name, arch=ARCH)


def test_unknown_arch_module() -> None:
    from compresskit.models.loading import build_arch

    with pytest.raises(CompressKitError, match="cannot import"):
        build_arch("no_such_module_xyz:build")


def test_pruned_and_quantized_models_reload_with_new_shapes(
    tiny, trained_tiny_cnn, tmp_path: Path
) -> None:
    ctx = Context(data=tiny, teacher=None, example_inputs=tiny.example_inputs(2))
    model = copy.deepcopy(trained_tiny_cnn)
    model = PruneChannels(PruneChannelsConfig(ratio=0.5)).apply(model, ctx)
    model = Quantize(QuantizeConfig()).apply(model, ctx)
    save_model(model, tmp_path / "c.pt", source={"kind": "arch", "factory": ARCH})
    raw = torch.load(tmp_path / "c.pt", weights_only=True)  # plain data, no pickled code
    assert raw["format"] == "compresskit-model"
    reloaded = load_model(tmp_path / "c.pt").model
    assert reloaded.features[0].out_channels == model.features[0].out_channels
    same_outputs(model, reloaded)


def test_huggingface_directory(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    model = transformers.BertModel(config).eval()
    model.save_pretrained(tmp_path / "bert")
    loaded = load_model(tmp_path / "bert")
    assert loaded.source["kind"] == "hf" and loaded.source["task"] == "embedding"
    ids, mask = torch.randint(0, 50, (2, 5)), torch.ones(2, 5, dtype=torch.long)
    with torch.no_grad():  # a bare encoder is a sentence embedder: mean-pooled states
        torch.testing.assert_close(model(ids).last_hidden_state.mean(1), loaded.model(ids, mask))
    save_model(loaded.model, tmp_path / "bert.pt", source=loaded.source)
    with torch.no_grad():
        again = load_model(tmp_path / "bert.pt").model(ids, mask)
    torch.testing.assert_close(again, model(ids).last_hidden_state.mean(1))


def test_directory_without_config(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompressKitError, match="without config.json"):
        load_model(tmp_path / "empty")


def test_unknown_example() -> None:
    with pytest.raises(CompressKitError, match="example:digits-cnn"):
        load_model("example:nope")


def test_example_trains_to_the_same_weights_whatever_the_random_state() -> None:
    """A first use anywhere (CI, a user's machine) gets the example the README describes."""
    example = dataclasses.replace(EXAMPLES["digits-cnn"], epochs=1)
    trained = []
    for seed in (1, 2):
        torch.manual_seed(seed)  # what came before in the process must not matter
        trained.append(_train_example(example).state_dict())
    for name, value in trained[0].items():
        torch.testing.assert_close(value, trained[1][name], msg=name)
