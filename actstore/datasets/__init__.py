"""Task generators: one module per seed task, all following `actstore.datasets.base.Task`.

Imports run one way: the leaf modules (`base`, `report_spec`, the word lists `ioi_words` and
`days_words`) import no task; `wordtok` reads the word lists; `templated` uses `wordtok` (on first use:
it needs the model extra's tokenizers, the text tasks' labels and report specs do not); the
text tasks (`ioi`, `days`) use `templated`; `prompts` reads the user's file through `prompt_file`
and tokenizes it with `templated`'s PromptTokenizer.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, TypeVar

from actstore.datasets.base import Task, TaskData
from actstore.datasets.report_spec import LabelSplit, NeuronScatter, ReportSpec, RoleAttention
from actstore.errors import InvalidParameterError, UnknownTaskError

# task name -> "module:Class" (imported on first use) or a class given to register_task: the generators,
# whose examples come from (params, n, seed) alone, every parameter having a default
TASKS: dict[str, str | type] = {
    "addition": "actstore.datasets.addition:Addition",
    "list_update": "actstore.datasets.list_update:ListUpdate",
    "brackets": "actstore.datasets.brackets:Brackets",
    "ioi": "actstore.datasets.ioi:IOI",
    "days": "actstore.datasets.days:Days",
}
# tasks over a file the user gives (a required `file` parameter): built by get_task like the generators
FILE_TASKS: dict[str, str] = {
    "prompts": "actstore.datasets.prompts:Prompts",
}

T = TypeVar("T", bound=type)


def register_task(task_cls: T) -> T:
    """Make `task_cls` (a Task class) available to `get_task`, ingest and the report under its `name`.

    Usable as a class decorator; registering the same class again is a no-op, another class under
    a taken name is refused.
    """
    name = getattr(task_cls, "name", None)
    if not isinstance(name, str) or not name:
        raise InvalidParameterError(f"register_task: {task_cls.__name__} has no class attribute `name` (a string)")
    if TASKS.get(name, task_cls) is not task_cls or name in FILE_TASKS:
        raise InvalidParameterError(f"register_task: a task named {name!r} is already registered")
    TASKS[name] = task_cls
    return task_cls


def get_task(name: str, **params: Any) -> Task:
    """The task called `name` (a generator or a file task), built with `params` (validated by the task)."""
    names = task_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownTaskError(f"unknown task {name!r}{hint} (tasks: {', '.join(names)})")
    entry = TASKS[name] if name in TASKS else FILE_TASKS[name]
    if isinstance(entry, str):
        module, cls = entry.split(":")
        entry = getattr(importlib.import_module(module), cls)
    try:
        task: Task = entry(**params)
    except TypeError as e:  # unexpected keyword
        raise InvalidParameterError(
            f"{name}: bad parameter ({e}); see help({entry.__name__}) for its parameters") from None
    return task


def task_names() -> list[str]:
    """Every task get_task builds: the generators, then the file tasks."""
    return [*TASKS, *FILE_TASKS]


__all__ = ["FILE_TASKS", "TASKS", "LabelSplit", "NeuronScatter", "ReportSpec", "RoleAttention", "Task", "TaskData",
           "get_task", "register_task", "task_names"]
