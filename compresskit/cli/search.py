"""``compresskit search``: a budgeted search over compression policies (a thin wrapper
over :func:`compresskit.policy_search.search`)."""

from __future__ import annotations

from pathlib import Path

import click

from compresskit.cli.group import MAX_SECONDS, TRUST_FACTORY_HELP, Seconds, cli

# A search of a day is long; more is a typo.
MAX_TIME_LIMIT = 7 * 24 * 3600.0


@cli.command(short_help="Search pruning, depth and precision within a budget and a time limit.")
@click.argument("checkpoint", required=False)
@click.option("--data", "data_spec", help="Dataset, as for compress (default: the model's).")
@click.option(
    "--task",
    type=click.Choice(["classification", "embedding", "fidelity"]),
    help="How the model is judged (as for compress).",
)
@click.option("--arch", help="MODULE:FACTORY building the architecture of a state-dict checkpoint.")
@click.option("--trust-pickle", is_flag=True, help="Allow loading a fully pickled model.")
@click.option("--trust-factory", is_flag=True, help=TRUST_FACTORY_HELP)
@click.option("--max-accuracy-drop", type=float, help="Quality budget: accuracy points lost.")
@click.option("--min-cosine", type=float, help="Quality budget (embeddings): lowest cosine.")
@click.option("--min-speedup", type=float, help="Speed budget: p50 speedup over the baseline.")
@click.option("--max-latency-ms", type=float, help="Speed budget: highest p50 in ms.")
@click.option(
    "--time-limit",
    required=True,
    type=Seconds(min=0, max=MAX_TIME_LIMIT),
    help="Wall-clock seconds for the whole search, final training included.",
)
@click.option("--target", default="cpu-ort", show_default=True, help="Export target timed.")
@click.option(
    "--batch", default=32, show_default=True, type=click.IntRange(1, 4096), help="Batch timed."
)
@click.option("--trials", type=click.IntRange(min=1), help="At most this many trials.")
@click.option(
    "--final",
    default=3,
    show_default=True,
    type=click.IntRange(min=1),
    help="Front members trained for --final-epochs at the end.",
)
@click.option("--proxy-epochs", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--final-epochs", default=8, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--proxy-slack",
    type=click.FloatRange(0, 1),
    help="A trial whose proxy quality misses the budget by at most this (speed limits met) "
    "may still be trained in full [default: as much again as the budget allows to lose].",
)
@click.option("--max-stages", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--no-quantize", is_flag=True, help="Search float models only.")
@click.option("--no-precision-by-latency", is_flag=True, help="int8 everywhere or not at all.")
@click.option("--no-depth", is_flag=True, help="Never remove blocks.")
@click.option("--round-to", type=click.IntRange(min=1), help="Pruned widths a multiple of this.")
@click.option(
    "--latency-seconds",
    default=0.2,
    show_default=True,
    type=Seconds(min=0.01, max=MAX_SECONDS),
    help="Time budget per latency measurement in a trial.",
)
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**63 - 1))
@click.option(
    "--out", type=click.Path(path_type=Path), help="Run directory (default runs/search-<time>)."
)
@click.option("--json", "as_json", is_flag=True, help="Print search.json on stdout.")
@click.pass_context
def search(
    ctx: click.Context,
    checkpoint: str | None,
    data_spec: str | None,
    task: str | None,
    arch: str | None,
    trust_pickle: bool,
    trust_factory: bool,
    max_accuracy_drop: float | None,
    min_cosine: float | None,
    min_speedup: float | None,
    max_latency_ms: float | None,
    time_limit: float,
    target: str,
    batch: int,
    trials: int | None,
    final: int,
    proxy_epochs: int,
    final_epochs: int,
    proxy_slack: float | None,
    max_stages: int,
    no_quantize: bool,
    no_precision_by_latency: bool,
    no_depth: bool,
    round_to: int | None,
    latency_seconds: float,
    seed: int,
    out: Path | None,
    as_json: bool,
) -> None:
    """Search channel ratios per stage, depth and precision of CHECKPOINT (default:
    example:digits-cnn) for the fastest models within the budget, scoring each trial by a
    short distillation; train the best of the Pareto front for longer and measure them
    against the baseline. Writes search.md, front.png, front/<trial>.yaml (policies for
    compress --policy) and final/ (the run's report) to --out.

    Exits 0 when a finally trained candidate meets the budget, 3 when none does, 2 on bad
    input (checked before any work)."""
    from compresskit.bench.verdict import EXIT_BUDGET_MISSED, EXIT_OK
    from compresskit.models.loading import load_model
    from compresskit.policy_search import Goal, SearchOptions
    from compresskit.policy_search.front import markdown
    from compresskit.policy_search.goal import check_request
    from compresskit.policy_search.runner import search as run_search

    goal = Goal(max_accuracy_drop, min_cosine, min_speedup, max_latency_ms)
    options = SearchOptions(
        trials=trials,
        final=final,
        proxy_epochs=proxy_epochs,
        final_epochs=final_epochs,
        proxy_slack=proxy_slack,
        latency_seconds=latency_seconds,
        max_stages=max_stages,
        quantize=not no_quantize,
        precision_by_latency=not no_precision_by_latency,
        depth=not no_depth,
        round_to=round_to,
    )
    check_request(
        goal, time_limit=time_limit, target=target, batch=batch, seed=seed, options=options
    )
    loaded = load_model(
        checkpoint, arch=arch, trust_pickle=trust_pickle, trust_factory=trust_factory, task=task
    )
    result = run_search(
        loaded,
        data_spec,
        time_limit=time_limit,
        **goal.limits(),
        target=target,
        batch=batch,
        out=out,
        seed=seed,
        options=options,
        task=task,
    )
    click.echo(markdown(result.record), err=as_json)
    click.echo(f"run directory: {result.run_dir}", err=as_json)
    if as_json:
        click.echo(result.record.model_dump_json(indent=2))
    met = any(t.final and t.final.meets_budget for t in result.record.trials)
    ctx.exit(EXIT_OK if met else EXIT_BUDGET_MISSED)
