"""Streamed group statistics: mean, std, n per group of a table that arrives chunk by chunk.

Each chunk's rows reduce to a `GroupStats` partial (per group: n, mean and m2, the sum of squared
deviations from the group's mean in that chunk), computed with sequential sums (np.bincount) so
that the same rows give the same bits on any machine; `GroupStats.fold` merges the partials one by
one in chunk order with Chan et al.'s parallel update. Memory holds one chunk's rows and one total per
group (a few numbers each), never the per-example table, whatever the store's size.

Groups come out in the order of their first row (as Polars' group_by(maintain_order=True) orders
them on the whole table), then `finish` sorts by the label columns, as `breakdown` does.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from actstore.errors import InvalidParameterError, UnknownColumnError
from actstore.query.breakdown import KEY_COLUMNS, check_label_columns, with_interval
from actstore.query.executor import Job, run
from actstore.store.reader import Store


@dataclass(frozen=True)
class GroupSpec:
    """How rows are grouped: the label columns `by` (joined from the examples when the table lacks
    them), the item `keys` (None: those of KEY_COLUMNS in the table) and the `value` summarised."""

    by: tuple[str, ...] = ()
    keys: tuple[str, ...] | None = None
    value: str = "value"

    def columns(self, table: pl.DataFrame) -> list[str]:
        """The group columns of `table`: by..., then its item keys."""
        keys = [k for k in KEY_COLUMNS if k in table.columns and k not in self.by] if self.keys is None \
            else list(self.keys)
        for k in keys:
            if k not in table.columns:
                raise UnknownColumnError(f"breakdown: no key column {k!r} in the table (columns: "
                                         f"{', '.join(table.columns)})")
        return [*self.by, *keys]

    def check(self, table: pl.DataFrame) -> None:
        """One-line errors for a value column the table lacks or that is not numeric."""
        if self.value not in table.columns:
            raise UnknownColumnError(f"breakdown: no value column {self.value!r} in the table (columns: "
                                     f"{', '.join(table.columns)})")
        if not table.schema[self.value].is_numeric():
            raise InvalidParameterError(f"breakdown: value column {self.value!r} is {table.schema[self.value]}, "
                                        "not numeric")


@dataclass
class GroupStats:
    """Per group (rows of `keys`): n [group] int64, mean and m2 [group] float64."""

    keys: pl.DataFrame
    n: np.ndarray
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def of(cls, table: pl.DataFrame, columns: Sequence[str], value: str) -> "GroupStats":
        """The statistics of `value` in `table` per group of `columns` (rows with a null value skipped)."""
        if table.get_column(value).null_count():
            table = table.filter(pl.col(value).is_not_null())
        keys, inverse = group_index(table.select(columns))
        return cls.grouped(keys, inverse, table.get_column(value))

    @classmethod
    def grouped(cls, keys: pl.DataFrame, inverse: np.ndarray, value: pl.Series) -> "GroupStats":
        """The statistics of `value` [row] (no nulls) in the groups `keys`, row i in group inverse[i]."""
        x = value.cast(pl.Float64).to_numpy()
        n = np.bincount(inverse, minlength=keys.height)
        mean = np.bincount(inverse, x, minlength=keys.height) / np.maximum(n, 1)
        m2 = np.bincount(inverse, (x - mean[inverse]) ** 2, minlength=keys.height)
        return cls(keys, n.astype(np.int64), mean, m2)

    @classmethod
    def combine(cls, parts: Iterable["GroupStats"]) -> "GroupStats | None":
        """The statistics of the union of disjoint row sets, folded in the order given (None if none)."""
        parts = [p for p in parts if p.keys.height]
        if not parts:
            return None
        keys, inverse = group_index(pl.concat([p.keys for p in parts], how="vertical_relaxed"))
        n, mean, m2 = (np.concatenate([getattr(p, f) for p in parts]) for f in ("n", "mean", "m2"))
        total = np.bincount(inverse, n, minlength=keys.height)
        grand = np.bincount(inverse, n * mean, minlength=keys.height) / total
        alone = np.bincount(inverse, minlength=keys.height)[inverse] == 1  # a group in one part only
        grand[inverse[alone]] = mean[alone]  # kept as it is (n * mean / n may differ in the last bit)
        m2_all = np.bincount(inverse, m2 + n * (mean - grand[inverse]) ** 2, minlength=keys.height)
        return cls(keys, total.astype(np.int64), grand, m2_all)

    @classmethod
    def fold(cls, parts: Iterable["GroupStats"]) -> "GroupStats | None":
        """`combine` one partial at a time, in the order given: memory holds one partial per group."""
        total: GroupStats | None = None
        for part in parts:
            total = part if total is None else cls.combine([total, part])
        return total

    def frame(self) -> pl.DataFrame:
        """keys..., mean, std (ddof 1, null where n < 2), n, ci_low, ci_high (95% Student t)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            std = np.where(self.n > 1, np.sqrt(np.maximum(self.m2, 0) / (self.n - 1)), np.nan)
        stats = pl.DataFrame({"mean": self.mean, "std": std, "n": self.n},
                             schema={"mean": pl.Float64, "std": pl.Float64, "n": pl.Int64})
        stats = stats.with_columns(pl.when(pl.col("n") > 1).then(pl.col("std")).otherwise(None).alias("std"))
        return with_interval(pl.concat([self.keys, stats], how="horizontal"))


def group_index(keys: pl.DataFrame) -> tuple[pl.DataFrame, np.ndarray]:
    """The distinct rows of `keys` in order of first appearance, and each row's index among them."""
    if not keys.width:  # no group columns: one group
        return pl.DataFrame(), np.zeros(keys.height, dtype=np.int64)
    groups = keys.with_row_index("_row").group_by(keys.columns, maintain_order=True).agg(pl.col("_row"))
    inverse = np.empty(keys.height, dtype=np.int64)
    rows = groups.get_column("_row")
    sizes = rows.list.len().to_numpy()
    inverse[rows.explode().to_numpy()] = np.repeat(np.arange(groups.height, dtype=np.int64), sizes)
    return groups.drop("_row"), inverse


def with_labels(table: pl.DataFrame, labels: pl.DataFrame | None) -> pl.DataFrame:
    """`table` with the label columns of `labels` (rows indexed by example_id 0..n-1) added by example_id."""
    if labels is None or not labels.width:
        return table
    if "example_id" not in table.columns:
        raise UnknownColumnError("breakdown: joining labels needs an example_id column in the table")
    return pl.concat([table, labels[table.get_column("example_id").to_numpy()]], how="horizontal")


def finish(stats: GroupStats | None, spec: GroupSpec, empty_keys: dict[str, pl.DataType]) -> pl.DataFrame:
    """The summary table (sorted by the label columns), or an empty one with the columns it would have."""
    if stats is None:
        schema = dict(empty_keys) | {"mean": pl.Float64, "std": pl.Float64, "n": pl.Int64, "ci_low": pl.Float64,
                                     "ci_high": pl.Float64}
        return pl.DataFrame(schema=schema)
    out = stats.frame()
    return out.sort(list(spec.by), maintain_order=True, nulls_last=True) if spec.by else out


class SummaryPlan:
    """Any plan whose partials are a chunk's rows (a `empty()` table gives its columns), reduced to
    a GroupStats per chunk: the rows never leave the process that computed them."""

    def __init__(self, store: Store, inner: Job, spec: GroupSpec, plan: Any = None) -> None:
        built: Any = inner.build(store) if plan is None else plan  # a row plan (dla, ...): it has empty()
        self.inner = built
        self.spec = spec
        empty = built.empty()
        spec.check(empty)
        missing = [c for c in spec.by if c not in empty.columns]
        self.labels = label_columns(store, missing) if missing else None
        labelled = with_labels(empty, self.labels.clear() if self.labels is not None else None)
        self.columns = spec.columns(labelled)
        self.empty_keys = dict(labelled.select(self.columns).schema)

    def ranges(self) -> list[tuple[int, int]]:
        return self.inner.ranges()

    def partials(self, ranges: Sequence[tuple[int, int]]) -> Iterator[GroupStats]:
        for frame in self.inner.partials(ranges):
            stats = blocked_stats(frame, self.labels, self.columns, self.spec.value)
            yield stats if stats is not None else GroupStats.of(with_labels(frame, self.labels), self.columns,
                                                                self.spec.value)


def blocked_stats(table: pl.DataFrame, labels: pl.DataFrame | None, columns: Sequence[str],
                  value: str) -> GroupStats | None:
    """GroupStats.of(with_labels(table, labels), columns, value), the same bits, for a table laid out in
    blocks of one example each (a read-out table: rows [example, answer, item]) whose group columns other
    than the labels repeat the same rows in every block; None for any other table (the caller groups it
    row by row).

    Grouping every row costs most of a chunk's summary (strings among the keys); here only one block's rows
    and one label row per example are grouped, and a row's group is (its example's, its place in the block).
    """
    if not columns or "example_id" not in table.columns or not table.height or table.get_column(value).null_count():
        return None
    n = table.height
    ids = table.get_column("example_id").to_numpy()
    step = int(np.argmax(ids != ids[0])) or n  # rows of the first example's block
    if n % step or not np.array_equal(ids, np.repeat(ids[::step], step)):
        return None
    joined = [c for c in columns if c in labels.columns and c not in table.columns] if labels is not None else []
    rest = table.select([c for c in columns if c not in joined])
    if not all(dtype.is_integer() or dtype in (pl.Boolean, pl.String) for dtype in rest.dtypes):
        return None  # (float keys: equality as group_by sees it is not worth matching here)
    for col in rest.get_columns():  # a block's keys must be every block's
        if not col.slice(step).equals(col.slice(0, n - step)):
            return None
    block_keys, block_code = group_index(rest.slice(0, step))
    example_ids = ids[::step]
    example_code = np.zeros(example_ids.size, dtype=np.int64)
    if labels is not None and joined:
        if example_ids.min() < 0 or example_ids.max() >= labels.height:  # with_labels' gather decides these
            return None
        _, example_code = group_index(labels.select(joined)[example_ids])
    span = block_keys.height
    key = (example_code[:, None] * span + block_code[None, :]).reshape(-1)  # [row] one code per distinct key
    first = np.full(int(example_code.max()) * span + span, n, dtype=np.int64)
    np.minimum.at(first, key, np.arange(n, dtype=np.int64))
    present = np.flatnonzero(first < n)
    order = np.argsort(first[present], kind="stable")  # groups in order of their first row, as group_index
    rank = np.empty(first.size, dtype=np.int64)
    rank[present[order]] = np.arange(present.size, dtype=np.int64)
    firsts = first[present[order]]
    keys = rest[firsts]
    if labels is not None and joined:
        keys = pl.concat([keys, labels.select(joined)[ids[firsts]]], how="horizontal").select(columns)
    return GroupStats.grouped(keys, rank[key], table.get_column(value))


def summary_plan(store: Store, inner: Job, spec: GroupSpec) -> SummaryPlan:
    """The executor's entry point (executor.Job): a summary of `inner`'s rows on `store`."""
    return SummaryPlan(store, inner, spec)


def summarise(store: Store, inner: Job, spec: GroupSpec, client: Any = None, plan: Any = None) -> pl.DataFrame:
    """`spec`'s statistics of the rows of the streamed query `inner`, chunk by chunk (locally or on
    `client`), as `breakdown` gives them: by..., keys..., mean, std, n, ci_low, ci_high."""
    return summarise_each(store, [(inner, plan)], spec, client)


def summarise_each(store: Store, inners: Sequence[tuple[Job, Any]], spec: GroupSpec,
                   client: Any = None) -> pl.DataFrame:
    """`summarise` of the rows of several streamed queries taken as one table, theirs one after
    another (e.g. a neuron table, layer after layer); each (job, plan or None) runs in turn."""
    totals: list[GroupStats] = []
    empty_keys: dict[str, pl.DataType] = {}
    for inner, plan in inners:
        summary = SummaryPlan(store, inner, spec, plan)
        empty_keys = summary.empty_keys
        total = GroupStats.fold(run(Job(summary_plan, {"inner": inner, "spec": spec}), store, client, summary))
        if total is not None:
            totals.append(total)
    return finish(GroupStats.fold(totals), spec, empty_keys)


def label_columns(store: Store, columns: Sequence[str]) -> pl.DataFrame:
    """The label `columns` of the store's examples (row i: example i); one-line error naming a missing one.
    Only these columns are read, part by part: never the whole examples table."""
    try:
        return store.meta_table("examples", list(dict.fromkeys(columns)))  # only these columns are decoded
    except UnknownColumnError:
        check_label_columns(store.examples, columns)  # its one-line message, naming the labels there are
        raise


__all__ = ["GroupSpec", "GroupStats", "SummaryPlan", "blocked_stats", "finish", "group_index", "summarise",
           "summarise_each", "with_labels"]
