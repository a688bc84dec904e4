"""The one training loop every training pass uses (distillation, QAT, fine-tuning).

Passes contribute an :class:`Objective` (a loss, extra trainable modules that never
become part of the model, a per-step hook); the loop owns optimisation, the schedule,
validation, early stopping, keeping the best state and progress. Distributed training
replaces exactly three things, all in :class:`Runtime`: how the model is wrapped, how the
training data is sampled, and how per-process numbers are reduced.

Example::

    history = train(model, data, TrainConfig(epochs=3), objective=Objective(loss=my_loss))
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.utils.data import DataLoader, Dataset

from compresskit.data.bundle import DataBundle
from compresskit.errors import CompressKitError
from compresskit.progress import progress_bar, status
from compresskit.tasks import MetricFn, Task
from compresskit.tasks.base import to_device
from compresskit.training import distributed
from compresskit.units import human_seconds

Inputs = tuple[torch.Tensor, ...]
# A loss returns one scalar, or named (already weighted) terms that the loop sums and logs.
LossValue = torch.Tensor | Mapping[str, torch.Tensor]
# (model, inputs, labels) -> loss; the model is called as model(*inputs)
LossFn = Callable[[nn.Module, Inputs, torch.Tensor], LossValue]


class TrainConfig(BaseModel):
    """Optimisation settings shared by every training pass."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    epochs: int = Field(default=5, ge=1, le=10_000)
    steps: int | None = Field(
        default=None,
        ge=1,
        le=100_000_000,
        description="optimizer steps in all; overrides epochs when set",
    )
    eval_every: int | None = Field(
        default=None,
        ge=1,
        le=100_000_000,
        description="steps between validations; default one epoch",
    )
    lr: float = Field(default=1e-3, gt=0, le=10)
    batch_size: int = Field(default=64, ge=1, le=65_536)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = Field(default=0.0, ge=0, le=10)
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = Field(
        default=0, ge=0, le=100_000_000, description="linear warm-up before the schedule"
    )
    grad_clip: float | None = Field(default=1.0, gt=0, le=1e6)
    keep_best: bool = True
    monitor: Literal["accuracy", "agreement", "cosine", "log_likelihood"] | None = Field(
        default=None,
        description="validation metric that picks the best state and early stopping "
        "(agreement: with the teacher, for unlabelled data; cosine: of the embeddings to "
        "the teacher's, for embedding tasks; log_likelihood: mean per-token log-likelihood "
        "of the val windows, for causal LMs); default: the task's first (accuracy, cosine, "
        "log_likelihood)",
    )
    patience: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="stop after this many validations without improvement",
    )
    stop_at_budget: bool = Field(
        default=False,
        description="stop as soon as the validation metric is within the policy budget",
    )
    sharding: distributed.Sharding = Field(
        default="ddp",
        description="with --nproc > 1: ddp replicates the model, its gradients and optimizer "
        "state in every process; fsdp shards them over the processes (torch fully_shard)",
    )


@dataclass
class Objective:
    """What a training pass contributes to the loop.

    ``loss`` is called as ``loss(model, inputs, labels)``. ``modules`` are trained with the
    model but are never part of it (projectors of hidden-state distillation): the loop
    moves them to the device and optimises them, and the caller drops them afterwards.
    ``on_step(state)`` runs after every optimizer step (loss-driven schedules).
    """

    loss: LossFn
    modules: Sequence[nn.Module] = ()
    on_step: Callable[[StepState], None] | None = None


@dataclass
class StepState:
    step: int  # optimizer steps done
    total_steps: int
    loss: float  # of the step just taken


@dataclass
class EpochRecord:
    """One validation: after ``step`` optimizer steps (``epoch`` counts validations)."""

    epoch: int
    step: int
    loss: float
    accuracy: float
    metrics: dict[str, float] = field(default_factory=dict)
    parts: dict[str, float] = field(default_factory=dict)
    lr: float = 0.0


@dataclass
class TrainHistory:
    """Loss and validation metrics per epoch, which epoch's weights were kept, and why
    training stopped."""

    epochs: list[EpochRecord] = field(default_factory=list)
    best_epoch: int | None = None
    stopped: str = "completed"

    def as_dict(self) -> dict[str, object]:
        return {
            "epochs": [vars(record) for record in self.epochs],
            "best_epoch": self.best_epoch,
            "stopped": self.stopped,
        }


@dataclass
class Runtime:
    """Where training runs, and the single points distributed training replaces.

    In one process these are no-ops; under torchrun (training/distributed.py) ``wrap``
    puts the model in DistributedDataParallel (``shard``, for ``train.sharding: fsdp``,
    trains a copy sharded with fully_shard, and ``finish`` gathers its weights back into
    the model), ``train_loader`` gives each rank its
    share of every global batch, ``all_reduce`` sums across ranks, ``sync`` averages the
    gradients of modules outside the model (projectors) and ``before_validation`` gives
    every rank rank 0's BatchNorm statistics.
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def wrap(self, module: nn.Module) -> nn.Module:
        return distributed.wrap(module)

    def shard(self, module: nn.Module) -> nn.Module:
        """What ``wrap`` is for ``train.sharding: fsdp``: a sharded copy of ``module``."""
        return distributed.wrap(module, "fsdp")

    def trained(self, model: nn.Module, wrapped: nn.Module) -> nn.Module:
        """The module whose parameters training updates: ``model``, or its sharded copy."""
        return wrapped if distributed.is_sharded(wrapped) else model

    def finish(self, model: nn.Module, trained: nn.Module) -> None:
        """Give ``model`` the trained weights (gathered, when a sharded copy trained)."""
        if trained is not model:
            model.load_state_dict(distributed.gather_state_dict(trained))

    def train_loader(self, dataset: Dataset, *, batch_size: int, seed: int) -> DataLoader:
        return distributed.train_loader(dataset, batch_size=batch_size, seed=seed)

    def set_epoch(self, loader: DataLoader, epoch: int) -> None:
        distributed.set_epoch(loader, epoch)

    def all_reduce(self, values: torch.Tensor) -> torch.Tensor:
        return distributed.all_reduce_sum(values)

    def sync(self, parameters: Iterable[nn.Parameter]) -> None:
        distributed.average_gradients(parameters)

    def before_validation(self, model: nn.Module) -> None:
        distributed.sync_buffers(model)

    @property
    def is_main(self) -> bool:
        return distributed.current().is_main


def task_loss(task: Task) -> LossFn:
    """The task's own loss on labels (cross-entropy for classification), as a LossFn."""

    def loss(model: nn.Module, inputs: Inputs, y: torch.Tensor) -> torch.Tensor:
        return task.loss(task.adapt(model(*inputs), inputs), y)

    return loss


# Without a live bar, a progress line at a validation at most this often (seconds).
PROGRESS_LINE_SECONDS = 30.0


def _optimizer(parameters: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            parameters, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay
        )
    return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)


def lr_factor(step: int, *, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine to zero (or constant)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _cycle(loader: DataLoader, runtime: Runtime) -> Iterator[tuple[int, list[torch.Tensor]]]:
    """Batches forever, with the epoch each comes from (a fresh shuffle per epoch)."""
    epoch = 0
    while True:
        runtime.set_epoch(loader, epoch)
        for batch in loader:
            yield epoch, batch
        epoch += 1


def train(
    model: nn.Module,
    data: DataBundle,
    config: TrainConfig,
    *,
    objective: Objective | None = None,
    loss_fn: LossFn | None = None,
    extra_parameters: Iterable[nn.Parameter] = (),
    metric_fn: MetricFn | None = None,
    stop_at: float | None = None,
    seed: int | None = None,
    runtime: Runtime | None = None,
    description: str = "training",
) -> TrainHistory:
    """Train ``model`` in place on ``data.train``; validate on ``data.val`` and keep the
    best weights (``data.eval`` stays unseen for the report).

    The loss defaults to the task's loss on labels and ``metric_fn`` to the task's
    validation metrics (both from ``data.contract``). ``stop_at`` is the value of the
    monitored validation metric at which the policy budget is met (used with
    ``config.stop_at_budget``). ``loss_fn`` and ``extra_parameters`` are the short form
    of ``objective``.
    """
    task = data.contract
    if objective is not None and loss_fn is not None:
        raise TypeError("train() takes objective or loss_fn, not both")
    if objective is None or metric_fn is None:
        # The defaults train and validate on labels.
        task.require_labels(description)
    if objective is None:
        objective = Objective(loss=loss_fn or task_loss(task))
    if metric_fn is None:
        metric_fn = task.validation(None)
    monitor = task.monitor(config.monitor, what=description)
    if config.stop_at_budget and stop_at is None:
        raise CompressKitError(
            f"{description}: train.stop_at_budget needs a budget for val {monitor} in the "
            "policy (budget.max_accuracy_drop, min_agreement, min_cosine...); remove "
            "stop_at_budget or set one"
        )
    runtime = runtime or Runtime()
    if seed is not None:
        torch.manual_seed(seed)
    model.to(runtime.device)
    for module in objective.modules:
        module.to(runtime.device)
    # The one place the model is wrapped, e.g. in DDP. Extra modules (projectors) are
    # called by the loss directly, so their gradients are averaged by runtime.sync.
    wrapped = runtime.shard(model) if config.sharding == "fsdp" else runtime.wrap(model)
    # What training updates: the model, or under FSDP its sharded copy, whose weights
    # runtime.finish gathers back into the model at the end.
    trained = runtime.trained(model, wrapped)
    extras = list(objective.modules)
    outside = list(extra_parameters)
    outside += [p for m in objective.modules for p in m.parameters() if p.requires_grad]
    parameters = [p for p in trained.parameters() if p.requires_grad] + outside
    optimizer = _optimizer(parameters, config)
    loader = runtime.train_loader(
        data.train, batch_size=config.batch_size, seed=data.seed if seed is None else seed
    )
    if len(loader) == 0:
        raise CompressKitError(f"{description}: the training split is empty; give more data")
    total = config.steps or config.epochs * len(loader)
    eval_every = min(config.eval_every or len(loader), total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(
            step, total=total, warmup=config.warmup_steps, schedule=config.schedule
        ),
    )
    val_loader = data.loader("val", batch_size=256)
    history = TrainHistory()
    best_value, best_state = -math.inf, None
    stale = 0
    sums = torch.zeros(2, dtype=torch.float64)  # loss sum, batches since the last validation
    parts: dict[str, float] = {}
    started = last_line = time.monotonic()
    with progress_bar(description, total=total) as bar:
        wrapped.train()
        for module in extras:
            module.train()
        batches = _cycle(loader, runtime)
        for step in range(1, total + 1):
            _, batch = next(batches)
            *inputs, y = to_device(batch, runtime.device)
            value = objective.loss(wrapped, tuple(inputs), y)
            if isinstance(value, Mapping):
                loss = torch.stack([term for term in value.values()]).sum()
                for name, term in value.items():
                    parts[name] = parts.get(name, 0.0) + float(term.detach())
            else:
                loss = value
            if not torch.isfinite(loss):
                raise CompressKitError(
                    f"{description}: the loss became {float(loss.detach())} at step {step}; "
                    "lower train.lr or the loss weights"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            runtime.sync(outside)
            if config.grad_clip is not None:
                distributed.clip_grad_norm(parameters, config.grad_clip)
            optimizer.step()
            scheduler.step()
            step_loss = float(loss.detach())
            sums += torch.tensor([step_loss, 1.0], dtype=torch.float64)
            if objective.on_step is not None:
                objective.on_step(StepState(step, total, step_loss))
            info = f"loss {float(sums[0] / sums[1]):.4f}"
            if history.epochs:
                info += f" val {monitor} {history.epochs[-1].metrics[monitor]:.4f}"
            bar.update(bar.task_ids[0], advance=1, info=info)
            if step % eval_every and step != total:
                continue

            # Validation: the train loss is averaged across processes, the metric is
            # computed on the whole (small) val split, identically in every process.
            reduced = runtime.all_reduce(sums.clone())
            mean_loss = float(reduced[0] / reduced[1].clamp(min=1))
            runtime.before_validation(trained)
            metrics = metric_fn(trained, val_loader)
            if monitor not in metrics:
                raise CompressKitError(
                    f"{description}: train.monitor is {monitor!r} but this pass "
                    f"measures only {', '.join(metrics)}; choose one of them"
                )
            value_now = metrics[monitor]
            record = EpochRecord(
                epoch=len(history.epochs),
                step=step,
                loss=mean_loss,
                accuracy=metrics.get("accuracy", float("nan")),
                metrics=metrics,
                parts={k: v / max(float(sums[1]), 1.0) for k, v in parts.items()},
                lr=float(scheduler.get_last_lr()[0]),
            )
            history.epochs.append(record)
            now = time.monotonic()
            if bar.disable and step != total and now - last_line >= PROGRESS_LINE_SECONDS:
                # No live bar (stderr is a pipe or a file): a line now and then, so a log
                # of a long run shows how far it is.
                last_line = now
                left = (now - started) / step * (total - step)
                status(
                    f"{description}: step {step}/{total}, loss {mean_loss:.4f}, val "
                    f"{monitor} {value_now:.4f}; about {human_seconds(left)} left"
                )
            sums.zero_()
            parts.clear()
            if value_now > best_value:
                best_value, stale = value_now, 0
                if config.keep_best:
                    best_state = copy.deepcopy(trained.state_dict())
                    history.best_epoch = record.epoch
            else:
                stale += 1
            wrapped.train()
            if config.stop_at_budget and stop_at is not None and value_now >= stop_at:
                history.stopped = f"budget met (val {monitor} {value_now:.4f})"
                break
            if config.patience is not None and stale >= config.patience:
                history.stopped = f"no val improvement in {config.patience} validations"
                break
    if best_state is not None:
        trained.load_state_dict(best_state)
    runtime.finish(model, trained)
    model.eval()
    last = history.epochs[-1]
    kept = f" (kept validation {history.best_epoch}: {best_value:.4f})" if best_state else ""
    status(
        f"{description}: {last.step} steps, loss {last.loss:.4f}, val {monitor} "
        f"{last.metrics[monitor]:.4f}{kept}; {history.stopped}"
    )
    return history
