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
            "cannot come after 'q'",
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
