"""Wall time of the distillation stage on 1 and 2 processes (DDP over gloo, via torchrun).

The stage is what the default policy trains: DigitsCNN (width 32) pruned by half, then
distilled from the unpruned model on scikit-learn's digits. Each configuration runs in
its own ``torchrun --standalone`` launch; inside it only ``Distill.apply`` is timed,
between two barriers, so process start-up, data loading and pruning are not counted.
The global batch is the same in every configuration (``--batch-size``), so every
configuration does the same optimisation work (see README, "Distributed training").

Configurations are ``PROCSxTHREADS``: ``1x1`` and ``2x1`` compare one and two processes
with one thread each; ``1x2`` is one process using the same two cores through intra-op
threads, the alternative to DDP on one machine.

    python benchmarks/ddp_distill.py                 # full: 8 epochs, 3 repeats
    python benchmarks/ddp_distill.py --quick         # proves it works (results/quick/)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent


def worker(args: argparse.Namespace) -> None:
    """One rank of one configuration: time Distill.apply; rank 0 writes the numbers."""
    import torch
    import torch.distributed as dist

    from compresskit.context import Context
    from compresskit.data import load_data
    from compresskit.models.examples import DigitsCNN
    from compresskit.passes.distill import Distill, DistillConfig
    from compresskit.passes.prune_channels import PruneChannels, PruneChannelsConfig
    from compresskit.training import distributed
    from compresskit.training.loop import TrainConfig

    torch.set_num_threads(args.threads)
    with distributed.session("gloo") as world:
        data = load_data("digits", seed=0)
        torch.manual_seed(0)
        teacher = DigitsCNN(width=args.width).eval()
        example = data.example_inputs(batch_size=2)
        ctx = Context(data=data, teacher=teacher, example_inputs=example, seed=0)
        student = PruneChannels(PruneChannelsConfig(ratio=0.5)).apply(copy.deepcopy(teacher), ctx)
        config = DistillConfig(
            train=TrainConfig(epochs=args.epochs, batch_size=args.batch_size, keep_best=False)
        )
        if world.distributed:
            dist.barrier()
        cpu, start = time.process_time(), time.perf_counter()
        node_ctx = ctx.for_node()
        Distill(config).apply(student, node_ctx)
        if world.distributed:
            dist.barrier()
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        cpus: list[Any] = [cpu]
        if world.distributed:
            cpus = [None] * world.world_size
            dist.all_gather_object(cpus, cpu)
        if world.is_main:
            history = node_ctx.records["history"]["epochs"]
            Path(args.worker_out).write_text(
                json.dumps(
                    {
                        "wall_s": wall,
                        "cpu_s_per_rank": cpus,
                        "train_samples": len(data.train),  # type: ignore[arg-type]
                        "final_loss": history[-1]["loss"],
                        "final_val_accuracy": history[-1]["accuracy"],
                    }
                )
            )


def run_config(procs: int, threads: int, args: argparse.Namespace) -> dict[str, Any]:
    walls, last = [], {}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
            command += [f"--nproc-per-node={procs}", __file__, "--worker", "--worker-out"]
            command += [str(out), "--threads", str(threads), "--epochs", str(args.epochs)]
            command += ["--batch-size", str(args.batch_size), "--width", str(args.width)]
            env = {
                **os.environ,
                "OMP_NUM_THREADS": str(threads),
                "OMP_WAIT_POLICY": "PASSIVE",
                "COMPRESSKIT_QUIET": "1",
                "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            }
            process = subprocess.run(command, capture_output=True, text=True, env=env)
            if process.returncode != 0:
                raise SystemExit(f"{procs}x{threads} failed:\n{process.stderr[-3000:]}")
            last = json.loads(out.read_text())
            walls.append(last["wall_s"])
    wall = statistics.median(walls)
    samples = last["train_samples"] * args.epochs
    return {
        "config": f"{procs}x{threads}",
        "processes": procs,
        "threads_per_process": threads,
        "wall_s": wall,
        "wall_s_runs": walls,
        "samples_per_s": samples / wall,
        "samples_per_s_per_process": samples / wall / procs,
        "cpu_s_per_rank": last["cpu_s_per_rank"],
        "final_loss": last["final_loss"],
        "final_val_accuracy": last["final_val_accuracy"],
    }


def write(rows: list[dict[str, Any]], args: argparse.Namespace, path: Path) -> None:
    import torch

    reference = next(r for r in rows if r["config"] == "1x1")
    for row in rows:
        row["speedup_vs_1x1"] = reference["wall_s"] / row["wall_s"]
    meta = {
        "what": "wall time of Distill.apply (DigitsCNN width 32 pruned 50%, digits)",
        "epochs": args.epochs,
        "global_batch": args.batch_size,
        "repeats": args.repeats,
        "quick": args.quick,
        "cpu_count": os.cpu_count(),
        "load_average_1m_at_end": os.getloadavg()[0],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        "# Distillation stage on 1 and 2 processes (DDP, gloo)",
        "",
        f"{meta['what']}; {args.epochs} epochs, global batch {args.batch_size}, median of "
        f"{args.repeats} run(s); {meta['cpu_count']} CPUs, load average "
        f"{meta['load_average_1m_at_end']:.1f} at the end"
        + (" (QUICK setting: proves the script works, not a measurement)" if args.quick else "")
        + ".",
        "",
        "| procs x threads | wall s | speedup vs 1x1 | samples/s | samples/s per process "
        "| CPU s per rank | final loss | val acc |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['wall_s']:.2f} | {r['speedup_vs_1x1']:.2f}x "
            f"| {r['samples_per_s']:.0f} | {r['samples_per_s_per_process']:.0f} "
            f"| {', '.join(f'{c:.1f}' for c in r['cpu_s_per_rank'])} "
            f"| {r['final_loss']:.4f} | {r['final_val_accuracy']:.4f} |"
        )
    lines += [
        "",
        "Only `Distill.apply` is timed, between barriers (start-up, data and pruning are not). "
        "The teacher is untrained: this measures speed, not accuracy; final loss and val "
        "accuracy are there to show the configurations trained alike.",
        "",
    ]
    path.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 epoch, 1 repeat")
    parser.add_argument("--configs", default="1x1,2x1,1x2", help="PROCSxTHREADS, comma-separated")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64, help="the global batch")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.quick:
        args.epochs, args.repeats = 1, 1
    rows = []
    for config in args.configs.split(","):
        procs, threads = (int(v) for v in config.lower().split("x"))
        rows.append(run_config(procs, threads, args))
        print(f"{config}: {rows[-1]['wall_s']:.2f} s", flush=True)
    results = BENCH_DIR / "results" / ("quick" if args.quick else "")
    write(rows, args, results / "ddp_distill.json")


if __name__ == "__main__":
    main()
