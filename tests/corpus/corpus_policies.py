"""Policies: every field with wrong types and values out of range, unknown and missing
fields at every level, impossible graphs, and YAML that must not load."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import yaml
from corpus_kit import BASE_POLICY, Case, Kit, fifo, mkdir

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
        + [{"id": f"n{i}", "pass": "prune_channels", "after": f"n{i - 1}"} for i in range(1, 3000)],
    }
    for name, nodes in graph.items():
        yield _policy_case(f"policy-graph-{name}", {**BASE_POLICY, "nodes": nodes}, (), "validate")
    for name, expect, content in yaml_texts():
        yield _raw_policy_case(f"policy-yaml-{name}", content, expect)
    yield Case(
        "policy-is-a-directory",
        lambda kit: ["policies", "validate", str(mkdir(kit.dir / "pol.yaml"))],
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
        lambda kit: ["policies", "validate", str(fifo(kit.dir / "fifo.yaml"))],
        ("fifo.yaml", "not a regular file"),
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
    yield (
        "python-object-new",
        ("tag",),
        (b"!!python/object/new:subprocess.Popen [['touch', 'pwned']]\n"),
    )
    yield (
        "nested-tag",
        ("tag",),
        good.replace(
            "ratio: 0.5", "ratio: !!python/object/apply:os.system ['touch pwned']"
        ).encode(),
    )
    bomb = "a: &a ['x','x','x','x','x','x','x','x','x']\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},"
        f"*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},"
        f"*{chr(97 + i)}]\n"
        for i in range(12)
    )
    yield "alias-bomb", ("aliases",), bomb.encode()
    yield (
        "alias-bomb-in-name",
        ("aliases",),
        (bomb + "version: 1\nname: *m\nnodes: [{id: a, pass: quantize}]\n").encode(),
    )
    yield "nesting-40", ("nested",), ("x: " + "[" * 40 + "]" * 40 + "\n").encode()
    yield "nesting-5000", ("nested",), ("x: " + "[" * 5000 + "]" * 5000 + "\n").encode()
    yield "duplicate-key", ("twice",), good.replace("version: 1", "version: 1\nversion: 1").encode()
    yield (
        "duplicate-nested-key",
        ("twice",),
        good.replace("    ratio: 0.5", "    ratio: 0.5\n    ratio: 0.4").encode(),
    )
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
    yield (
        "timestamp-name",
        ("name",),
        b"version: 1\nname: 2001-12-14\nnodes: [{id: a, pass: quantize}]\n",
    )  # noqa: E501
