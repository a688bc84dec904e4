"""Tasks: what a model outputs and how it is judged (see :mod:`compresskit.tasks.base`).

Each task registers here explicitly; ``get_task(name)`` is how every stage finds it.
"""

from __future__ import annotations

from compresskit.errors import CompressKitError
from compresskit.tasks.base import (
    Evaluation,
    Judgement,
    MetricColumn,
    MetricFn,
    Task,
    first_tensor,
    points,
)
from compresskit.tasks.classification import Classification
from compresskit.tasks.embedding import Embedding

_TASKS: dict[str, Task] = {task.name: task for task in (Classification(), Embedding())}


def register_task(task: Task) -> Task:
    """Make ``task`` available by its name (to data bundles, policies and reports)."""
    existing = _TASKS.get(task.name)
    if existing is not None and type(existing) is not type(task):
        raise ValueError(f"task name {task.name!r} is already registered by {type(existing)}")
    _TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The task registered as ``name``; a one-line error lists the known ones."""
    try:
        return _TASKS[name]
    except KeyError:
        raise CompressKitError(f"task {name!r} is not one of {', '.join(sorted(_TASKS))}") from None


def task_names() -> list[str]:
    return sorted(_TASKS)


__all__ = [
    "Evaluation",
    "Judgement",
    "MetricColumn",
    "MetricFn",
    "Task",
    "first_tensor",
    "get_task",
    "points",
    "register_task",
    "task_names",
]
