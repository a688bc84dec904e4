"""A budgeted search: sample configurations with optuna's multi-objective sampler, score
each after a short distillation (the proxy) and time it on the target, keep the Pareto
front, then train the best few for longer and measure them against the baseline through
the run's harness (:func:`compresskit.compress.run`).

The time limit is kept strictly: no trial starts unless it and the final training are
expected to fit in what is left, and the final training is shortened (or skipped) to fit.

Example::

    result = search("model.pt", "digits", time_limit=600,
                    max_accuracy_drop=0.01, min_speedup=2.0)
"""

from __future__ import annotations

import copy
import datetime as dt
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from compresskit.bench.probe import measure_costs, measure_p50, measure_p50s
from compresskit.context import Context
from compresskit.data import DataBundle, load_data
from compresskit.errors import CompressKitError
from compresskit.models.loading import LoadedModel
from compresskit.paths import check_output_dir, staged_directory
from compresskit.pipeline import run_pipeline
from compresskit.policies import pipeline_of
from compresskit.policy_search.final import Plan, final_seconds, policy_yaml, ranked, train_final
from compresskit.policy_search.front import SearchRecord, Trial, write_outputs
from compresskit.policy_search.goal import Goal, SearchOptions, check_request
from compresskit.policy_search.proxy import ProxyScorer
from compresskit.policy_search.space import (
    Choice,
    SearchSpace,
    Settings,
    choice_nodes,
    search_policy,
)
from compresskit.progress import status
from compresskit.tasks import get_task
from compresskit.units import human_seconds


@dataclass
class SearchResult:
    """The search's record (trials, front, final measurements) and its run directory."""

    record: SearchRecord
    run_dir: Path

    def front(self) -> list[Trial]:
        return self.record.front()


def search(
    model: LoadedModel | nn.Module | str | Path | None = None,
    data: DataBundle | str | None = None,
    *,
    time_limit: float,
    max_accuracy_drop: float | None = None,
    min_cosine: float | None = None,
    min_speedup: float | None = None,
    max_latency_ms: float | None = None,
    target: str = "cpu-ort",
    batch: int = 32,
    out: Path | str | None = None,
    seed: int = 0,
    options: SearchOptions | None = None,
    task: str | None = None,
) -> SearchResult:
    """Search pruning ratios per stage, depth and precision of ``model`` on ``data`` within
    ``time_limit`` seconds for the fastest candidates within the quality budget; writes
    ``search.md``, ``search.json``, ``front.png``, ``front/<trial>.yaml`` (policies that
    ``compresskit compress --policy`` runs) and ``final/`` (the run's report) to ``out``."""
    started = time.monotonic()
    options = options or SearchOptions()
    goal = Goal(max_accuracy_drop, min_cosine, min_speedup, max_latency_ms)
    optuna = check_request(
        goal, time_limit=time_limit, target=target, batch=batch, seed=seed, options=options
    )
    final_dir = Path(out) if out is not None else _default_out()
    check_output_dir(final_dir)
    deadline = started + time_limit

    loaded = LoadedModel.of(model)
    bundle = _bundle(data, loaded, seed, task)
    contract = bundle.contract
    if goal.quality_field not in contract.budget_fields:
        raise CompressKitError(
            f"search --{goal.quality_field.replace('_', '-')} does not apply to the "
            f"{contract.name} task of {bundle.name}; use "
            + (
                " or ".join(f"--{f.replace('_', '-')}" for f in sorted(contract.budget_fields))
                or "a labelled dataset"
            )
        )
    torch.manual_seed(seed)
    bundle.check_model(loaded.model)
    teacher = copy.deepcopy(loaded.model).eval().requires_grad_(False)
    ctx = Context(
        data=bundle,
        teacher=teacher,
        example_inputs=bundle.example_inputs(batch_size=2),
        seed=seed,
        latency_probe=measure_p50,
        profile_probe=measure_costs,
    )
    space = SearchSpace.of(
        loaded.model,
        ctx.example_inputs,
        max_stages=options.max_stages,
        quantize=options.quantize,
        precision_by_latency=options.precision_by_latency,
        depth=options.depth,
        round_to=options.round_to,
    )
    if not space.stages and not space.removable_blocks and len(space.precisions) == 1:
        raise CompressKitError(
            "search: the model has no prunable layer or removable block, and int8 is off; "
            "nothing to search"
        )
    settings = Settings(
        target,
        batch,
        goal.budget(),
        options.lr,
        options.latency_seconds,
        class_outputs=contract.class_outputs,
    )
    scorer = ProxyScorer(bundle, loaded.model, goal.metric)

    def latency(*models: nn.Module) -> list[float]:
        """p50 ms of each model, timed interleaved in one worker, as the final run times
        a candidate against the baseline (timed alone, a small model keeps its weights in
        cache and looks faster than it will be measured)."""
        return measure_p50s(
            models,
            ctx.example_inputs,
            target=target,
            batch=batch,
            seconds=options.latency_seconds,
            dynamic_sequence=bundle.dynamic_sequence,
        )

    status("search: timing the baseline")
    record = SearchRecord(
        checkpoint=loaded.describe(),
        data=bundle.name,
        task=contract.name,
        metric=goal.metric,
        target=target,
        batch=batch,
        budget=goal.limits(),
        seed=seed,
        time_limit=time_limit,
        baseline_quality=scorer.baseline,
        baseline_latency_ms=latency(loaded.model)[0],
    )
    # optuna 5 reads constraints the trial sets; 3 and 4 ask a function for them.
    set_constraint = hasattr(optuna.trial.Trial, "set_constraint")
    sampler = optuna.samplers.NSGAIISampler(
        seed=seed,
        population_size=10,
        **({} if set_constraint else {"constraints_func": lambda t: t.user_attrs["constraints"]}),
    )
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)

    def run_trial(number: int, choice: Choice) -> Trial:
        trial = Trial(
            number=number, params=choice.params(), description=choice.describe(), state="failed"
        )
        begin = time.monotonic()
        torch.manual_seed(seed + number)
        pipeline = choice_nodes(
            space, choice, trial.name, epochs=options.proxy_epochs, settings=settings
        )
        try:
            # Through the policy, as the written file will be: what runs is what is saved.
            policy = search_policy(trial.name, [pipeline], settings=settings)
            (candidate,) = run_pipeline(pipeline_of(policy), loaded.model, ctx)
            trial.train_seconds = sum(
                n.seconds for n in candidate.nodes if n.pass_name == "distill"
            )
            trial.quality = scorer(candidate.model)
            trial.baseline_ms, trial.latency_ms = latency(loaded.model, candidate.model)
        except CompressKitError as error:
            trial.error = " ".join(str(error).split())
        else:
            trial.state = "complete"
            trial.speedup = trial.baseline_ms / trial.latency_ms
        trial.seconds = time.monotonic() - begin
        return trial

    slack = goal.default_slack() if options.proxy_slack is None else options.proxy_slack
    record.proxy_slack = slack
    plan = Plan(
        space, settings, goal, options.proxy_epochs, options.final_epochs, options.final, slack
    )
    bold = space.boldest()
    if bold is not None:  # the fastest corner first: the proxy alone would rarely go there
        study.enqueue_trial(bold)
    record.stopped = "the time limit"
    while True:
        if options.trials is not None and len(record.trials) >= options.trials:
            record.stopped = f"{options.trials} trials"
            break
        next_trial = max((t.seconds for t in record.trials), default=0.0)
        # Time kept for the final training of the best so far, but never more than half
        # the limit: past that, the final training is shortened rather than the search.
        reserve = min(
            final_seconds(ranked(record.front(), slack)[: options.final], plan),
            time_limit / 2,
        )
        if time.monotonic() + next_trial + reserve > deadline:
            break
        asked = study.ask()
        trial = run_trial(asked.number, space.suggest(asked))
        if trial.state == "complete":
            assert trial.quality is not None and trial.latency_ms is not None
            assert trial.baseline_ms is not None
            trial.violations = goal.violations(
                trial.quality,
                record.baseline_quality,
                latency_ms=trial.latency_ms,
                baseline_ms=trial.baseline_ms,
            )
            trial.feasible = all(v <= 0 for v in trial.violations)
            if set_constraint:
                for index, value in enumerate(trial.violations):
                    asked.set_constraint(f"limit{index}", value)
            else:
                asked.set_user_attr("constraints", trial.violations)
            study.tell(asked, [trial.quality, trial.latency_ms])
        else:
            study.tell(asked, state=optuna.trial.TrialState.FAIL)
        record.trials.append(trial)
        _progress(record, deadline)

    front = record.front()
    for trial in front:
        trial.on_front = True
    with staged_directory(final_dir) as tmp:
        (tmp / "front").mkdir()
        for trial in front:
            trial.policy = f"front/{trial.name}.yaml"
            policy = plan.policy(trial, epochs=options.final_epochs)
            (tmp / trial.policy).write_text(policy_yaml(policy))
        train_final(
            record,
            plan,
            loaded,
            bundle,
            tmp,
            deadline=deadline,
            latency_seconds=options.latency_seconds,
        )
        record.seconds = time.monotonic() - started
        write_outputs(record, tmp)
    return SearchResult(record, final_dir)


def _progress(record: SearchRecord, deadline: float) -> None:
    trial = record.trials[-1]
    front = ", ".join(t.name for t in record.front()) or "none yet"
    left = max(0.0, deadline - time.monotonic())
    if trial.state == "complete":
        what = f"{record.metric} {trial.quality:.4f}, {trial.latency_ms:.3f} ms"
        what += " (within budget)" if trial.feasible else ""
    else:
        what = f"failed: {trial.error}"
    status(
        f"search: {len(record.trials)} trials done; {trial.name} {trial.description}: {what}; "
        f"front: {front}; {human_seconds(left)} left"
    )


def _bundle(
    data: DataBundle | str | None, loaded: LoadedModel, seed: int, task: str | None
) -> DataBundle:
    """The data, judged as ``task``, else as what the model computes (a Hugging Face
    model's head), else as the data's own task (as :func:`compresskit.run` does)."""
    if isinstance(data, DataBundle):
        bundle = data
    else:
        spec = data or loaded.default_data
        if spec is None:
            raise CompressKitError(
                "search: no data given and the model has no default dataset: pass --data"
            )
        bundle = load_data(spec, seed=seed, preprocessing=loaded.preprocessing)
    model_task = loaded.source.get("task")
    task = task or (model_task if isinstance(model_task, str) else None)
    if task is None or task == bundle.task:
        return bundle
    labelled = get_task(task).labelled
    return replace(bundle, task=task, num_classes=bundle.num_classes if labelled else None)


def _default_out() -> Path:
    return Path("runs") / f"search-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
