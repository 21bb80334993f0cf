"""Task generators: one module per seed task, all following `actstore.datasets.base.Task`."""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from actstore.datasets.base import Task, TaskData
from actstore.errors import InvalidParameterError, UnknownTaskError

# task name -> "module:Class", imported on first use
TASKS: dict[str, str] = {
    "addition": "actstore.datasets.addition:Addition",
    "list_update": "actstore.datasets.list_update:ListUpdate",
    "brackets": "actstore.datasets.brackets:Brackets",
    "ioi": "actstore.datasets.ioi:IOI",
    "days": "actstore.datasets.days:Days",
}


def get_task(name: str, **params: Any) -> Task:
    """The task called `name`, built with `params` (validated by the task)."""
    if name not in TASKS:
        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownTaskError(f"unknown task {name!r}{hint} (tasks: {', '.join(TASKS)})")
    module, cls = TASKS[name].split(":")
    task_cls = getattr(importlib.import_module(module), cls)
    try:
        return task_cls(**params)
    except TypeError as e:  # unexpected keyword
        raise InvalidParameterError(f"{name}: bad parameter ({e}); see help({cls}) for its parameters") from None


__all__ = ["TASKS", "Task", "TaskData", "get_task"]
