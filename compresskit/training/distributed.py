"""Training passes on several processes or machines: torch.distributed + DDP, via torchrun.

Every rank runs the whole pipeline. Structural passes (pruning, quantization insertion)
are deterministic, so they run identically everywhere; :func:`wrap` checks that the ranks
really hold the same model (an all-gathered checksum) before training starts. Training
passes wrap the student in DistributedDataParallel and shard the training data with a
DistributedSampler. Export, verification, benchmarks and the report run on rank 0 alone
(:func:`main_only`) after every rank has finished; the other ranks wait for its result.

Global batch semantics: ``train.batch_size`` is the global batch. Each rank takes
``batch_size / world_size`` samples per step, and the sampler's permutation does not
depend on the world size, so a run on N processes sees the same batches, in the same
order, as one process (up to float rounding and BatchNorm statistics per rank).

Example::

    with session("auto") as world:
        loader = train_loader(dataset, batch_size=64, seed=0)
        student = wrap(model)
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_args

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from compresskit.digest import state_dict_sha256
from compresskit.errors import CompressKitError

BackendChoice = Literal["auto", "gloo", "nccl"]
# How training spreads the model over processes: DDP replicates it (and its gradients and
# optimizer state) in every process; FSDP shards all three (torch's fully_shard).
Sharding = Literal["ddp", "fsdp"]
BACKEND_ENV = "COMPRESSKIT_BACKEND"
TIMEOUT_ENV = "COMPRESSKIT_DIST_TIMEOUT"  # seconds; every collective fails after this
DEFAULT_TIMEOUT_S = 1800.0
T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place in the run; one process (rank 0 of 1) when not distributed."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def current() -> World:
    """The world of the initialised process group, or a single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        backend=str(dist.get_backend()),
    )


def launched_by_torchrun() -> bool:
    """Whether the environment describes more than one process (torchrun sets it)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def choose_backend(requested: str | None, device: torch.device) -> str:
    """``auto`` (or nothing; ``$COMPRESSKIT_BACKEND`` first) is nccl for CUDA training and
    gloo for CPU training. compresskit's training loop runs on CPU today, so auto -> gloo."""
    choice = requested or os.environ.get(BACKEND_ENV) or "auto"
    if choice not in get_args(BackendChoice):
        raise CompressKitError(
            f"backend {choice!r} is not one of auto, gloo, nccl; fix --backend or ${BACKEND_ENV}"
        )
    if choice == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if choice == "nccl" and device.type != "cuda":
        raise CompressKitError(
            "backend nccl needs CUDA tensors but training runs on the CPU; use --backend gloo"
        )
    return choice


def timeout() -> dt.timedelta:
    raw = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(raw)
        if seconds <= 0:
            raise ValueError
    except ValueError:
        raise CompressKitError(
            f"${TIMEOUT_ENV}={raw!r}: give a positive number of seconds"
        ) from None
    return dt.timedelta(seconds=seconds)


def setup(backend: str | None = None, *, device: torch.device | None = None) -> World:
    """Join the process group torchrun described in the environment (idempotent); a
    no-op in a single process. Ranks other than 0 print no progress (``progress.quiet``);
    the CLI makes SIGTERM (how torchrun stops the survivors when a rank fails) unwind
    Python, so no half-written directory is left."""
    if dist.is_initialized() or not launched_by_torchrun():
        return current()
    chosen = choose_backend(backend, device or torch.device("cpu"))
    dist.init_process_group(backend=chosen, timeout=timeout())
    return current()


@contextmanager
def session(backend: str | None = None) -> Iterator[World]:
    """:func:`setup`, and leave the process group at the end if this call joined it.

    Only after success, and together (a barrier): a rank that tears the group down alone
    aborts the others. After a failure the process just exits and torchrun stops the rest.
    """
    joined = not dist.is_initialized() and launched_by_torchrun()
    world = setup(backend)
    yield world
    if joined and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# --- training -------------------------------------------------------------------------


def check_same_model(model: nn.Module) -> None:
    """Fail on every rank, before training, if the ranks hold different models."""
    world = current()
    if not world.distributed:
        return
    sums: list[Any] = [None] * world.world_size
    dist.all_gather_object(sums, state_dict_sha256(model))
    differ = [rank for rank, value in enumerate(sums) if value != sums[0]]
    if differ:
        raise CompressKitError(
            f"ranks {differ} hold a different model than rank 0 before training (parameter "
            "checksums differ); a structural pass is not deterministic: fix its seed or run "
            "with --nproc 1"
        )


def wrap(model: nn.Module, sharding: Sharding = "ddp") -> nn.Module:
    """The module a training step calls: ``model`` itself in one process, else a
    DistributedDataParallel around it, or (``fsdp``) a copy of it sharded with
    :func:`shard`, once the ranks are checked to agree. Rank r draws random numbers from
    ``initial_seed + r``: deterministic, different per rank, and rank 0 draws what a single
    process would."""
    world = current()
    if not world.distributed:
        return model
    check_same_model(model)
    torch.manual_seed(torch.initial_seed() + world.rank)
    if sharding == "fsdp":
        return shard(model)
    device_ids = [world.local_rank] if world.backend == "nccl" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The members of the longest ModuleList of same-class modules (transformer layers)."""
    best: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > len(best):
            if len({type(child) for child in module}) == 1:
                best = list(module)
    return best


def shard(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters, gradients and optimizer state are sharded over
    the ranks (FSDP2 ``fully_shard``): each block of its layer stack is one unit, the rest
    (embeddings, final norm, head) the root unit. The root keeps its parameters gathered
    from forward to backward, so a loss may apply the output head to hidden states outside
    the forward (chunked LM losses do). The caller copies the trained weights back with
    :func:`gather_state_dict`; the model itself is never changed."""
    import copy

    from torch.distributed.fsdp import fully_shard

    sharded = copy.deepcopy(model)
    for block in _blocks(sharded):
        fully_shard(block)
    fully_shard(sharded, reshard_after_forward=False)
    return sharded


def is_sharded(module: nn.Module) -> bool:
    if not current().distributed:
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def clip_grad_norm(parameters: Sequence[nn.Parameter], max_norm: float) -> None:
    """``clip_grad_norm_`` over parameters that may mix FSDP shards (DTensors, whose norm
    is reduced over the ranks) and plain tensors (a loss's own modules, already averaged)."""
    if not current().distributed:
        nn.utils.clip_grad_norm_(parameters, max_norm)
        return
    from torch.distributed.tensor import DTensor

    with_grad = [p for p in parameters if p.grad is not None]
    sharded = [p for p in with_grad if isinstance(p.grad, DTensor)]
    if not sharded:
        nn.utils.clip_grad_norm_(parameters, max_norm)
        return
    plain = [p for p in with_grad if not isinstance(p.grad, DTensor)]
    sharded_norm: Any = nn.utils.get_total_norm([p.grad for p in sharded if p.grad is not None])
    norms = [sharded_norm.full_tensor()]
    if plain:
        norms.append(nn.utils.get_total_norm([p.grad for p in plain if p.grad is not None]))
    total = torch.stack(norms).norm()
    for group in (sharded, plain):
        if group:
            nn.utils.clip_grads_with_norm_(group, max_norm, total)


def gather_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict of a module sharded by :func:`shard`, on every rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state: Any = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True))
    return state  # type: ignore[no-any-return]


def train_loader(dataset: Dataset, *, batch_size: int, seed: int) -> DataLoader:
    """This rank's share of every global batch of ``batch_size`` samples, reshuffled each
    epoch by :func:`set_epoch`. The permutation is the same at any world size."""
    world = current()
    if batch_size % world.world_size:
        raise CompressKitError(
            f"train.batch_size {batch_size} is the global batch and must divide evenly over "
            f"{world.world_size} processes; use a multiple of {world.world_size}"
        )
    sampler: DistributedSampler[Any] = DistributedSampler(
        dataset, num_replicas=world.world_size, rank=world.rank, shuffle=True, seed=seed
    )
    return DataLoader(dataset, batch_size=batch_size // world.world_size, sampler=sampler)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)


def _tensor(values: Sequence[float]) -> torch.Tensor:
    device = f"cuda:{current().local_rank}" if current().backend == "nccl" else "cpu"
    return torch.tensor(values, dtype=torch.float64, device=device)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over all ranks (a copy in one process)."""
    if not current().distributed:
        return values
    total = values.to(_tensor([0.0]).device, dtype=torch.float64)
    dist.all_reduce(total)
    return total.to(values.device)


def sync_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics move with local batches)."""
    if current().distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def average_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """All-reduce the gradients of parameters outside the DDP module (e.g. a loss's own)."""
    world = current()
    if not world.distributed:
        return
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)
            parameter.grad /= world.world_size


# --- outputs ----------------------------------------------------------------------------


def main_only(produce: Callable[[], T], *, what: str) -> T:
    """Run ``produce`` on rank 0 once every rank is done (a barrier, so it has the cores
    to itself) and hand its result, or its failure, to the waiting ranks."""
    world = current()
    if not world.distributed:
        return produce()
    dist.barrier()
    box: list[Any] = [None]
    if world.is_main:
        try:
            box[0] = ("ok", produce())
        except BaseException as error:
            dist.broadcast_object_list([("error", f"{type(error).__name__}: {error}")], src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    state, value = box[0]
    if state == "error":
        raise CompressKitError(f"rank 0 failed during {what}: {value}")
    return value  # type: ignore[no-any-return]


# --- launching --------------------------------------------------------------------------


def launch(nproc: int, argv: Sequence[str]) -> None:
    """``torchrun --standalone --nproc-per-node nproc -m compresskit *argv``, in process
    (torch.distributed.run's API). A failed rank ends the run: torchrun stops the others,
    and this raises with every failed rank's error, the first one first."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    # torchrun's own logs go to a folder removed afterwards (by default a temp dir it leaves).
    logs = tempfile.TemporaryDirectory(prefix="compresskit-torchrun-")
    args = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", f"--log-dir={logs.name}"]
        + ["--module", "compresskit", *argv]
    )
    try:
        run(args)
    except ChildFailedError as error:
        failures = sorted(error.failures.items(), key=lambda item: (item[1].timestamp, item[0]))
        parts = []
        for rank, failure in failures:
            message = failure.message
            if isinstance(message, dict):
                message = message.get("message", "")
            text = str(message).strip().splitlines()[-1:] or [f"exit code {failure.exitcode}"]
            parts.append(f"rank {rank} (exit code {failure.exitcode}): {text[0]}")
        raise CompressKitError(f"{nproc}-process run failed; " + "; ".join(parts)) from None
    finally:
        logs.cleanup()


def record_error(error: BaseException) -> None:
    """Leave ``error`` where torchrun reads a failed rank's reason (a no-op elsewhere)."""
    if os.environ.get("TORCHELASTIC_ERROR_FILE"):
        from torch.distributed.elastic.multiprocessing.errors import get_error_handler

        get_error_handler().record_exception(error)
