"""A task without counterfactual tokens, for the refusals of target 'diff' and of counter-only outputs.

Every built-in task has counterfactual tokens (addition and list_update: the answers of their
corrupted twins), but a custom task may have none, and so may stores ingested before the twins
existed. `no_counter_task()` registers `addition_no_counter` (addition, twins kept, no counter
tokens) for the duration of a with-block.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from actstore.datasets import TASKS, TaskData, register_task
from actstore.datasets.addition import Addition


class AdditionNoCounter(Addition):
    name: ClassVar[str] = "addition_no_counter"

    def generate(self, n: int, seed: int, tokenizer: Any = None) -> TaskData:
        return dataclasses.replace(super().generate(n, seed, tokenizer), task=self.name, counter_tokens=None)


@contextmanager
def no_counter_task() -> Iterator[str]:
    """The name of a registered addition task without counterfactual tokens (unregistered on exit)."""
    register_task(AdditionNoCounter)
    try:
        yield AdditionNoCounter.name
    finally:
        TASKS.pop(AdditionNoCounter.name, None)
