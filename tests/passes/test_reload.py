"""Every pass's output, saved with save_model, reloads in a fresh Python process and
computes what the model computed before it was saved.

A fresh process matters: the registry of module kinds must not depend on what this test
process happened to import earlier (a compressed int8 model once failed to reload in
``compresskit export`` for exactly that reason)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from contract import contract_classes

from compresskit.models.causal_lm import save_causal_lm
from compresskit.models.checkpoint import save_model
from compresskit.testing import TinyCNN, tiny_data
from compresskit.testing.tiny_lm import tiny_tokenizer
from compresskit.training.loop import TrainConfig, train

# The architecture factory each tiny subject is rebuilt from.
FACTORIES = {
    "TinyCNN": "compresskit.testing:TinyCNN",
    "TinyBertClassifier": "compresskit.testing:TinyBertClassifier",
    "TinyTransformer": "compresskit.testing:TinyTransformer",
}
# bitsandbytes layers keep packed weights whose quantization state only bitsandbytes can
# rebuild; restoring them is refused in one line, naming what to do instead.
REFUSED = {"weight_only"}

RELOAD = """
import sys
import torch
from compresskit.errors import CompressKitError
from compresskit.models.loading import load_model

model_path, inputs_path, out_path, threads = sys.argv[1:]
torch.set_num_threads(int(threads))
already = sorted(m for m in sys.modules if m.startswith("compresskit.quantization"))
assert not already, already  # nothing registered kinds before the load
try:
    if model_path.endswith(".pt"):
        model = load_model(model_path).model
    else:  # a causal LM, saved as a Hugging Face directory
        from compresskit.models.causal_lm import load_causal_lm

        model = load_causal_lm(model_path).model
except CompressKitError as error:
    print(error)
    sys.exit(3)
with torch.no_grad():
    out = model(*torch.load(inputs_path))
torch.save(getattr(out, "logits", out), out_path)
"""


@pytest.fixture(scope="module")
def trained_cnn():
    """The conftest's trained TinyCNN, trained once for all passes here."""
    data = tiny_data()
    torch.manual_seed(0)
    model = TinyCNN()
    train(model, data, TrainConfig(epochs=4, lr=1e-2, batch_size=32))
    return model.eval(), data


def reload_in_fresh_process(model_path: Path, inputs: tuple[torch.Tensor, ...], tmp_path: Path):
    torch.save(inputs, tmp_path / "inputs.pt")
    out = tmp_path / "out.pt"
    args = [str(model_path), str(tmp_path / "inputs.pt"), str(out), str(torch.get_num_threads())]
    done = subprocess.run(
        [sys.executable, "-c", RELOAD, *args], capture_output=True, text=True, timeout=120
    )
    return done, (torch.load(out) if done.returncode == 0 else None)


CONTRACTS = contract_classes()


@pytest.mark.parametrize("pass_name", sorted(CONTRACTS))
def test_pass_output_reloads_in_a_fresh_process(
    pass_name: str, trained_cnn, tmp_path: Path
) -> None:
    contract = CONTRACTS[pass_name]()
    torch.manual_seed(0)
    original, data = contract.subject(*trained_cnn)
    model = contract.apply(original, data).eval()
    inputs = data.example_inputs(16)
    if contract.language_model:
        path = save_causal_lm(model, tiny_tokenizer(), tmp_path / "hf")
    else:
        path = tmp_path / "model.pt"
        factory = FACTORIES[type(original).__name__]
        save_model(model, path, source={"kind": "arch", "factory": factory})
    with torch.no_grad():
        expected = contract.tensors(model)(*inputs)
    done, reloaded = reload_in_fresh_process(path, inputs, tmp_path)
    if pass_name in REFUSED:
        assert done.returncode == 3, done.stderr[-2000:]
        message = done.stdout.strip()
        assert "\n" not in message and "bitsandbytes" in message and "weight_only" in message
        return
    assert done.returncode == 0, done.stderr[-2000:]
    # Same weights, same kernels, same thread count: the same numbers.
    torch.testing.assert_close(reloaded, expected, rtol=0, atol=0)
