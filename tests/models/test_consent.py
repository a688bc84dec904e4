"""Loading runs no code the user did not name: a factory recorded in a compresskit file
runs only with --arch or --trust-factory; pickles and a model directory's code never
without consent. The checkpoint's factory writes a marker file when imported or called."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from compresskit.errors import CompressKitError
from compresskit.models.checkpoint import save_model
from compresskit.models.loading import build_arch, load_model
from compresskit.testing import TinyCNN

FACTORY = """
from pathlib import Path
Path(__file__).with_name("imported.marker").write_text("x")
from compresskit.testing import TinyCNN

def build():
    Path(__file__).with_name("called.marker").write_text("x")
    return TinyCNN()
"""


def _saved_with_factory(tmp_path: Path) -> tuple[Path, str]:
    module = tmp_path / "stranger.py"
    module.write_text(FACTORY)
    factory = f"{module}:build"
    path = tmp_path / "model.pt"
    torch.manual_seed(0)
    save_model(TinyCNN(), path, source={"kind": "arch", "factory": factory})
    return path, factory


def test_a_recorded_factory_does_not_run_without_consent(tmp_path: Path) -> None:
    path, factory = _saved_with_factory(tmp_path)
    with pytest.raises(CompressKitError) as caught:
        load_model(path)
    message = str(caught.value)
    assert factory in message and "--trust-factory" in message and "--arch" in message
    assert "\n" not in message
    assert not list(tmp_path.glob("*.marker"))


@pytest.mark.parametrize("how", ["trust_factory", "arch"])
def test_consent_by_flag_or_by_naming_the_factory(tmp_path: Path, how: str) -> None:
    path, factory = _saved_with_factory(tmp_path)
    if how == "trust_factory":
        loaded = load_model(path, trust_factory=True)
    else:
        loaded = load_model(path, arch=factory)
    x = torch.randn(2, 1, 8, 8)
    torch.manual_seed(0)
    torch.testing.assert_close(loaded.model(x), TinyCNN().eval()(x))
    assert (tmp_path / "called.marker").exists()


def test_compresskit_module_classes_need_no_consent(tmp_path: Path) -> None:
    """A run's own saved candidates (built from compresskit's classes) reload as they are."""
    path = tmp_path / "own.pt"
    save_model(TinyCNN(), path, source={"kind": "arch", "factory": "compresskit.testing:TinyCNN"})
    assert isinstance(load_model(path).model, TinyCNN)
    # a function in compresskit is code too: only module classes pass without consent
    path2 = tmp_path / "fn.pt"
    save_model(TinyCNN(), path2, source={"kind": "arch", "factory": "compresskit.cli.main:main"})
    with pytest.raises(CompressKitError, match="--trust-factory"):
        load_model(path2)


def test_hugging_face_pickles_and_remote_code_are_refused(tmp_path: Path) -> None:
    import json
    import os
    import pickle

    class Marker:
        def __reduce__(self):  # noqa: ANN204
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    directory = tmp_path / "hf"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (directory / "pytorch_model.bin").write_bytes(pickle.dumps({"w": Marker()}, protocol=2))
    with pytest.raises(CompressKitError, match="pickled Python objects.*safetensors"):
        load_model(directory, trust_pickle=True)
    assert not (tmp_path / "pwned").exists()


def test_arch_module_beside_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--arch mynets:build` with mynets.py in the working directory, as `python -m` would."""
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "mynets_cwd", raising=False)
    (tmp_path / "mynets_cwd.py").write_text(
        "from compresskit.testing import TinyCNN\n\ndef build():\n    return TinyCNN(width=6)\n"
    )
    assert isinstance(build_arch("mynets_cwd:build"), TinyCNN)
    monkeypatch.delitem(sys.modules, "mynets_cwd", raising=False)


def test_integer_weights_for_a_float_model_are_refused(tmp_path: Path) -> None:
    state = {k: (v * 1e9).long() for k, v in TinyCNN().state_dict().items()}
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(CompressKitError, match="int64 in the file but torch.float32"):
        load_model(tmp_path / "w.pt", arch="compresskit.testing.tiny:TinyCNN")
