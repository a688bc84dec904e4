"""Checkpoints, compresskit's saved models (factories run only with consent), Hugging Face
directories and --arch factories."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from corpus_kit import ARCH, BASE_POLICY, Case, Kit, Marker, fifo, mkdir, torch_bytes

# -- checkpoints ---------------------------------------------------------------------------


def _tiny_state(**changes: Any) -> dict[str, torch.Tensor]:
    from compresskit.testing import TinyCNN

    torch.manual_seed(0)
    state = TinyCNN().state_dict()
    for key, value in changes.items():
        state[key.replace("__", ".")] = value
    return state


def checkpoint_cases() -> Iterator[Case]:
    def file_case(case_id: str, name: str, content: Callable[[Kit], bytes], *expect: str) -> Case:
        def build(kit: Kit) -> list[str]:
            return kit.compress(weights=kit.file(name, content(kit)))

        return Case(case_id, build, expect, markers=("pwned",))

    real = torch_bytes(_tiny_state())
    yield file_case("ckpt-zero-byte", "w0.pt", lambda kit: b"", "w0.pt", "torch file")
    yield file_case("ckpt-truncated-zip", "wt.pt", lambda kit: real[: len(real) // 2], "wt.pt")
    yield file_case("ckpt-truncated-tail", "wt2.pt", lambda kit: real[:-20], "wt2.pt")
    rng = np.random.default_rng(0)
    yield file_case(
        "ckpt-random-bytes", "wr.pt", lambda kit: rng.bytes(4096), "wr.pt", "torch file"
    )
    yield file_case(
        "ckpt-random-after-proto",
        "wp.pt",
        lambda kit: b"\x80\x04" + rng.bytes(4096),
        "wp.pt",
        "not a readable torch file",
    )
    yield file_case("ckpt-text", "wx.pt", lambda kit: b"hello, world\n" * 10, "torch file")
    yield file_case("ckpt-zip-not-torch", "wz.pt", lambda kit: _plain_zip(), "wz.pt")
    yield file_case(
        "ckpt-malicious-pickle",
        "evil.pt",
        lambda kit: pickle.dumps(Marker(str(kit.dir / "pwned")), protocol=2),
        "--trust-pickle",
        "system",
    )
    yield file_case(
        "ckpt-malicious-torch-save",
        "evil2.pt",
        lambda kit: torch_bytes({"weights": Marker(str(kit.dir / "pwned"))}),
        "--trust-pickle",
    )
    yield file_case(
        "ckpt-full-model-pickle",
        "full.pt",
        lambda kit: _full_model_bytes(),
        "--trust-pickle",
    )
    for name, state, expect in [
        ("wrong-shape", _tiny_state(features__0__weight=torch.zeros(6, 1, 3, 3)), "features.0"),
        ("wrong-dtype-int", {k: v.long() for k, v in _tiny_state().items()}, "int64"),
        ("wrong-dtype-bool", {k: v.bool() for k, v in _tiny_state().items()}, "bool"),
        (
            "nan-weights",
            _tiny_state(features__0__weight=torch.full((8, 1, 3, 3), torch.nan)),
            "NaN",
        ),  # noqa: E501
        ("inf-weights", _tiny_state(head__bias=torch.full((4,), torch.inf)), "infinite"),  # noqa: E501
        ("missing-key", {k: v for k, v in list(_tiny_state().items())[1:]}, "missing"),
        ("extra-key", {**_tiny_state(), "extra.weight": torch.zeros(1)}, "unexpected"),
        ("empty-dict", {}, "state dict"),
        ("a-list", [torch.zeros(1)], "list"),
        ("a-tensor", torch.zeros(3), "Tensor"),
        ("nested-junk", {"state_dict": {"a": 1}}, "state dict"),
        ("string-values", {"a": "b"}, "state dict"),
    ]:
        payload = torch_bytes(state)
        yield file_case(f"ckpt-{name}", f"{name}.pt", lambda kit, p=payload: p, expect)
    yield file_case("ckpt-bad-safetensors", "w.safetensors", lambda kit: b"xx" * 10, "safetensors")
    yield file_case("ckpt-empty-safetensors", "e.safetensors", lambda kit: b"", "safetensors")
    yield file_case("ckpt-unknown-suffix", "w.txt", lambda kit: real, "file type")
    yield Case(
        "ckpt-missing",
        lambda kit: kit.compress(weights=kit.dir / "absent.pt"),
        ("no such file",),
    )
    yield Case(
        "ckpt-directory-named-pt",
        lambda kit: kit.compress(weights=mkdir(kit.dir / "dir.pt")),
        ("config.json",),
    )
    yield Case(
        "ckpt-fifo",
        lambda kit: kit.compress(weights=fifo(kit.dir / "fifo.pt")),
        ("not a regular file",),
    )
    yield from _saved_model_cases()
    yield from _hf_cases()
    yield from _arch_cases()


def _plain_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("readme.txt", "not a model")
    return buffer.getvalue()


def _full_model_bytes() -> bytes:
    from compresskit.testing import TinyCNN

    return torch_bytes(TinyCNN())


FACTORY_SOURCE = """
from pathlib import Path
Path({marker!r}).write_text("imported")
from compresskit.testing import TinyCNN

def build():
    Path({marker!r}).write_text("called")
    return TinyCNN()
"""


def _saved_model_cases() -> Iterator[Case]:
    """compresskit's own files: a recorded factory runs only with consent."""

    def saved(kit: Kit, source: Any, name: str = "saved.pt") -> Path:
        from compresskit.models.checkpoint import save_model
        from compresskit.testing import TinyCNN

        path = kit.dir / name
        save_model(TinyCNN(), path, source={"kind": "arch", "factory": ARCH})
        payload = torch.load(path, weights_only=True)
        payload["source"] = source
        path.write_bytes(torch_bytes(payload))
        return path

    def recorded_factory(kit: Kit) -> list[str]:
        module = kit.file("evil_factory.py", FACTORY_SOURCE.format(marker=str(kit.dir / "pwned")))
        path = saved(kit, {"kind": "arch", "factory": f"{module}:build"})
        return ["compress", str(path), "--data", str(kit.data), "--policy", str(kit.policy)]

    def recorded_module(kit: Kit) -> list[str]:
        kit.file("evil_mod.py", FACTORY_SOURCE.format(marker=str(kit.dir / "pwned")))
        path = saved(kit, {"kind": "arch", "factory": "evil_mod:build"})
        return ["export", str(path), "--data", str(kit.data), "--out", str(kit.dir / "m.onnx")]

    def recorded_in_bench(kit: Kit) -> list[str]:
        module = kit.file("evil_factory.py", FACTORY_SOURCE.format(marker=str(kit.dir / "pwned")))
        path = saved(kit, {"kind": "arch", "factory": f"{module}:build"})
        return ["bench", str(path), "--input-shape", "1,8,8", "--seconds", "0.05"]

    def recorded_teacher(kit: Kit) -> list[str]:
        module = kit.file("evil_factory.py", FACTORY_SOURCE.format(marker=str(kit.dir / "pwned")))
        teacher = saved(kit, {"kind": "arch", "factory": f"{module}:build"}, "teacher.pt")
        policy = {**BASE_POLICY, "teacher": str(teacher)}
        path = kit.file("teacher-policy.yaml", yaml.safe_dump(policy))
        return kit.with_option(kit.compress(), "--policy", str(path))

    consent = ("--trust-factory", "--arch", "evil_")
    yield Case("saved-recorded-factory-file", recorded_factory, consent, markers=("pwned",))
    yield Case("saved-recorded-factory-module", recorded_module, consent, markers=("pwned",))
    yield Case("saved-recorded-factory-bench", recorded_in_bench, consent, markers=("pwned",))
    yield Case("saved-recorded-factory-teacher", recorded_teacher, consent, markers=("pwned",))
    for name, source, expect in [
        ("no-source", None, "source"),
        ("source-a-list", [1, 2], "source"),
        ("unknown-kind", {"kind": "martian"}, "source"),
        ("unknown-example", {"kind": "example", "name": "nope"}, "source"),
        ("factory-not-a-string", {"kind": "arch", "factory": 5}, "factory"),
        ("pickle-kind", {"kind": "pickle"}, "onnx"),
        ("hf-without-config", {"kind": "hf"}, "source"),
    ]:

        def build(kit: Kit, source: Any = source) -> list[str]:
            path = saved(kit, source)
            return ["export", str(path), "--data", str(kit.data), "--out", str(kit.dir / "m.onnx")]

        yield Case(f"saved-{name}", build, (expect,))

    def bad_structure(kit: Kit) -> list[str]:
        path = saved(kit, {"kind": "arch", "factory": ARCH})
        payload = torch.load(path, weights_only=True)
        payload["structure"] = {"features.0": {"class": "os.system", "attrs": {}}}
        path.write_bytes(torch_bytes(payload))
        return ["export", str(path), "--data", str(kit.data), "--out", str(kit.dir / "m.onnx")]

    yield Case("saved-structure-names-os-system", bad_structure, ("os.system",), markers=("pwned",))


def _hf_cases() -> Iterator[Case]:
    def hf_dir(files: dict[str, bytes | str]) -> Callable[[Kit], list[str]]:
        def build(kit: Kit) -> list[str]:
            directory = mkdir(kit.dir / "hf")
            for name, content in files.items():
                kit.file(f"hf/{name}", content)
            return [
                "export",
                str(directory),
                "--input-shape",
                "8",
                "--out",
                str(kit.dir / "m.onnx"),
            ]

        return build

    bert = json.dumps({"model_type": "bert", "hidden_size": 8, "num_hidden_layers": 1})
    remote = json.dumps(
        {"model_type": "evil", "auto_map": {"AutoModel": "modeling_evil.EvilModel"}}
    )
    yield Case("hf-empty-dir", hf_dir({}), ("config.json",))
    yield Case("hf-only-config", hf_dir({"config.json": bert}), ("no weights",))
    yield Case("hf-bad-json", hf_dir({"config.json": "{not json"}), ("JSON",))
    yield Case("hf-json-list", hf_dir({"config.json": "[1, 2]"}), ("JSON object",))
    yield Case("hf-binary-config", hf_dir({"config.json": b"\xff\x00\xfe"}), ("JSON",))
    yield Case(
        "hf-pickled-bin",
        lambda kit: hf_dir(
            {
                "config.json": bert,
                "pytorch_model.bin": torch_bytes({"w": Marker(str(kit.dir / "pwned"))}),
            }
        )(kit),
        ("pickled Python objects", "safetensors"),
        markers=("pwned",),
    )
    yield Case(
        "hf-junk-bin",
        hf_dir({"config.json": bert, "pytorch_model.bin": b"junk" * 10}),
        ("pytorch_model.bin",),
    )
    yield Case(
        "hf-remote-code",
        lambda kit: hf_dir(
            {
                "config.json": remote,
                "model.safetensors": b"",
                "modeling_evil.py": f"open({str(kit.dir / 'pwned')!r}, 'w')\n",
            }
        )(kit),
        ("transformers",),
        markers=("pwned",),
    )


ARCH_MODULE = """
import sys
from compresskit.testing import TinyCNN

NOT_CALLABLE = 5

def raises():
    raise RuntimeError("boom in the factory")

def needs_args(width, depth):
    return TinyCNN()

def exits():
    sys.exit(0)

def returns_dict():
    return {{"model": 1}}

def keyboard():
    raise ValueError("bad value")
"""


def _arch_cases() -> Iterator[Case]:
    def arch_case(case_id: str, spec: Callable[[Kit], str], *expect: str) -> Case:
        def build(kit: Kit) -> list[str]:
            kit.file("archs.py", ARCH_MODULE.format())
            return kit.with_option(kit.compress(), "--arch", spec(kit))

        return Case(case_id, build, expect)

    yield arch_case("arch-no-module", lambda kit: "no_such_mod_xyz:build", "cannot import")
    yield arch_case("arch-no-colon", lambda kit: "compresskit.testing.tiny.TinyCNN", "MODULE:NAME")
    yield arch_case("arch-empty", lambda kit: ":", "MODULE:NAME")
    yield arch_case("arch-no-attribute", lambda kit: f"{kit.dir}/archs.py:nope", "nope")
    yield arch_case(
        "arch-not-callable", lambda kit: f"{kit.dir}/archs.py:NOT_CALLABLE", "not a function"
    )  # noqa: E501
    yield arch_case("arch-raises", lambda kit: f"{kit.dir}/archs.py:raises", "boom in the factory")
    yield arch_case("arch-needs-args", lambda kit: f"{kit.dir}/archs.py:needs_args", "no arguments")
    yield arch_case("arch-sys-exit", lambda kit: f"{kit.dir}/archs.py:exits", "SystemExit")
    yield arch_case("arch-returns-dict", lambda kit: f"{kit.dir}/archs.py:returns_dict", "dict")
    yield arch_case("arch-missing-file", lambda kit: f"{kit.dir}/absent.py:build", "no such file")
    yield arch_case(
        "arch-wrong-model", lambda kit: "compresskit.testing.tiny:TinyResidualCNN", "does not match"
    )  # noqa: E501

    def source_case(case_id: str, source: str, *expect: str) -> Case:
        def build(kit: Kit) -> list[str]:
            kit.file("broken.py", source)
            return kit.with_option(kit.compress(), "--arch", f"{kit.dir}/broken.py:build")

        return Case(case_id, build, expect)

    yield source_case("arch-syntax-error", "def build(:\n    pass\n", "syntax error", "line 1")
    yield source_case("arch-import-raises", "raise RuntimeError('at import')\n", "at import")
    yield source_case("arch-import-exits", "import sys\nsys.exit(3)\n", "SystemExit")
    yield source_case("arch-import-missing-dep", "import no_such_dep_xyz\n", "no_such_dep_xyz")
