from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from compresskit.errors import CompressKitError
from compresskit.policies import builtin_policy_names, load_policy, parse_policy, policy_json_schema

BASE = {
    "version": 1,
    "name": "t",
    "nodes": [
        {"id": "prune", "pass": "prune_channels", "config": {"ratio": 0.5}},
        {"id": "q", "pass": "quantize", "after": "prune"},
    ],
}


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def with_nodes(*nodes: dict) -> dict:
    return {**BASE, "nodes": list(nodes)}


def test_every_builtin_policy_loads() -> None:
    names = builtin_policy_names()
    assert "default" in names
    for name in names:
        assert load_policy(name).version == 1


def test_default_policy_has_a_branch() -> None:
    policy = load_policy("default")
    roots = [n for n in policy.nodes if n.after is None]
    assert len(roots) == 2


def test_policy_round_trips_through_yaml(tmp_path: Path) -> None:
    policy = load_policy("default")
    dumped = yaml.safe_dump(policy.model_dump(mode="json", by_alias=True))
    assert parse_policy(dumped) == policy


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("version: 1\nnodes: [\n", "invalid YAML at line"),
        ({**BASE, "nodez": []}, "nodez: unknown field"),
        ({**BASE, "version": 7}, "version"),
        (
            with_nodes({"id": "p", "pass": "prune_channels", "config": {"ratio": 1.3}}),
            "nodes[0] (id 'p').config.ratio: Input should be less than 1 (got 1.3)",
        ),
        (
            with_nodes({"id": "p", "pass": "prune_channels", "config": {"ratoi": 0.3}}),
            "nodes[0] (id 'p').config.ratoi: unknown field",
        ),
        (with_nodes({"id": "p", "pass": "prune_everything"}), "unknown pass 'prune_everything'"),
        (
            with_nodes({"id": "p", "pass": "quantize", "after": "nowhere"}),
            "'nowhere' is not a node id",
        ),
        (
            with_nodes(
                {"id": "a", "pass": "quantize", "after": "b"},
                {"id": "b", "pass": "quantize", "after": "a"},
            ),
            "cycle",
        ),
        (
            with_nodes({"id": "a", "pass": "quantize"}, {"id": "a", "pass": "quantize"}),
            "used twice",
        ),
        (
            with_nodes(
                {"id": "q", "pass": "quantize"}, {"id": "p", "pass": "prune_channels", "after": "q"}
            ),
            "node 'p' (prune_channels) needs a float model, but 'q' (quantize) quantized it; "
            "move 'p' before 'q'",
        ),
        (
            with_nodes({"id": "1bad", "pass": "quantize"}),
            "(id '1bad').id: String should match pattern",
        ),
    ],
)
def test_bad_policies_name_file_node_and_field(tmp_path: Path, data: object, expected: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(CompressKitError) as error:
        load_policy(path)
    message = str(error.value)
    assert str(path) in message
    assert expected in message
    assert "\n" not in message


def test_missing_policy_file_lists_builtins() -> None:
    with pytest.raises(CompressKitError, match="not a built-in policy.*default"):
        load_policy("no/such/policy.yaml")


def test_schema_is_generated_from_pass_configs() -> None:
    schema = policy_json_schema()
    text = json.dumps(schema)
    assert schema["title"] == "compresskit policy"
    assert "PruneChannelsConfig" in text and "QuantizeConfig" in text and "DistillConfig" in text
    assert schema["additionalProperties"] is False


def test_builtin_policies_validate_against_the_published_schema() -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(policy_json_schema())
    for name in builtin_policy_names():
        raw = yaml.safe_load((Path(__file__).parents[2] / "policies" / f"{name}.yaml").read_text())
        errors = sorted(validator.iter_errors(raw), key=lambda e: list(e.path))
        assert not errors, f"{name}: {errors[0].message} at {list(errors[0].path)}"


def test_the_schema_rejects_what_the_loader_rejects() -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(policy_json_schema())
    bad = with_nodes({"id": "p", "pass": "prune_channels", "config": {"ratio": "0.5"}})
    assert list(validator.iter_errors(bad))
    assert list(validator.iter_errors({**BASE, "batch_sizes": [True]}))


@pytest.mark.parametrize(
    ("nodes", "expected"),
    [
        (
            [{"id": "a", "pass": "quantize"}, {"id": "b", "pass": "quantize", "after": "a"}],
            "node 'b' (quantize) quantizes layers that 'a' (quantize) already quantized",
        ),
        (
            [
                {"id": "a", "pass": "quantize_dynamic"},
                {"id": "b", "pass": "weight_only", "after": "a"},
            ],
            "node 'b' (weight_only) quantizes layers that 'a' (quantize_dynamic)",
        ),
        (
            [{"id": "w", "pass": "weight_only"}, {"id": "d", "pass": "distill", "after": "w"}],
            "node 'd' (distill) trains the model, but 'w' (weight_only) made layers that "
            "cannot be trained",
        ),
        ([{"id": "baseline", "pass": "quantize"}], "'baseline' is reserved"),
    ],
)
def test_chains_that_cannot_run_are_refused_when_validated(
    tmp_path: Path, nodes: list, expected: str
) -> None:
    with pytest.raises(CompressKitError, match="^policy .*: .*" + _escape(expected)):
        load_policy(write(tmp_path, with_nodes(*nodes)))


def _escape(text: str) -> str:
    import re

    return re.escape(text)


@pytest.mark.parametrize(
    "nodes",
    [
        [{"id": "e", "pass": "quantize_embeddings"}, {"id": "q", "pass": "quantize", "after": "e"}],
        [{"id": "q", "pass": "quantize"}, {"id": "t", "pass": "qat", "after": "q"}],
        [{"id": "q", "pass": "quantize"}, {"id": "d", "pass": "distill", "after": "q"}],
        [{"id": "d", "pass": "distill"}, {"id": "p", "pass": "prune_channels", "after": "d"}],
    ],
)
def test_chains_that_compose_are_accepted(tmp_path: Path, nodes: list) -> None:
    assert len(load_policy(write(tmp_path, with_nodes(*nodes))).nodes) == 2


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({**BASE, "version": 1.0}, "version"),
        ({**BASE, "version": True}, "version"),
        ({**BASE, "batch_sizes": ["32"]}, "batch_sizes[0]: Input should be a valid integer"),
        ({**BASE, "batch_sizes": [True]}, "batch_sizes[0]: Input should be a valid integer"),
        ({**BASE, "targets": ["cpu-orrt"]}, "unknown target 'cpu-orrt'"),
        ({**BASE, "targets": []}, "targets: List should have at least 1 item"),
        ({**BASE, "teacher": "no/such/teacher.pt"}, "no such file or directory"),
        ({**BASE, "name": "../../escaped"}, "name: String should match pattern"),
        ({**BASE, "name": "/abs/path"}, "name: String should match pattern"),
        (
            with_nodes({"id": "d", "pass": "distill", "config": {"train": {"epochs": 1e18}}}),
            "config.train.epochs",
        ),
        (
            with_nodes({"id": "d", "pass": "distill", "config": {"train": {"lr": 1e308}}}),
            "config.train.lr",
        ),
        (
            with_nodes({"id": "d", "pass": "distill", "config": {"train": {"batch_size": 1e9}}}),
            "config.train.batch_size",
        ),
        ("version: 1\nname: t\nname: u\nnodes: []\n", "key 'name' is given twice"),
        ("!!python/object/apply:os.system ['true']\n", "only plain YAML values are allowed"),
        ("a: &a [x, x, x]\n" + "".join(f"b{i}: [*a, *a]\n" for i in range(60)), "aliases"),
        ("[" * 300 + "]" * 300, "nested"),
    ],
)
def test_values_that_cannot_run_are_refused_naming_the_field(
    tmp_path: Path, data: object, expected: str
) -> None:
    path = write(tmp_path, data)
    with pytest.raises(CompressKitError) as error:
        load_policy(path)
    message = str(error.value)
    assert expected in message and "\n" not in message and len(message) < 400, message


def test_yaml_floats_without_a_dot_are_numbers(tmp_path: Path) -> None:
    text = yaml.safe_dump(with_nodes({"id": "d", "pass": "distill"})) + "\n"
    text = text.replace("pass: distill", "pass: distill\n  config: {train: {lr: 3e-4}}")
    assert load_policy(write(tmp_path, text)).nodes[0].config.train.lr == 3e-4


def chain(length: int) -> list[dict]:
    return [{"id": "n0", "pass": "distill"}] + [
        {"id": f"n{i}", "pass": "distill", "after": f"n{i - 1}"} for i in range(1, length)
    ]


def test_a_long_chain_validates_and_a_huge_one_is_refused(tmp_path: Path) -> None:
    assert len(load_policy(write(tmp_path, with_nodes(*chain(256)))).nodes) == 256
    with pytest.raises(CompressKitError, match="nodes: List should have at most 256 items"):
        load_policy(write(tmp_path, with_nodes(*chain(3000))))
