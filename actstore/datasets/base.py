"""The Task protocol, the columnar batch of examples every task produces, and block generation.

A task is a deterministic generator: the same (params, n, seed) always gives the same
examples, so a store can record just the task spec and seed and be regenerated anywhere.
Examples are made in blocks of BLOCK: block b draws from generators seeded with (seed, 0, b)
(the clean examples) and (seed, 1, b) (their corrupted twins), every draw made at the full
block size, so example i depends on (params, seed, i) alone: the first k examples of n are
those of n = k, and `generate_range(start, stop, ...)` makes just examples [start, stop)
(an ingest worker makes only its own chunk; memory stays flat in n). Every example is padded
to the task's fixed width (the longest example it can make), whatever the range.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Callable
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

    def generate_range(self, start: int, stop: int, seed: int, tokenizer: Any = None) -> TaskData: ...


MAX_N = 1_000_000  # examples per call: a task's examples are generated in memory (a few KB each)
BLOCK = 1024  # examples per generation block (a format constant: changing it changes every dataset)


class BlockTask:
    """`generate` and `generate_range` of a task made in blocks: a subclass implements `_context`
    (what every block of one call shares, e.g. the tokenizer and the padded width) and `_block`."""

    def generate(self, n: int, seed: int, tokenizer: Any = None) -> TaskData:
        """Examples [0, n) of seed `seed` (the first k of them are `generate(k, seed)`)."""
        check_n_seed(n, seed)
        return self.generate_range(0, n, seed, tokenizer)

    def generate_range(self, start: int, stop: int, seed: int, tokenizer: Any = None) -> TaskData:
        """Examples [start, stop) of seed `seed`, made from their blocks alone: equal to
        `generate(stop, seed)[start:stop]`."""
        check_range(start, stop, seed)
        ctx = self._context(tokenizer)
        parts = []
        for b in range(start // BLOCK, (stop - 1) // BLOCK + 1):
            lo, hi = max(start - b * BLOCK, 0), min(stop - b * BLOCK, BLOCK)
            rng = np.random.default_rng([int(seed), 0, b])
            twin_rng = np.random.default_rng([int(seed), 1, b])
            parts.append(self._block(rng, twin_rng, hi, ctx, int(seed)).slice(lo, hi))
        return concat_task_data(parts)

    def _context(self, tokenizer: Any) -> Any:
        return None

    def _block(self, rng: np.random.Generator, twin_rng: np.random.Generator, count: int, ctx: Any,
               seed: int) -> TaskData:
        """The first `count` examples of one block (at least `count` rows). Every random draw is made
        at the full BLOCK size, so they never depend on `count`."""
        raise NotImplementedError


def concat_task_data(parts: list[TaskData]) -> TaskData:
    """Consecutive batches of one task (of equal width) as one TaskData."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]

    def cat(name: str) -> Any:
        arrays = [getattr(p, name) for p in parts]
        return None if arrays[0] is None else np.concatenate(arrays)

    return TaskData(
        task=first.task, params=first.params, seed=first.seed, tokens=cat("tokens"), lengths=cat("lengths"),
        answer_pos=cat("answer_pos"), answer_tokens=cat("answer_tokens"), counter_tokens=cat("counter_tokens"),
        roles=cat("roles"), str_tokens=[s for p in parts for s in p.str_tokens],
        text=[t for p in parts for t in p.text], labels=pl.concat([p.labels for p in parts], how="vertical"),
        pad_id=first.pad_id, extra=first.extra, corrupted_tokens=cat("corrupted_tokens"),
    )


def generate_range(task: Any, start: int, stop: int, seed: int, tokenizer: Any = None) -> TaskData:
    """Examples [start, stop) of any task: its `generate_range`, or a slice of `generate(stop, ...)` for a
    registered task that has no `generate_range` or overrides `generate` below the class that defines it
    (a subclass of a built-in task that edits its examples)."""
    if hasattr(task, "generate_range") and issubclass(_owner(type(task), "generate_range"),
                                                      _owner(type(task), "generate")):
        return task.generate_range(start, stop, seed, tokenizer)
    return task.generate(stop, seed, tokenizer=tokenizer).slice(start, stop)


def range_source(task: Any, n: int, seed: int, tokenizer: Any = None) -> Callable[[int, int], TaskData]:
    """A function of (start, stop) giving examples [start, stop) of `generate(n, seed)`: made range by range
    for a block task; for any other (whose examples may depend on n) all n are made once, on first use."""
    if hasattr(task, "generate_range") and issubclass(_owner(type(task), "generate_range"),
                                                      _owner(type(task), "generate")):
        return lambda start, stop: task.generate_range(start, stop, seed, tokenizer)
    whole: list[TaskData] = []

    def from_whole(start: int, stop: int) -> TaskData:
        if not whole:
            whole.append(task.generate(n, seed, tokenizer=tokenizer))
        return whole[0].slice(start, stop)

    return from_whole


def _owner(cls: type, attr: str) -> type:
    """The class in `cls`'s MRO that defines `attr`."""
    return next((c for c in cls.__mro__ if attr in c.__dict__), object)


def check_range(start: Any, stop: Any, seed: Any) -> None:
    """InvalidParameterError unless 0 <= start < stop, at most MAX_N examples, and seed a non-negative int."""
    if not is_int(start) or start < 0:
        raise InvalidParameterError(f"start must be a non-negative integer, got {start!r}")
    if not is_int(stop) or stop <= start:
        raise InvalidParameterError(f"stop must be an integer above start={start}, got {stop!r}")
    check_n_seed(stop - start, seed)


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


def pad_ragged(rows: list[list[int]], pad_id: int, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad a list of token lists to `width` (default: the longest): returns (tokens [example, pos],
    lengths [example])."""
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    out = np.full((len(rows), int(lengths.max()) if width is None else width), pad_id, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out, lengths
