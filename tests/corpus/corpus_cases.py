"""The corpus of bad inputs: generated cases for every command, each one a command line
(with the files it needs) that must end in exit 2 with one line naming what is wrong.

A case is ``Case(id, build, expect)``: ``build(kit)`` writes the case's files into
``kit.dir`` and returns the arguments; ``expect`` are fragments the message must contain
(the field, the value or the fix). ``markers`` are files that must not exist afterwards
(code that a bad input would run if it were trusted writes them).
"""

from __future__ import annotations

import copy
import io
import json
import os
import pickle
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

ARCH = "compresskit.testing.tiny:TinyCNN"

BASE_POLICY: dict[str, Any] = {
    "version": 1,
    "name": "corpus",
    "description": "bad-input corpus",
    "teacher": "input",
    "nodes": [
        {"id": "prune", "pass": "prune_channels", "config": {"ratio": 0.5}},
        {
            "id": "ft",
            "pass": "distill",
            "after": "prune",
            "config": {"alpha": 0.5, "train": {"epochs": 1, "lr": 0.001, "batch_size": 32}},
        },
        {"id": "int8", "pass": "quantize", "after": "ft"},
    ],
    "targets": ["cpu-ort"],
    "batch_sizes": [1, 8],
    "budget": {"max_accuracy_drop": 0.02},
}


@dataclass
class Kit:
    """The valid inputs each case starts from, and the directory it writes into."""

    dir: Path
    weights: Path
    data: Path
    policy: Path

    def file(self, name: str, content: bytes | str) -> Path:
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content)
        else:
            path.write_bytes(content)
        return path

    def compress(self, *extra: str, weights: Path | None = None) -> list[str]:
        """A compress command that would run, but for what ``extra`` breaks."""
        args = ["compress", str(weights or self.weights), "--arch", ARCH]
        args += ["--data", str(self.data), "--policy", str(self.policy)]
        args += ["--out", str(self.dir / "out"), "--latency-seconds", "0.05"]
        return args + list(extra)

    def with_option(self, args: list[str], option: str, value: str) -> list[str]:
        """``args`` with ``option``'s value replaced (or the option added)."""
        args = list(args)
        if option in args:
            args[args.index(option) + 1] = value
        else:
            args += [option, value]
        return args


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Kit], list[str]]
    expect: tuple[str, ...]
    markers: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


def make_kit(directory: Path) -> Kit:
    from compresskit.testing import TinyCNN, tiny_data

    bundle = tiny_data()
    x, y = bundle.train.tensors
    np.savez(directory / "data.npz", x=x.numpy()[:64], y=y.numpy()[:64])
    torch.manual_seed(0)
    torch.save(TinyCNN().state_dict(), directory / "w.pt")
    (directory / "policy.yaml").write_text(yaml.safe_dump(BASE_POLICY, sort_keys=False))
    return Kit(directory, directory / "w.pt", directory / "data.npz", directory / "policy.yaml")


# -- policies ------------------------------------------------------------------------------


def _set(policy: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    policy = copy.deepcopy(policy)
    target: Any = policy
    for key in path[:-1]:
        if isinstance(target, dict):
            target = target.setdefault(key, {})
        else:
            target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return policy


_DELETE = object()

# (path in the policy, bad values, fragment the message names)
POLICY_FIELDS: list[tuple[tuple[Any, ...], list[Any], str]] = [
    (("version",), [2, 0, 1.0, True, "1", None, [1], -1, 10**20], "version"),
    (
        ("name",),
        ["../../escaped", "/abs/run", "", "a/b", 5, None, "x" * 200, ".hidden", "a b"],
        "name",
    ),
    (("description",), [5, ["x"], {"a": 1}, "x" * 5000], "description"),
    (("teacher",), ["no-such-teacher.pt", 5, None, ["input"]], "teacher"),
    (("nodes",), [[], "prune", {}, [5], None, ["x"]], "nodes"),
    (("nodes", 0, "id"), ["baseline", "", 5, "a b", None, "-x", "x" * 80], "id"),
    (("nodes", 0, "pass"), ["no_such_pass", 5, None, ""], "pass"),
    (("nodes", 1, "after"), ["missing", 5, "", ["prune"]], "after"),
    (("nodes", 0, "config"), ["ratio", [0.5], 5], "config"),
    (("nodes", 0, "candidate"), ["yes", 1, None], "candidate"),
    (
        ("nodes", 0, "config", "ratio"),
        [2, -1, 0, 1, "half", True, None, 1e308, float("nan"), [0.5]],
        "ratio",
    ),
    (("nodes", 0, "config", "importance"), ["l7", 5, None], "importance"),
    (("nodes", 1, "config", "alpha"), [-0.5, 2, "half", True], "alpha"),
    (("nodes", 1, "config", "train", "epochs"), [10**18, 0, -1, "5", True, 1.5, None], "epochs"),
    (("nodes", 1, "config", "train", "lr"), [1e308, 0, -1, "fast", True, None], "lr"),
    (
        ("nodes", 1, "config", "train", "batch_size"),
        ["32", True, 0, 10**9, -3, 1.5, None],
        "batch_size",
    ),
    (("nodes", 1, "config", "train", "optimizer"), ["adam", 5], "optimizer"),
    (("nodes", 1, "config", "train", "weight_decay"), [-1, 1e308, "x"], "weight_decay"),
    (("targets",), [["no-such-target"], [], "cpu-ort", [5], None, ["x.yaml"]], "targets"),
    (("batch_sizes",), [["1"], [True], [0], [10**6], [], "1,32", [-1], [1.5]], "batch_sizes"),
    (("sequence_length",), [0, "x", 10**9, -5, True], "sequence_length"),
    (("budget",), ["tight", [1], 5], "budget"),
    (("budget", "max_accuracy_drop"), ["x", -1, 5, True, 1e308], "max_accuracy_drop"),
]

UNKNOWN_FIELDS: list[tuple[tuple[Any, ...], str]] = [
    (("nodez",), "nodez"),
    (("nodes", 0, "configg"), "configg"),
    (("nodes", 0, "config", "ratioo"), "ratioo"),
    (("nodes", 1, "config", "train", "epochz"), "epochz"),
    (("nodes", 1, "config", "lossez"), "lossez"),
    (("budget", "max_acc_drop"), "max_acc_drop"),
    (("nodes", 2, "config", "calibraton"), "calibraton"),
]


def _policy_case(case_id: str, policy: Any, expect: tuple[str, ...], via: str) -> Case:
    text = yaml.safe_dump(policy, sort_keys=False)

    def build(kit: Kit) -> list[str]:
        path = kit.file("bad.yaml", text)
        if via == "validate":
            return ["policies", "validate", str(path)]
        return kit.with_option(kit.compress(), "--policy", str(path))

    return Case(case_id, build, expect)


def policy_cases() -> Iterator[Case]:
    for path, values, fragment in POLICY_FIELDS:
        for index, value in enumerate(values):
            via = "compress" if index == 0 else "validate"
            case_id = "policy-" + ".".join(map(str, path)) + f"-{index}"
            yield _policy_case(case_id, _set(BASE_POLICY, path, value), (fragment,), via)
    for path, fragment in UNKNOWN_FIELDS:
        case_id = "policy-unknown-" + ".".join(map(str, path))
        yield _policy_case(case_id, _set(BASE_POLICY, path, 1), (fragment, "unknown"), "validate")
    for required in ("version", "name", "nodes"):
        policy = _set(BASE_POLICY, (required,), _DELETE)
        yield _policy_case(f"policy-missing-{required}", policy, (required,), "validate")
    for required in ("id", "pass"):
        policy = _set(BASE_POLICY, ("nodes", 0, required), _DELETE)
        yield _policy_case(f"policy-node-missing-{required}", policy, (required,), "validate")
    graph = {
        "duplicate-ids": [
            {"id": "a", "pass": "quantize"},
            {"id": "a", "pass": "quantize"},
        ],
        "cycle": [
            {"id": "a", "pass": "prune_channels", "after": "b"},
            {"id": "b", "pass": "prune_channels", "after": "a"},
        ],
        "self-loop": [{"id": "a", "pass": "prune_channels", "after": "a"}],
        "two-quantize": [
            {"id": "q1", "pass": "quantize"},
            {"id": "q2", "pass": "quantize", "after": "q1"},
        ],
        "prune-after-quantize": [
            {"id": "q", "pass": "quantize"},
            {"id": "p", "pass": "prune_channels", "after": "q"},
        ],
        "train-after-weight-only": [
            {"id": "w", "pass": "weight_only"},
            {"id": "d", "pass": "distill", "after": "w", "config": {"train": {"epochs": 1}}},
        ],
        "3000-node-chain": [{"id": "n0", "pass": "prune_channels", "config": {"ratio": 0.1}}]
        + [
            {"id": f"n{i}", "pass": "prune_channels", "after": f"n{i - 1}"}
            for i in range(1, 3000)
        ],
    }
    for name, nodes in graph.items():
        yield _policy_case(f"policy-graph-{name}", {**BASE_POLICY, "nodes": nodes}, (), "validate")
    for name, expect, content in yaml_texts():
        yield _raw_policy_case(f"policy-yaml-{name}", content, expect)
    yield Case(
        "policy-is-a-directory",
        lambda kit: ["policies", "validate", str(_mkdir(kit.dir / "pol.yaml"))],
        ("directory",),
    )
    yield Case(
        "policy-missing-file",
        lambda kit: ["policies", "validate", str(kit.dir / "nope.yaml")],
        ("no such file",),
    )
    yield Case("policy-builtin-unknown", lambda kit: ["policies", "show", "nope"], ("nope",))
    yield Case(
        "policy-fifo",
        lambda kit: ["policies", "validate", str(_fifo(kit.dir / "fifo.yaml"))],
        ("fifo.yaml",),
    )


def _raw_policy_case(case_id: str, content: bytes, expect: tuple[str, ...]) -> Case:
    def build(kit: Kit) -> list[str]:
        path = kit.file("bad.yaml", content)
        return ["policies", "validate", str(path)]

    return Case(case_id, build, expect, markers=("pwned",))


def yaml_texts() -> Iterator[tuple[str, tuple[str, ...], bytes]]:
    """(name, expected fragments, file content) of YAML that must not load."""
    good = yaml.safe_dump(BASE_POLICY, sort_keys=False)
    yield "python-apply", ("tag",), b"!!python/object/apply:os.system ['touch pwned']\n"
    yield "python-name", ("tag",), b"version: !!python/name:os.system\n"
    yield "python-object-new", ("tag",), (
        b"!!python/object/new:subprocess.Popen [['touch', 'pwned']]\n"
    )
    yield "nested-tag", ("tag",), good.replace(
        "ratio: 0.5", "ratio: !!python/object/apply:os.system ['touch pwned']"
    ).encode()
    bomb = "a: &a ['x','x','x','x','x','x','x','x','x']\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},"
        f"*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},"
        f"*{chr(97 + i)}]\n"
        for i in range(12)
    )
    yield "alias-bomb", ("aliases",), bomb.encode()
    yield "alias-bomb-in-name", ("aliases",), (
        bomb + "version: 1\nname: *m\nnodes: [{id: a, pass: quantize}]\n"
    ).encode()
    yield "nesting-40", ("nested",), ("x: " + "[" * 40 + "]" * 40 + "\n").encode()
    yield "nesting-5000", ("nested",), ("x: " + "[" * 5000 + "]" * 5000 + "\n").encode()
    yield "duplicate-key", ("twice",), good.replace("version: 1", "version: 1\nversion: 1").encode()
    yield "duplicate-nested-key", ("twice",), good.replace(
        "    ratio: 0.5", "    ratio: 0.5\n    ratio: 0.4"
    ).encode()
    yield "huge-file", ("kB",), (good + "#" + "x" * 2_000_000 + "\n").encode()
    yield "binary", ("binary",), b"\x00\x01\x02version: 1\x00" * 50
    yield "not-utf8", ("UTF-8",), b"version: 1\nname: \xff\xfe\xfa\n"
    yield "tab-indent", ("YAML",), b"version: 1\nnodes:\n\t- id: a\n"
    yield "unclosed", ("YAML",), b"version: 1\nnodes: [{id: a, pass: quantize\n"
    yield "empty", ("mapping",), b""
    yield "list-top", ("mapping",), b"- version: 1\n"
    yield "scalar-top", ("mapping",), b"just a string\n"
    yield "binary-tag", ("nodes",), b"version: 1\nname: x\nnodes: !!binary aGVsbG8=\n"
    yield "set-tag", ("nodes",), b"version: 1\nname: x\nnodes: !!set {a, b}\n"
    yield "timestamp-name", ("name",), b"version: 1\nname: 2001-12-14\nnodes: [{id: a, pass: quantize}]\n"  # noqa: E501


# -- checkpoints ---------------------------------------------------------------------------


class _Marker:
    """Unpickling this runs ``touch`` on the marker: what a malicious model file does."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.path}",))


def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


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

    real = _torch_bytes(_tiny_state())
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
        lambda kit: pickle.dumps(_Marker(str(kit.dir / "pwned")), protocol=2),
        "--trust-pickle",
        "system",
    )
    yield file_case(
        "ckpt-malicious-torch-save",
        "evil2.pt",
        lambda kit: _torch_bytes({"weights": _Marker(str(kit.dir / "pwned"))}),
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
        ("nan-weights", _tiny_state(features__0__weight=torch.full((8, 1, 3, 3), torch.nan)), "NaN"),  # noqa: E501
        ("inf-weights", _tiny_state(head__bias=torch.full((4,), torch.inf)), "infinite"),  # noqa: E501
        ("missing-key", {k: v for k, v in list(_tiny_state().items())[1:]}, "missing"),
        ("extra-key", {**_tiny_state(), "extra.weight": torch.zeros(1)}, "unexpected"),
        ("empty-dict", {}, "state dict"),
        ("a-list", [torch.zeros(1)], "list"),
        ("a-tensor", torch.zeros(3), "Tensor"),
        ("nested-junk", {"state_dict": {"a": 1}}, "state dict"),
        ("string-values", {"a": "b"}, "state dict"),
    ]:
        payload = _torch_bytes(state)
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
        lambda kit: kit.compress(weights=_mkdir(kit.dir / "dir.pt")),
        ("config.json",),
    )
    yield Case(
        "ckpt-fifo",
        lambda kit: kit.compress(weights=_fifo(kit.dir / "fifo.pt")),
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

    return _torch_bytes(TinyCNN())


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
        path.write_bytes(_torch_bytes(payload))
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
        path.write_bytes(_torch_bytes(payload))
        return ["export", str(path), "--data", str(kit.data), "--out", str(kit.dir / "m.onnx")]

    yield Case("saved-structure-names-os-system", bad_structure, ("os.system",), markers=("pwned",))


def _hf_cases() -> Iterator[Case]:
    def hf_dir(files: dict[str, bytes | str]) -> Callable[[Kit], list[str]]:
        def build(kit: Kit) -> list[str]:
            directory = _mkdir(kit.dir / "hf")
            for name, content in files.items():
                kit.file(f"hf/{name}", content)
            return ["export", str(directory), "--input-shape", "8", "--out", str(kit.dir / "m.onnx")]

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
                "pytorch_model.bin": _torch_bytes({"w": _Marker(str(kit.dir / "pwned"))}),
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
    yield arch_case("arch-not-callable", lambda kit: f"{kit.dir}/archs.py:NOT_CALLABLE", "not a function")  # noqa: E501
    yield arch_case("arch-raises", lambda kit: f"{kit.dir}/archs.py:raises", "boom in the factory")
    yield arch_case("arch-needs-args", lambda kit: f"{kit.dir}/archs.py:needs_args", "no arguments")
    yield arch_case("arch-sys-exit", lambda kit: f"{kit.dir}/archs.py:exits", "SystemExit")
    yield arch_case("arch-returns-dict", lambda kit: f"{kit.dir}/archs.py:returns_dict", "dict")
    yield arch_case("arch-missing-file", lambda kit: f"{kit.dir}/absent.py:build", "no such file")
    yield arch_case("arch-wrong-model", lambda kit: "compresskit.testing.tiny:TinyResidualCNN", "does not match")  # noqa: E501

    def source_case(case_id: str, source: str, *expect: str) -> Case:
        def build(kit: Kit) -> list[str]:
            kit.file("broken.py", source)
            return kit.with_option(kit.compress(), "--arch", f"{kit.dir}/broken.py:build")

        return Case(case_id, build, expect)

    yield source_case("arch-syntax-error", "def build(:\n    pass\n", "syntax error", "line 1")
    yield source_case("arch-import-raises", "raise RuntimeError('at import')\n", "at import")
    yield source_case("arch-import-exits", "import sys\nsys.exit(3)\n", "SystemExit")
    yield source_case("arch-import-missing-dep", "import no_such_dep_xyz\n", "no_such_dep_xyz")


# -- data ----------------------------------------------------------------------------------


def _npz(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def data_cases() -> Iterator[Case]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 4, 64)  # the tiny task's 4 classes

    def npz_case(case_id: str, content: Callable[[], bytes], *expect: str) -> Case:
        def build(kit: Kit) -> list[str]:
            path = kit.file("bad.npz", content())
            return kit.with_option(kit.compress(), "--data", str(path))

        return Case(case_id, build, ("bad", *expect))

    good = _npz(x=x, y=y)
    nan_x = x.copy()
    nan_x[3, 0, 0, 0] = np.nan
    inf_x = x.copy()
    inf_x[0, 0, 1, 1] = np.inf
    yield npz_case("data-zero-byte", lambda: b"", "npz")
    yield npz_case("data-junk", lambda: b"junk" * 100, "npz")
    yield npz_case("data-truncated", lambda: good[: len(good) // 2], "npz")
    yield npz_case("data-object-array", lambda: _npz(x=np.array([{"a": 1}] * 64), y=y), "npz")
    yield npz_case("data-strings-x", lambda: _npz(x=np.array(["a"] * 64), y=y), "x")
    yield npz_case("data-strings-y", lambda: _npz(x=x, y=np.array(["cat"] * 64)), "y")
    yield npz_case("data-missing-x", lambda: _npz(y=y), "missing", "x")
    yield npz_case("data-missing-y", lambda: _npz(x=x), "missing", "y")
    yield npz_case("data-no-arrays", lambda: _npz(), "missing")
    yield npz_case("data-mismatched", lambda: _npz(x=x, y=y[:50]), "y", "64")
    yield npz_case("data-nan-x", lambda: _npz(x=nan_x, y=y), "NaN")
    yield npz_case("data-inf-x", lambda: _npz(x=inf_x, y=y), "infinite")
    yield npz_case("data-nan-labels", lambda: _npz(x=x, y=np.where(y > 1, np.nan, y)), "NaN")
    yield npz_case("data-negative-labels", lambda: _npz(x=x, y=y - 5), "labels")
    yield npz_case("data-fraction-labels", lambda: _npz(x=x, y=y + 0.5), "whole")
    yield npz_case("data-huge-labels", lambda: _npz(x=x, y=y * 10**12), "labels")
    yield npz_case("data-labels-2d", lambda: _npz(x=x, y=y.reshape(8, 8)), "y")
    yield npz_case("data-empty", lambda: _npz(x=x[:0], y=y[:0]), "sample")
    yield npz_case("data-one-sample", lambda: _npz(x=x[:1], y=y[:1]), "at least")
    yield npz_case("data-two-samples", lambda: _npz(x=x[:2], y=y[:2]), "at least")
    yield npz_case("data-x-1d", lambda: _npz(x=x.reshape(-1)[:64], y=y), "x")
    yield npz_case("data-x-scalar", lambda: _npz(x=np.float32(1), y=y), "x")
    yield npz_case("data-labels-out-of-range", lambda: _npz(x=x, y=y + 40), "classes")
    yield npz_case("data-wrong-shape", lambda: _npz(x=np.zeros((64, 3, 5), np.float32), y=y), "shape")  # noqa: E501
    yield npz_case("data-eval-shape", lambda: _npz(x=x, y=y, x_eval=x[:, :, :4], y_eval=y), "x_eval")  # noqa: E501
    yield npz_case("data-eval-mismatch", lambda: _npz(x=x, y=y, x_eval=x, y_eval=y[:3]), "y_eval")
    yield npz_case("data-complex", lambda: _npz(x=x.astype(np.complex64), y=y), "complex")
    yield Case(
        "data-missing-file",
        lambda kit: kit.with_option(kit.compress(), "--data", str(kit.dir / "absent.npz")),
        ("no such file",),
    )
    yield Case(
        "data-directory",
        lambda kit: kit.with_option(kit.compress(), "--data", str(_mkdir(kit.dir / "d.npz"))),
        ("directory",),
    )
    yield Case(
        "data-fifo",
        lambda kit: kit.with_option(kit.compress(), "--data", str(_fifo(kit.dir / "f.npz"))),
        ("not a regular file",),
    )
    yield Case(
        "data-unknown-spec",
        lambda kit: kit.with_option(kit.compress(), "--data", "imagenet"),
        ("imagenet", "digits"),
    )
    yield from _factory_data_cases()
    yield from _fashion_cases()


DATA_MODULE = """
import sys
import torch
from torch.utils.data import TensorDataset
from compresskit.data import DataBundle

def raises(seed):
    raise RuntimeError("data factory broke")

def wrong_type(seed):
    return [1, 2, 3]

def no_seed():
    return None

def exits(seed):
    sys.exit(0)

NOT_CALLABLE = "x"

def empty(seed):
    empty = TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))
    return DataBundle("empty", 10, (1, 8, 8), empty, empty, empty, empty)
"""


def _factory_data_cases() -> Iterator[Case]:
    for name, expect in [
        ("raises", "data factory broke"),
        ("wrong_type", "list"),
        ("no_seed", "seed"),
        ("exits", "SystemExit"),
        ("NOT_CALLABLE", "not a function"),
        ("empty", "empty"),
        ("absent", "absent"),
    ]:

        def build(kit: Kit, name: str = name) -> list[str]:
            kit.file("datas.py", DATA_MODULE)
            return kit.with_option(kit.compress(), "--data", f"{kit.dir}/datas.py:{name}")

        yield Case(f"data-factory-{name}", build, (expect,))


def _fashion_cases() -> Iterator[Case]:
    def idx(images: bytes, labels: bytes) -> Callable[[Kit], list[str]]:
        def build(kit: Kit) -> list[str]:
            root = _mkdir(kit.dir / "fmnist")
            for stem in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
                kit.file(f"fmnist/{stem}", images)
            for stem in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
                kit.file(f"fmnist/{stem}", labels)
            os.environ["COMPRESSKIT_FASHION_MNIST"] = str(root)
            return kit.with_option(kit.compress(), "--data", "fashion-mnist")

        return build

    header3 = b"\x00\x00\x08\x03" + (20).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    labels = b"\x00\x00\x08\x01" + (20).to_bytes(4, "big") + bytes(20)
    images = header3 + bytes(20 * 28 * 28)
    yield Case("fmnist-truncated", idx(images[:-100], labels), ("truncated",))
    yield Case("fmnist-junk", idx(b"junk" * 30, labels), ("IDX",))
    yield Case("fmnist-empty", idx(b"", labels), ("IDX",))
    yield Case("fmnist-wrong-type", idx(b"\x00\x00\x0d\x03" + images[4:], labels), ("unsigned",))
    yield Case("fmnist-bad-gzip", _gz_case(), ("reinstall",))
    yield Case("fmnist-count-mismatch", idx(images, labels[:-5]), ("fmnist",))


def _gz_case() -> Callable[[Kit], list[str]]:
    def build(kit: Kit) -> list[str]:
        root = _mkdir(kit.dir / "fmnistgz")
        for stem in (
            "train-images-idx3-ubyte",
            "t10k-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-labels-idx1-ubyte",
        ):
            kit.file(f"fmnistgz/{stem}.gz", b"\x1f\x8b" + b"not gzip" * 10)
        os.environ["COMPRESSKIT_FASHION_MNIST"] = str(root)
        return kit.with_option(kit.compress(), "--data", "fashion-mnist")

    return build


# -- options -------------------------------------------------------------------------------


def option_cases() -> Iterator[Case]:
    def compress_with(option: str, value: str, *expect: str) -> Case:
        case_id = f"opt-compress{option}-{value[:20]}".replace("/", "_")
        return Case(case_id, lambda kit: kit.with_option(kit.compress(), option, value), expect)

    for value in ("0", "-1", "x", "1.5", "100000"):
        yield compress_with("--nproc", value, "--nproc")
    for value in ("-1", str(2**64), "x", "1e3", str(2**63)):
        yield compress_with("--seed", value, "--seed")
    for value in ("0", "-1", "x", "1e9", "nan", "inf"):
        yield compress_with("--latency-seconds", value, "--latency-seconds")
    yield compress_with("--exporter", "magic", "--exporter")
    yield compress_with("--backend", "mpi", "--backend")
    yield compress_with("--policy", "no-such-policy", "no-such-policy")
    yield compress_with("--policy", "", "policy")
    yield compress_with("--unknown-option", "1", "--unknown-option")
    yield from _out_cases()
    yield from _export_cases()
    yield from _bench_cases()
    yield Case("report-missing", lambda kit: ["report", str(kit.dir / "nope")], ("nope",))
    yield Case(
        "report-no-json",
        lambda kit: ["report", str(_mkdir(kit.dir / "run"))],
        ("report.json",),
    )
    yield Case(
        "report-junk-json",
        lambda kit: ["report", str(kit.file("run/report.json", "{junk").parent)],
        ("report.json",),
    )
    yield Case(
        "report-wrong-json",
        lambda kit: ["report", str(kit.file("run/report.json", '{"a": 1}').parent)],
        ("report.json",),
    )


def _out_cases() -> Iterator[Case]:
    def out_case(case_id: str, out: Callable[[Kit], Path], *expect: str) -> Case:
        return Case(
            f"out-{case_id}",
            lambda kit: kit.with_option(kit.compress(), "--out", str(out(kit))),
            ("--out", *expect),
        )

    yield out_case("a-file", lambda kit: kit.file("taken.txt", "x"), "not a directory")
    yield out_case("symlink-to-file", lambda kit: _link(kit, "taken.txt", "link"), "not a directory")
    yield out_case("dev-null", lambda kit: Path("/dev/null"), "not a directory")
    yield out_case("under-a-file", lambda kit: kit.file("f.txt", "x") / "run", "is a file")
    yield out_case("deep-under-a-file", lambda kit: kit.file("g.txt", "x") / "a" / "b", "is a file")
    yield out_case("proc", lambda kit: Path("/proc/compresskit-run"), "cannot write")
    yield out_case("sys", lambda kit: Path("/sys/compresskit-run"), "cannot write")
    yield out_case("not-empty", lambda kit: kit.file("full/keep.txt", "mine").parent, "not empty")
    yield out_case("broken-symlink", lambda kit: _link(kit, "absent-target", "dangling"), "broken")
    if os.geteuid() != 0:  # root writes anywhere: permissions cannot refuse it
        yield out_case("read-only", lambda kit: _read_only(kit) / "run", "cannot write")


def _export_cases() -> Iterator[Case]:
    def export(kit: Kit, *extra: str) -> list[str]:
        args = ["export", str(kit.weights), "--arch", ARCH, "--input-shape", "1,8,8"]
        return args + ["--out", str(kit.dir / "m.onnx"), *extra]

    def export_with(case_id: str, option: str, value: Callable[[Kit], str], *expect: str) -> Case:
        return Case(
            f"export-{case_id}",
            lambda kit: kit.with_option(export(kit), option, value(kit)),
            expect,
        )

    yield export_with("out-no-suffix", "--out", lambda kit: str(kit.dir / "m.bin"), ".onnx")
    yield export_with("out-directory", "--out", lambda kit: str(_mkdir(kit.dir / "d.onnx")), "directory")  # noqa: E501
    yield export_with("out-under-file", "--out", lambda kit: str(kit.file("f", "x") / "m.onnx"), "is a file")  # noqa: E501
    yield export_with("out-missing-dir", "--out", lambda kit: str(kit.dir / "no" / "m.onnx"), "does not exist")  # noqa: E501
    yield export_with("out-proc", "--out", lambda kit: "/proc/m.onnx", "cannot write")
    for value in ("0", "-3", "a,b", "", "3,100000,100000", "1,8,x"):
        yield export_with(f"shape-{value or 'empty'}", "--input-shape", lambda kit, v=value: v, "--input-shape")  # noqa: E501
    for value in ("5", "99", "x"):
        yield export_with(f"opset-{value}", "--opset", lambda kit, v=value: v, "--opset")
    yield export_with("exporter", "--exporter", lambda kit: "magic", "--exporter")
    yield export_with("shape-mismatch", "--input-shape", lambda kit: "3,8,8", "--input-shape")
    yield Case(
        "export-no-inputs",
        lambda kit: ["export", str(kit.weights), "--arch", ARCH, "--out", str(kit.dir / "m.onnx")],
        ("--input-shape",),
    )
    yield Case(
        "export-out-is-the-checkpoint",
        lambda kit: [
            "export", str(kit.file("same.onnx", "x")), "--arch", ARCH,
            "--input-shape", "1,8,8", "--out", str(kit.dir / "same.onnx"),
        ],  # fmt: skip
        ("same.onnx",),
    )


def _bench_cases() -> Iterator[Case]:
    def onnx_file(kit: Kit) -> Path:
        from compresskit.testing.tiny import TinyCNN

        path = kit.dir / "tiny.onnx"
        if not path.exists():
            from compresskit.export.onnx import export_onnx

            export_onnx(TinyCNN(), (torch.zeros(2, 1, 8, 8),), path, exporter="legacy")
        return path

    def bench(kit: Kit, *extra: str) -> list[str]:
        return ["bench", str(onnx_file(kit)), "--seconds", "0.05", *extra]

    for value in ("0", "", "a", "1,,x", "-1", "99999", "1.5", ",,"):
        yield Case(
            f"bench-batch-{value or 'empty'}",
            lambda kit, v=value: bench(kit, "--batch", v),
            ("--batch",),
        )
    for value in ("0", "100000", "x"):
        yield Case(
            f"bench-threads-{value}", lambda kit, v=value: bench(kit, "--threads", v), ("--threads",)
        )
    for value in ("0", "1e9", "x"):
        yield Case(
            f"bench-seconds-{value}", lambda kit, v=value: bench(kit, "--seconds", v), ("--seconds",)
        )
    yield Case(
        "bench-json-directory",
        lambda kit: bench(kit, "--json", str(_mkdir(kit.dir / "j"))),
        ("--json", "directory"),
    )
    yield Case(
        "bench-json-missing-parent",
        lambda kit: bench(kit, "--json", str(kit.dir / "nodir" / "x.json")),
        ("--json", "does not exist"),
    )
    yield Case(
        "bench-json-under-file",
        lambda kit: bench(kit, "--json", str(kit.file("jf", "x") / "x.json")),
        ("--json", "is a file"),
    )
    yield Case(
        "bench-json-is-the-model",
        lambda kit: bench(kit, "--json", str(onnx_file(kit))),
        ("--json", "inputs"),
    )
    yield Case("bench-target-unknown", lambda kit: bench(kit, "--target", "tpu"), ("tpu",))
    for name, content, expect in [
        ("syntax", b"runtime: [\n", "YAML"),
        ("binary", b"\x00\x01\x02" * 20, "binary"),
        ("python-tag", b"!!python/object/apply:os.system ['touch pwned']\n", "tag"),
        ("not-utf8", b"name: \xff\xfe\n", "UTF-8"),
        ("unknown-field", b"name: t\nruntime: onnxruntime\nprovider: CPUExecutionProvider\nx: 1\n", "x"),  # noqa: E501
        ("huge", b"#" + b"x" * 2_000_000, "kB"),
    ]:
        yield Case(
            f"bench-target-file-{name}",
            lambda kit, c=content: bench(kit, "--target", str(kit.file("t.yaml", c))),
            (expect,),
            markers=("pwned",),
        )
    yield Case(
        "bench-target-directory",
        lambda kit: bench(kit, "--target", str(_mkdir(kit.dir / "t.yaml"))),
        ("t.yaml",),
    )
    yield Case(
        "bench-shape-count",
        lambda kit: bench(kit, "--input-shape", "1,8,8", "--input-shape", "3"),
        ("--input-shape",),
    )
    for name, content in [("zero", b""), ("junk", b"junk" * 50), ("text", b"ir_version: 7\n")]:
        yield Case(
            f"bench-onnx-{name}",
            lambda kit, c=content: ["bench", str(kit.file(f"{name}.onnx", c)), "--seconds", "0.05"],
            ("ONNX",),
        )
    yield Case(
        "bench-onnx-fifo",
        lambda kit: ["bench", str(_fifo(kit.dir / "f.onnx"))],
        ("not a regular file",),
    )
    yield Case("bench-missing", lambda kit: ["bench", str(kit.dir / "absent.onnx")], ("absent",))
    yield Case(
        "bench-checkpoint-no-shape",
        lambda kit: ["bench", str(kit.weights), "--arch", ARCH],
        ("--input-shape",),
    )
    yield Case(
        "bench-checkpoint-no-arch",
        lambda kit: ["bench", str(kit.weights), "--input-shape", "1,8,8"],
        ("--arch",),
    )


# -- helpers -------------------------------------------------------------------------------


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _fifo(path: Path) -> Path:
    if not path.exists():
        os.mkfifo(path)
    return path


def _link(kit: Kit, target: str, name: str) -> Path:
    link = kit.dir / name
    if target != "absent-target":
        kit.file(target, "x")
    link.symlink_to(kit.dir / target)
    return link


def _read_only(kit: Kit) -> Path:
    directory = _mkdir(kit.dir / "ro")
    directory.chmod(0o500)
    return directory


def all_cases() -> list[Case]:
    cases = [
        *policy_cases(),
        *checkpoint_cases(),
        *data_cases(),
        *option_cases(),
    ]
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    return cases
