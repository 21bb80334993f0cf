"""The per-example read-out tables (dla, logit_lens) as streams, and their summaries, for the CLI.

`rows(store, table, params, client)` gives the table chunk by chunk: from the checked derived/
cache when it holds the table, else computed, locally filling the cache as the chunks pass (a
table is cached only once every chunk went through; on a cluster nothing is cached, the rows are
computed on the workers). `summary(...)` gives `breakdown`'s statistics from per-chunk partials
(summary.py) of these tables and of the raw attention and neuron rows, computed locally or on a
cluster: memory holds one chunk's rows, and the numbers are the same bit for bit either way.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from actstore.errors import ActstoreError, InvalidParameterError
from actstore.query import derived
from actstore.query.attention import AttentionPlan, attention_plan
from actstore.query.dla import DlaPlan, dla_plan
from actstore.query.executor import Job
from actstore.query.logit_lens import LensPlan, lens_plan
from actstore.query.neurons import LayerPlan, layer_plan, mlp_layers
from actstore.query.summary import GroupSpec, summarise, summarise_each
from actstore.store.cache import read_checked, record_path, write_checked
from actstore.store.fs import StorePath
from actstore.store.reader import Store

TABLES = ("dla", "logit_lens")
ROW_TABLES = ("attention", "neurons")  # raw rows, summarised per chunk (never cached by a summary: they are large)
NEURON_OPTIONS = ("direction", "through_head", "pos", "answer", "final_ln", "attention_weighted", "where")
BATCH_ROWS = 1 << 16  # rows per batch read back from a cached file
ROW_GROUP = 1 << 19  # rows per row group of a cached file


def plan_for(store: Store, table: str, params: Mapping[str, Any] | None) -> tuple[Job, Any]:
    """The job and the (validated) plan of a read-out table with `params` (derived defaults filled in)."""
    if table not in TABLES:
        raise InvalidParameterError(f"no streamed table {table!r}; streamed tables: {', '.join(TABLES)}")
    full = derived.params_for(table, params)
    if table == "dla":
        plan: Any = DlaPlan(store, full.get("level", "head"), full.get("target", "correct"), full.get("pos"),
                            full.get("answer", 0), full.get("final_ln"))
        return Job(dla_plan, plan.params), plan
    plan = LensPlan(store, full.get("target", "correct"), full.get("ln", "cached"), full.get("pos"),
                    full.get("answer", 0), full.get("final_ln"))
    return Job(lens_plan, plan.params), plan


def rows(store: Store, table: str, params: Mapping[str, Any] | None = None,
         client: Any = None) -> tuple[Iterator[pl.DataFrame], pl.DataFrame]:
    """The table's rows chunk by chunk, and an empty table with its columns (see the module docstring)."""
    job, plan = plan_for(store, table, params)
    if client is not None:
        from actstore.query.executor import run  # noqa: PLC0415

        return run(job, store, client, plan), plan.empty()
    path = derived.cache_path(store, table, derived.params_for(table, params))
    data = read_checked(path)
    if data is not None:
        return cached_frames(data), plan.empty()
    return _filling(path, plan.partials(plan.ranges()), plan.empty()), plan.empty()


def summary(store: Store, table: str, params: Mapping[str, Any] | None, spec: GroupSpec,
            client: Any = None) -> pl.DataFrame:
    """`breakdown`'s statistics of the table per `spec`, from per-chunk partials (never the whole table).

    table: dla, logit_lens, or the raw rows of attention / neurons (ROW_TABLES).
    Always computed from the store (locally, filling the derived/ cache if it lacks a dla or logit_lens
    table, or on `client`): reading a cached table back costs about what recomputing it does, and more
    memory. Raw attention and neuron rows are not cached on the way (they are many: d_mlp rows per
    example and position for neurons).
    """
    if table in ROW_TABLES:
        return summarise_each(store, row_plans(store, table, params), spec, client)
    job, plan = plan_for(store, table, params)
    if client is None:
        path = derived.cache_path(store, table, derived.params_for(table, params))
        if not (path.is_file() and record_path(path).is_file()):  # (a bad one is found, and redone, when read)
            plan = _Filling(plan, path)
    return summarise(store, job, spec, client, plan)


def row_plans(store: Store, table: str, params: Mapping[str, Any] | None) -> list[tuple[Job, Any]]:
    """The jobs and (validated) plans whose chunk partials are the raw rows of `table` (attention or
    neurons, with the derived defaults), in the table's order: attention's one, or one per MLP layer."""
    full = derived.params_for(table, params)
    if table == "attention":
        extra = sorted(set(full) - {"layers", "heads", "query", "key", "where"})
        if extra:
            raise InvalidParameterError(f"breakdown of attention rows takes layers, heads, query, key and where, "
                                        f"not {', '.join(extra)} (an aggregate is not a table of rows)")
        plan: Any = AttentionPlan(store, full.get("layers"), full.get("heads"), full.get("query"), full.get("key"),
                                  None, None, full.get("where"))
        return [(Job(attention_plan, plan.params), plan)]
    if table != "neurons":
        raise InvalidParameterError(f"no table of rows {table!r}; tables of rows: {', '.join(ROW_TABLES)}")
    extra = sorted(set(full) - {"layers", *NEURON_OPTIONS})
    if extra:
        raise InvalidParameterError(f"breakdown of neuron rows takes layers, {', '.join(NEURON_OPTIONS)}, not "
                                    f"{', '.join(extra)} (top-k rows are not the table of rows)")
    options = {k: full.get(k, default) for k, default in zip(NEURON_OPTIONS, ("answer", None, None, 0, None, False,
                                                                               None))}
    plans = [LayerPlan(store, layer, options, ("rows",))
             for layer in mlp_layers(store, full.get("layers"), options["through_head"])]
    return [(Job(layer_plan, p.params), p) for p in plans]


def cached_frames(data: bytes) -> Iterator[pl.DataFrame]:
    """A cached Parquet file's rows, batch by batch (the bytes were checked against their record)."""
    for batch in pq.ParquetFile(pa.BufferReader(data)).iter_batches(batch_size=BATCH_ROWS):
        yield pl.from_arrow(pa.Table.from_batches([batch]))  # type: ignore[misc]


class _Filling:
    """A plan whose computed chunk rows also go to the derived/ cache as they pass."""

    def __init__(self, plan: Any, path: StorePath) -> None:
        self.plan, self.path = plan, path

    def ranges(self) -> list[tuple[int, int]]:
        return self.plan.ranges()

    def partials(self, ranges: Sequence[tuple[int, int]]) -> Iterator[pl.DataFrame]:
        return _filling(self.path, self.plan.partials(ranges), self.plan.empty())

    def empty(self) -> pl.DataFrame:
        return self.plan.empty()


def _filling(path: StorePath, frames: Iterator[pl.DataFrame], empty: pl.DataFrame) -> Iterator[pl.DataFrame]:
    """`frames` passed through, written to the cache file `path` on the way; the file is recorded
    (store/cache.py) only if every frame went through. A cache that cannot be written (read-only
    store, full disk) is given up silently: the rows still flow, nothing is left behind. The rows
    of a remote store's table go to a local temporary file first, uploaded once complete."""
    folder = path.parent if isinstance(path, Path) else Path(tempfile.gettempdir())
    tmp = folder / f".{path.name}.{uuid.uuid4().hex}.part"
    out: _RowGroups | None = _RowGroups(tmp)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        out = None

    def place(target: Path) -> None:
        shutil.move(tmp, target)
    try:
        for frame in frames:
            if out is not None:
                try:
                    out.add(frame)
                except OSError:
                    out.abandon()
                    out = None
            yield frame
        if out is not None:
            try:
                out.close(empty)
                write_checked(path, place)
            except OSError as e:
                if isinstance(e, ActstoreError):
                    raise
    finally:
        if out is not None:
            out.abandon()
        tmp.unlink(missing_ok=True)


class _RowGroups:
    """Tables written into one Parquet file in row groups of up to ROW_GROUP rows, so that a table
    of fewer rows is one row group, as a whole-table write gives it (DuckDB reads row groups in
    parallel, and sums over one group come out the same from run to run)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writer: pq.ParquetWriter | None = None
        self.schema: pa.Schema | None = None
        self.held: list[pa.Table] = []
        self.rows = 0

    def add(self, frame: pl.DataFrame) -> None:
        arrow = frame.to_arrow(compat_level=pl.CompatLevel.oldest())
        self.schema = self.schema or arrow.schema
        self.held.append(arrow.cast(self.schema))
        self.rows += frame.height
        if self.rows >= ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if not self.held or self.schema is None:
            return
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, self.schema, compression="zstd", compression_level=1)
        self.writer.write_table(pa.concat_tables(self.held), row_group_size=ROW_GROUP)
        self.held, self.rows = [], 0

    def close(self, empty: pl.DataFrame) -> None:
        """Write what is held (or, if no row came, `empty`'s columns) and close the file."""
        if self.schema is None:
            self.add(empty)
        self._flush()
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def abandon(self) -> None:
        """Stop writing (the partial file is removed by the caller)."""
        self.held = []
        if self.writer is not None:
            try:
                self.writer.close()
            except OSError:
                pass
            self.writer = None


__all__ = ["cached_frames", "plan_for", "row_plans", "rows", "summary"]
