"""compresskit search on the tiny CNN: the front is the non-dominated set of the trials,
front policies validate and say what the trial was, the final candidates are measured
against the baseline, the same seed samples the same trials, bad input is refused first."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import compresskit
from compresskit.bench.report import Report
from compresskit.cli.main import cli
from compresskit.models.loading import load_model
from compresskit.policies import load_policy
from compresskit.policy_search.front import SearchRecord
from compresskit.policy_search.space import MAX_RATIO
from compresskit.testing import TinyCNN, tiny_data

ARCH = "compresskit.testing.tiny:TinyCNN"
# Small enough for seconds per trial: no per-layer latency plan, short timings.
FAST = ["--no-precision-by-latency", "--latency-seconds", "0.02", "--final-epochs", "2"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("search-inputs")
    bundle = tiny_data()
    x, y = bundle.train.tensors
    np.savez(directory / "data.npz", x=x.numpy(), y=y.numpy())
    torch.manual_seed(0)
    torch.save(TinyCNN().state_dict(), directory / "w.pt")
    return {"data": directory / "data.npz", "weights": directory / "w.pt", "dir": directory}


def invoke(*args: str) -> Any:  # noqa: ANN401
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def searched(inputs: dict[str, Path]) -> tuple[Path, SearchRecord, Any]:
    pytest.importorskip("optuna", reason="compresskit[search] is not installed")
    out = inputs["dir"] / "search"
    result = invoke(
        "search",
        str(inputs["weights"]),
        "--arch",
        ARCH,
        "--data",
        str(inputs["data"]),
        "--max-accuracy-drop",
        "0.5",
        "--min-speedup",
        "0.01",
        "--time-limit",
        "300",
        "--trials",
        "3",
        "--final",
        "2",
        "--seed",
        "3",
        "--out",
        str(out),
        "--json",
        *FAST,
    )
    record = SearchRecord.model_validate_json((out / "search.json").read_text())
    return out, record, result


def test_front_is_the_non_dominated_set_of_the_trials(searched: Any) -> None:
    _, record, result = searched
    assert result.exit_code == 0, result.output  # a loose budget: a final candidate meets it
    assert json.loads(result.stdout) == json.loads(record.model_dump_json())
    assert len(record.trials) == 3 and record.stopped == "3 trials"
    # The first trial is the space's most aggressive corner, which the sampler may not reach.
    assert record.trials[0].params == {
        "stage_ratios": [MAX_RATIO, MAX_RATIO],
        "remove_blocks": 0,
        "precision": "int8",
    }
    assert record.proxy_slack == 0.5  # default: as much again as the budget allows to lose
    done = [t for t in record.trials if t.state == "complete"]
    assert done
    for trial in done:
        dominated = any(
            other.latency_ms <= trial.latency_ms
            and other.quality >= trial.quality
            and (other.latency_ms, other.quality) != (trial.latency_ms, trial.quality)
            for other in done
        )
        assert trial.on_front is not dominated
        # The speedup is against the baseline timed in the same worker as the trial's model.
        assert trial.baseline_ms is not None and trial.baseline_ms > 0
        assert trial.speedup == pytest.approx(trial.baseline_ms / trial.latency_ms)
        assert trial.feasible is all(v <= 0 for v in trial.violations)
    front = [t for t in record.trials if t.on_front]
    assert [t.number for t in record.front()] == sorted(
        (t.number for t in front), key=lambda n: record.trials[n].latency_ms
    )


def test_front_policies_validate_and_are_the_trials(searched: Any) -> None:
    out, record, _ = searched
    front = [t for t in record.trials if t.on_front]
    assert sorted(p.name for p in (out / "front").iterdir()) == sorted(
        f"t{t.number}.yaml" for t in front
    )
    for trial in front:
        policy = load_policy(str(out / trial.policy))
        nodes = {node.pass_: node for node in policy.nodes}
        assert policy.nodes[-1].id == trial.name and policy.targets == ["cpu-ort"]
        assert policy.budget.max_accuracy_drop == 0.5
        assert nodes["distill"].config.train.epochs == 2  # the final epochs, not the proxy's
        assert ("quantize" in nodes) is (trial.params["precision"] == "int8")
        ratios = trial.params["stage_ratios"]
        if any(ratios):
            layer_ratios = nodes["prune_channels"].config.layer_ratios
            assert [layer_ratios["features.0"], layer_ratios["features.3"]] == ratios
        else:
            assert "prune_channels" not in nodes


def test_final_candidates_are_measured_against_the_baseline(searched: Any) -> None:
    out, record, result = searched
    report = Report.load(out / "final" / "report.json")
    assert record.chosen and len(record.chosen) <= 2
    assert [c.name for c in report.candidates] == [f"t{n}" for n in record.chosen]
    assert all(record.trials[n].on_front for n in record.chosen)
    assert record.final_baseline is not None
    assert record.final_baseline.quality == report.baseline.metrics["accuracy"]
    for number in record.chosen:
        trial = record.trials[number]
        (entry,) = [c for c in report.candidates if c.name == trial.name]
        assert trial.final is not None
        assert trial.final.quality == entry.metrics["accuracy"]
        (timed,) = [x for x in entry.latency if x.batch == 32]
        assert trial.final.latency_ms == timed.p50_ms
    assert load_policy(str(out / "final.yaml")).nodes[-1].id == f"t{record.chosen[-1]}"
    markdown = (out / "search.md").read_text()
    assert all(f"| t{t.number} |" in markdown for t in record.trials)
    assert (out / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "run directory" in result.stderr


def test_the_same_seed_samples_the_same_trials(searched: Any, inputs: dict[str, Path]) -> None:
    _, first, _ = searched  # skipped without optuna, like this test
    again = compresskit.search(
        load_model(str(inputs["weights"]), arch=ARCH),
        str(inputs["data"]),
        time_limit=300,
        max_accuracy_drop=0.5,
        min_speedup=0.01,
        seed=3,
        out=inputs["dir"] / "again",
        options=compresskit.SearchOptions(
            trials=2, final=1, final_epochs=1, precision_by_latency=False, latency_seconds=0.02
        ),
    )
    for one, two in zip(first.trials[:2], again.record.trials, strict=True):
        assert one.params == two.params and one.description == two.description
        assert one.quality == two.quality  # seeded training: the same proxy score
    assert again.record.baseline_quality == first.baseline_quality


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--min-speedup", "2"], "one quality budget"),
        (["--max-accuracy-drop", "0.01", "--min-cosine", "0.9", "--min-speedup", "2"], "not both"),
        (["--max-accuracy-drop", "0.01"], "a speed budget"),
        (["--max-accuracy-drop", "0.01", "--min-speedup", "2", "--time-limit", "5"], "too short"),
        (["--max-accuracy-drop", "0.01", "--min-speedup", "2", "--target", "tpu"], "unknown"),
        (["--max-accuracy-drop", "2", "--min-speedup", "2"], "max-accuracy-drop 2.0"),
    ],
)
def test_bad_input_is_one_line_before_any_work(
    args: list[str], message: str, tmp_path: Path
) -> None:
    if "--time-limit" not in args:
        args = [*args, "--time-limit", "60"]
    out = tmp_path / "out"
    # No checkpoint file: a check that came after loading would fail on that instead.
    result = invoke("search", str(tmp_path / "missing.pt"), "--out", str(out), *args)
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and message in result.output, result.output
    assert not out.exists()


def test_a_budget_of_another_task_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("optuna", reason="compresskit[search] is not installed")
    with pytest.raises(compresskit.CompressKitError, match="min-cosine does not apply"):
        compresskit.search(
            TinyCNN(),
            tiny_data(),
            time_limit=60,
            min_cosine=0.9,
            min_speedup=2,
            out=tmp_path / "out",
        )
    assert not (tmp_path / "out").exists()


def test_a_missing_optuna_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    out = tmp_path / "out"
    result = invoke(
        "search", "--max-accuracy-drop", "0.01", "--min-speedup", "2", "--time-limit", "60",
        "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "compresskit[search]" in result.output and not out.exists()
