"""The Task protocol and the columnar batch of examples every task produces.

A task is a deterministic generator: the same (params, n, seed) always gives the same
examples, so a store can record just the task spec and seed and be regenerated anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import polars as pl
import pyarrow as pa

from actstore.datasets.report_spec import ReportSpec
from actstore.errors import InvalidParameterError


@dataclass(frozen=True, eq=False)
class TaskData:
    """A batch of examples of one task, as arrays (one row per example).

    tokens:         [example, pos] int64, right-padded with `pad_id` to the longest example
    lengths:        [example] int64, the number of real tokens of each example
    answer_pos:     [example, answer] int64, the position whose logits predict each answer
    answer_tokens:  [example, answer] int64, the correct token at each answer position
    counter_tokens: [example, answer] int64, the counterfactual token, or None if the task has none
    roles:          [example, pos] str, the token's role ('' where it has none)
    str_tokens:     one list of token strings per example (length `lengths[i]`)
    text:           one string per example
    labels:         a Polars DataFrame, one row per example, one column per label
    pad_id:         the token id that pads `tokens` (and `corrupted_tokens`)
    extra:          task-specific facts that are not per example (e.g. the brackets' class names)
    corrupted_tokens: [example, pos] int64, each example's corrupted twin, or None if the task makes
                    none: same shape as `tokens`, the same length (`lengths`), the same roles at the
                    same positions (`roles` serves both) and the same answer positions, padded with
                    `pad_id`; a patching run swaps activations between an example and its twin. The
                    task's docstring says how its twin is made and what its labels record about it.
    """

    task: str
    params: dict[str, Any]
    seed: int
    tokens: np.ndarray
    lengths: np.ndarray
    answer_pos: np.ndarray
    answer_tokens: np.ndarray
    counter_tokens: np.ndarray | None
    roles: np.ndarray
    str_tokens: list[list[str]]
    text: list[str]
    labels: pl.DataFrame
    pad_id: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    corrupted_tokens: np.ndarray | None = None  # last, so positional constructors keep working

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_answers(self) -> int:
        return int(self.answer_pos.shape[1])

    def slice(self, start: int, stop: int) -> "TaskData":
        """Examples [start, stop) as a new TaskData (arrays are views)."""
        return TaskData(
            task=self.task,
            params=self.params,
            seed=self.seed,
            tokens=self.tokens[start:stop],
            lengths=self.lengths[start:stop],
            answer_pos=self.answer_pos[start:stop],
            answer_tokens=self.answer_tokens[start:stop],
            counter_tokens=None if self.counter_tokens is None else self.counter_tokens[start:stop],
            roles=self.roles[start:stop],
            str_tokens=self.str_tokens[start:stop],
            text=self.text[start:stop],
            labels=self.labels.slice(start, stop - start),
            pad_id=self.pad_id,
            extra=self.extra,
            corrupted_tokens=None if self.corrupted_tokens is None else self.corrupted_tokens[start:stop],
        )

    def to_frame(self) -> pl.DataFrame:
        """One row per example: example_id, text, tokens, length, answer_positions, answer_tokens,
        counter_tokens, corrupted_tokens (the twin cut to the example's length; null without one)
        and the label columns."""
        n = len(self)
        counter = (
            pl.Series("counter_tokens", [None] * n, dtype=pl.List(pl.Int64))
            if self.counter_tokens is None
            else list_series("counter_tokens", self.counter_tokens)
        )
        twin = (
            pl.Series("corrupted_tokens", [None] * n, dtype=pl.List(pl.Int64))
            if self.corrupted_tokens is None
            else list_series("corrupted_tokens", self.corrupted_tokens, self.lengths)
        )
        base = pl.DataFrame(
            [
                pl.Series("example_id", np.arange(n, dtype=np.int64)),
                pl.Series("text", self.text, dtype=pl.String),
                list_series("tokens", self.tokens, self.lengths),
                pl.Series("length", self.lengths.astype(np.int64)),
                list_series("answer_positions", self.answer_pos),
                list_series("answer_tokens", self.answer_tokens),
                counter,
                twin,
            ]
        )
        labels = self.labels.drop([c for c in self.labels.columns if c in base.columns])
        return pl.concat([base, labels], how="horizontal")


def list_series(name: str, rows: np.ndarray, lengths: np.ndarray | None = None) -> pl.Series:
    """A List(Int64) Series from a [row, width] array, row i cut to lengths[i] (default: whole rows).

    Built from one flat value buffer and offsets (Arrow), not per-row Python lists: ~20x faster.
    """
    rows = np.asarray(rows, dtype=np.int64)
    n, width = rows.shape
    lengths = np.full(n, width, dtype=np.int64) if lengths is None else np.asarray(lengths, dtype=np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = rows[np.arange(width)[None, :] < lengths[:, None]]  # row-major: row by row
    arr = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values, type=pa.int64()))
    return pl.Series(name, arr).cast(pl.List(pl.Int64))


@runtime_checkable
class Task(Protocol):
    """A deterministic generator of examples.

    `vocab` is the list of token strings for tasks with their own token ids (None for text
    tasks, which tokenize with the model's tokenizer, passed to `generate`). `report` declares
    what the task's report shows beyond the common sections (label splits, roles of interest).
    """

    name: ClassVar[str]

    @property
    def params(self) -> dict[str, Any]: ...

    @property
    def vocab(self) -> list[str] | None: ...

    @property
    def report(self) -> ReportSpec: ...

    def generate(self, n: int, seed: int, tokenizer: Any = None) -> TaskData: ...


MAX_N = 1_000_000  # examples per call: a task's examples are generated in memory (a few KB each)


def check_n_seed(n: Any, seed: Any) -> None:
    """Raise InvalidParameterError unless n is a positive int up to MAX_N and seed a non-negative int."""
    if not is_int(n) or n < 1:
        raise InvalidParameterError(f"n must be a positive integer, got {n!r}")
    if n > MAX_N:
        raise InvalidParameterError(f"n must be at most {MAX_N:,} examples (they are generated in memory), "
                                    f"got {n:,}")
    if not is_int(seed) or seed < 0:
        raise InvalidParameterError(f"seed must be a non-negative integer, got {seed!r}")


def is_int(value: Any) -> bool:
    """True for Python and numpy integers, False for bools (which Python counts as ints)."""
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def check_int(task: str, param: str, value: Any, low: int, high: int, why: str = "") -> int:
    """`value` as an int if it is an integer in low..high, else one InvalidParameterError line."""
    if not is_int(value) or not low <= value <= high:
        raise InvalidParameterError(f"{task}: {param} must be an integer in {low}..{high}{why}, got {value!r}")
    return int(value)


def check_choice(task: str, param: str, value: Any, choices: tuple[str, ...]) -> str:
    """`value` if it is one of `choices`, else one InvalidParameterError line listing them."""
    if value not in choices:
        raise InvalidParameterError(f"{task}: {param} must be one of {', '.join(choices)}, got {value!r}")
    return value


def pad_ragged(rows: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad a list of token lists: returns (tokens [example, pos], lengths [example])."""
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    out = np.full((len(rows), int(lengths.max())), pad_id, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out, lengths
