"""`attention(store, ...)`: attention probabilities by position or role, raw or aggregated.

    attention(store, layers=None, heads=None, query=None, key=None, aggregate=None, group_by=None, where=None)

Raw (aggregate None and no group_by): one row per (example, layer, head, query position, key
position) selected: example_id, layer, head, q_pos, k_pos, q_role, k_role, value (the
probability, float32 as stored). Pad positions are never rows, nor keys after the query in a
causal model.

Aggregated (aggregate='mean', or any group_by): one row per group: layer, head, the `group_by`
columns, mean, std, n, ci_low, ci_high (95% t interval), entropy. The averaged value is a
*unit*'s attention mass: the probability a selected query row puts on its selected keys, summed
over the keys of one group. Keys form one group unless group_by holds 'k_pos' (a group per key
position) or 'k_role' (per role: the mass on all keys of that role, e.g. every 'open' bracket).
So query='END', key='IO' gives END -> IO, and query='=', key=['a0','a1','a2','a3'],
group_by=['k_role','carry_2'] gives '=' -> each a-digit split by carry. n counts units (a row with
no selected key in a group makes no unit); entropy is the mean entropy (nats) of the units' query
rows over all their keys. group_by may also hold 'q_pos', 'q_role', 'example_id' and any label
column of the store's examples.

Aggregation reads one chunk and one layer at a time, only the selected query rows, and keeps
only per-group moments. Raw rows (about 45 bytes each in memory) are built a chunk at a time;
`attention_frames` yields them without holding the whole table (the CLI streams them to a file).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from actstore.errors import InvalidParameterError, UnknownHookError
from actstore.query.attention_stats import (
    GroupKeys, Moments, candidate_keys, raw_indices, row_entropy, selected_pairs, unit_masses)
from actstore.query.breakdown import with_interval
from actstore.query.chunks import Chunk, example_index, stream
from actstore.query.executor import Job, run
from actstore.query.selectors import Selector, check_labels, example_filter, select_positions
from actstore.query.tables import ColumnType
from actstore.store.reader import Store
from actstore.query.options import AGGREGATES, Aggregate

RAW_SCHEMA: dict[str, ColumnType] = {
    "example_id": pl.Int64, "layer": pl.Int64, "head": pl.Int64, "q_pos": pl.Int64, "k_pos": pl.Int64,
    "q_role": pl.String, "k_role": pl.String, "value": pl.Float32}
UNIT_COLUMNS = ("example_id", "q_pos", "q_role", "k_pos", "k_role")  # group columns that are not labels


def attention(store: Store, layers: int | Sequence[int] | None = None, heads: int | Sequence[int] | None = None,
              query: Selector = None, key: Selector = None, aggregate: Aggregate | None = None,
              group_by: str | Sequence[str] | None = None,
              where: pl.Expr | Mapping[str, Any] | None = None, client: Any = None) -> pl.DataFrame:
    """Attention probabilities of the chosen heads from `query` positions/roles to `key` ones.

    layers, heads: ints or lists (None: all; heads apply in every chosen layer).
    query, key:    position selectors (int, role name, list, None; see selectors.py).
    aggregate:     None for raw rows, 'mean' for group statistics (implied by `group_by`).
    group_by:      group columns besides layer and head (see the module docstring).
    where:         keep only examples matching this (Polars expression or {label: value(s)}).
    client:        a dask.distributed Client to run the chunks on (the same table, row for row).
    """
    plan = AttentionPlan(store, layers, heads, query, key, aggregate, group_by, where)
    parts = run(Job(attention_plan, plan.params), store, client, plan)
    if plan.groups is None:  # raw rows
        frames = list(parts)
        return pl.concat(frames, rechunk=False) if frames else plan.empty()
    moments = [m for chunk_moments in parts for m in chunk_moments]
    return plan.groups.frame(Moments.merge(moments) if moments else None)


def attention_frames(store: Store, layers: int | Sequence[int] | None = None,
                     heads: int | Sequence[int] | None = None, query: Selector = None, key: Selector = None,
                     where: pl.Expr | Mapping[str, Any] | None = None, client: Any = None) -> Iterator[pl.DataFrame]:
    """The raw rows of `attention(...)` one chunk at a time (bounded memory: for writing a table
    too big to hold, e.g. to Parquet); concatenated they equal attention(store, ...)."""
    plan = AttentionPlan(store, layers, heads, query, key, None, None, where)
    return run(Job(attention_plan, plan.params), store, client, plan)


def attention_plan(store: Store, **params: Any) -> "AttentionPlan":
    """The executor's entry point (executor.Job): attention's plan on `store`."""
    return AttentionPlan(store, **params)


class AttentionPlan:
    """attention resolved against a store. Partials per chunk: its raw rows (a table, left out when
    empty), or a list of Moments (one per layer with units) for an aggregate."""

    def __init__(self, store: Store, layers: int | Sequence[int] | None, heads: int | Sequence[int] | None,
                 query: Selector, key: Selector, aggregate: Aggregate | None, group_by: str | Sequence[str] | None,
                 where: pl.Expr | Mapping[str, Any] | None) -> None:
        self.params = dict(layers=layers, heads=heads, query=query, key=key, aggregate=aggregate, group_by=group_by,
                           where=where)
        self.layers, self.heads, self.by, self.hooks = _check(store, layers, heads, aggregate, group_by)
        self.plan = _Plan(store, query, key, where)
        self.key_group = "pos" if "k_pos" in self.by else "role" if "k_role" in self.by else "all"
        raw = aggregate is None and not self.by
        self.groups = None if raw else _Grouping(self.plan, self.layers, self.heads, self.by)

    def ranges(self) -> list[tuple[int, int]]:
        return self.plan.ranges()

    def partials(self, ranges: Sequence[tuple[int, int]]) -> Iterator[Any]:
        for chunk in self.plan.scan(self.hooks, ranges):
            if self.groups is None:
                frame = self.plan.raw_chunk(self.layers, self.heads, self.hooks, chunk)
                if frame.height:
                    yield frame
                continue
            moments = []
            for li, hook in enumerate(self.hooks):
                codes, values, entropy = self.plan.units(li, self.heads, hook, chunk, self.key_group, self.by,
                                                         self.groups.label_codes)
                if values.size:
                    moments.append(Moments.of(self.groups.keys.encode([codes[c] for c in self.groups.columns]),
                                              values, entropy))
            yield moments

    def empty(self) -> pl.DataFrame:
        return pl.DataFrame(schema=RAW_SCHEMA)


def _check(store: Store, layers: int | Sequence[int] | None, heads: int | Sequence[int] | None,
           aggregate: str | None, group_by: str | Sequence[str] | None
           ) -> tuple[list[int], list[int], list[str], list[str]]:
    """Validated layers, heads, group_by columns and the pattern hooks to read (one-line errors)."""
    layers_ = _indices(layers, store.arch.n_layers, "layers")
    heads_ = _indices(heads, store.arch.n_heads, "heads")
    by_ = [group_by] if isinstance(group_by, str) else list(group_by or [])
    if aggregate is not None and aggregate not in AGGREGATES:
        raise InvalidParameterError(f"aggregate must be None or one of {', '.join(AGGREGATES)}, got {aggregate!r}")
    labels = [c for c in by_ if c not in UNIT_COLUMNS]
    if labels:  # the examples table only for labels
        check_labels(store.examples, labels, "attention group_by")
    if len(set(by_)) != len(by_) or {"layer", "head"} & set(by_):
        raise InvalidParameterError(f"attention group_by={by_}: give each column once (layer and head are always "
                                    "groups)")
    hooks = [store.arch.pattern(layer) for layer in layers_]
    for name in hooks:
        if name not in store.hooks:
            raise UnknownHookError(f"attention needs {name!r}, which store {store.path} does not hold; "
                                   f"re-ingest with --hooks default (or add pattern)")
    return layers_, heads_, by_, hooks


class _Grouping:
    """The group columns (layer, head, *by) as integer codes, and the values each code stands for.

    Codes follow the sort order of the values (nulls last), so the packed keys sort the groups.
    """

    def __init__(self, plan: "_Plan", layers: list[int], heads: list[int], by: list[str]) -> None:
        self.columns = ["layer", "head", *by]
        roles = pl.Series([*plan.roles.names, None], dtype=pl.String)
        positions = pl.Series(np.arange(plan.width), dtype=pl.Int64)
        self.values: dict[str, pl.Series] = {"layer": pl.Series(layers, dtype=pl.Int64),
                                             "head": pl.Series(heads, dtype=pl.Int64)}
        self.label_codes: dict[str, np.ndarray] = {}
        for c in by:
            if c in ("q_pos", "k_pos"):
                self.values[c] = positions
            elif c in ("q_role", "k_role"):
                self.values[c] = roles
            elif c == "example_id":
                self.values[c] = pl.Series(np.arange(plan.n), dtype=pl.Int64)
            else:  # a label: dense rank codes, nulls last
                series = plan.store.examples.get_column(c)
                uniq = series.drop_nulls().unique().sort()
                code = series.rank("dense").cast(pl.Int64) - 1
                self.label_codes[c] = code.fill_null(uniq.len()).to_numpy()
                self.values[c] = pl.concat([uniq, pl.Series([None], dtype=series.dtype)]) if series.null_count() \
                    else uniq
        self.keys = GroupKeys([self.values[c].len() for c in self.columns], f"attention group_by={by}")

    def frame(self, moments: Moments | None) -> pl.DataFrame:
        """group columns, mean, std, n, ci_low, ci_high, entropy: one row per group, sorted by the group columns."""
        stats: dict[str, ColumnType] = {"mean": pl.Float64, "std": pl.Float64, "n": pl.Int64, "ci_low": pl.Float64,
                                        "ci_high": pl.Float64, "entropy": pl.Float64}
        if moments is None:
            columns: dict[str, ColumnType] = {c: self.values[c].dtype for c in self.columns}
            return pl.DataFrame(schema=columns | stats)
        cols = {c: self.values[c].gather(code).alias(c) for c, code in zip(self.columns,
                                                                           self.keys.decode(moments.keys))}
        std = pl.Series("std", moments.std()).fill_nan(None)
        out = with_interval(pl.DataFrame([*cols.values(), pl.Series("mean", moments.mean), std,
                                          pl.Series("n", moments.n, dtype=pl.Int64)]))
        return out.with_columns(entropy=pl.Series(moments.entropy()))


@dataclass(frozen=True)
class _Rows:
    """A chunk's examples as a query sees them: lengths [example], role codes and the query and key
    masks [example, pos]."""

    lengths: np.ndarray
    codes: np.ndarray
    q_mask: np.ndarray
    k_mask: np.ndarray


class _Plan:
    """What a query reads: examples kept, query and key masks over positions, roles; per chunk, from
    that chunk's meta parts (memory holds a chunk's masks and roles, not the store's)."""

    RECENT = 2  # chunks' rows kept: ranges() reads each chunk's, and the scan asks for them again

    def __init__(self, store: Store, query: Selector, key: Selector, where: pl.Expr | Mapping[str, Any] | None):
        self.store = store
        self.index = example_index(store)
        self.n = self.index.n
        self.width = int(store.manifest.width)
        self.roles = self.index.role_names()  # the names; codes per chunk (rows())
        none = np.zeros(0, dtype=np.int64)
        for spec, what in ((query, "query"), (key, "key")):  # one-line errors before any chunk is read
            select_positions(spec, none, np.zeros((0, self.width), np.int16), self.roles, self.width, what)
        self.keep = None if where is None else example_filter(store.examples, where)  # the table only for a filter
        self.causal = store.arch.causal
        self.query, self.key = query, key
        self._recent: dict[tuple[int, int], _Rows] = {}
        self._lock = threading.Lock()  # a threaded Dask worker may run one plan's chunks on several threads

    def rows(self, start: int, stop: int) -> _Rows:
        """The lengths, role codes and masks of examples [start, stop)."""
        with self._lock:
            hit = self._recent.get((start, stop))
        if hit is not None:
            return hit
        lengths = self.index.rows(start, stop).lengths
        roles = self.index.roles(start, stop, self.width)
        q_mask = select_positions(self.query, lengths, roles.codes, roles, self.width, "query")
        if self.keep is not None:
            q_mask &= self.keep[start:stop, None]
        out = _Rows(lengths, roles.codes, q_mask,
                    select_positions(self.key, lengths, roles.codes, roles, self.width, "key"))
        with self._lock:
            self._recent[(start, stop)] = out
            while len(self._recent) > self.RECENT:
                self._recent.pop(next(iter(self._recent)))
        return out

    def ranges(self) -> list[tuple[int, int]]:
        """The committed chunks holding at least one selected query row."""
        if self.query is None and self.keep is None:  # every real position of every example
            return list(self.store.chunks())
        return [(a, b) for a, b in self.store.chunks() if self.rows(a, b).q_mask.any()]

    def scan(self, hooks: list[str], ranges: Sequence[tuple[int, int]]) -> Iterator[Chunk]:
        """Chunks `ranges` (a subset of `ranges()`) with these pattern hooks."""
        return stream(self.store, [], hooks, examples=self.index, ranges=ranges, label="attention")

    def _read(self, hook: str, chunk: Chunk, heads: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """pattern [example, head, query, key], q_pos [example, query], q_sel [example, query] of a chunk."""
        info = self.store.hook_info(hook)
        start, stop = chunk.start, chunk.stop
        pattern = chunk.full[hook]
        if heads != list(range(pattern.shape[1])):
            pattern = pattern[:, heads]
        sel = self.rows(start, stop).q_mask
        if info.dims[2] == "answer":
            q_pos = chunk.answer_pos
            q_sel = np.take_along_axis(sel, q_pos, axis=1)
            stored = np.zeros_like(sel)
            np.put_along_axis(stored, q_pos, True, axis=1)
            missing = sel & ~stored
            if self.query is not None and missing.any():
                e, p = np.argwhere(missing)[0]
                raise InvalidParameterError(
                    f"attention query={self.query!r}: store {self.store.path} holds {hook} at the answer positions "
                    f"only, and example {start + e}'s position {p} is not one; query the answer positions "
                    f"(query=None) or re-ingest with --hooks pattern:all")
        else:
            q_pos = np.broadcast_to(np.arange(pattern.shape[2]), (stop - start, pattern.shape[2]))
            q_sel = sel
        return pattern, q_pos, q_sel

    def raw_chunk(self, layers: list[int], heads: list[int], hooks: list[str], chunk: Chunk) -> pl.DataFrame:
        """Raw rows of one chunk, every chosen layer, in (example, layer, head, q_pos, k_pos) order."""
        start, stop = chunk.start, chunk.stop
        patterns = []
        for hook in hooks:
            pattern, q_pos, q_sel = self._read(hook, chunk, heads)
            patterns.append(pattern)
        stacked = np.stack(patterns, axis=1)  # [example, layer, head, query, key]
        del patterns
        rows = self.rows(start, stop)
        cand = candidate_keys(q_pos, rows.lengths[:, None], self.width, self.causal)
        pairs = selected_pairs(q_sel, rows.k_mask, cand)
        e, li, hi, qi, k = raw_indices(pairs, len(layers), len(heads))
        qp = q_pos[e, qi]
        codes = rows.codes
        return pl.DataFrame({
            "example_id": chunk.example_id[e], "layer": np.asarray(layers, dtype=np.int64)[li],
            "head": np.asarray(heads, dtype=np.int64)[hi], "q_pos": qp.astype(np.int64), "k_pos": k.astype(np.int64),
            "q_role": self.roles.strings(codes[e, qp]), "k_role": self.roles.strings(codes[e, k]),
            "value": stacked[e, li, hi, qi, k].astype(np.float32),
        }, schema=RAW_SCHEMA)

    def units(self, li: int, heads: list[int], hook: str, chunk: Chunk, key_group: str, by: list[str],
              label_codes: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """The units of one chunk and layer: group column codes (see _Grouping), value, entropy [unit].

        li: the layer's index among the queried layers (its code).
        """
        start, stop = chunk.start, chunk.stop
        pattern, q_pos, q_sel = self._read(hook, chunk, heads)
        e, qi = np.nonzero(q_sel)  # the selected query rows only, converted once
        rows = np.moveaxis(pattern, 2, 1)[q_sel].astype(np.float64)  # [row, head, key], rows in (e, qi) order
        del pattern
        qp = q_pos[e, qi]
        chunk_rows = self.rows(start, stop)
        cand = candidate_keys(qp, chunk_rows.lengths[e], self.width, self.causal)  # [row, key]
        pairs = cand & chunk_rows.k_mask[e]
        codes = chunk_rows.codes[e]  # [row, key]
        n_roles = len(self.roles.names)
        mass, exists = unit_masses(rows, pairs, key_group, key_roles=codes, n_roles=n_roles)
        entropy = row_entropy(rows, cand)  # [row, head]
        r, h, g = np.nonzero(np.broadcast_to(exists[:, None], mass.shape))
        idx = start + e[r]  # row of the examples table
        out: dict[str, np.ndarray] = {"layer": np.full(r.size, li), "head": h}
        for c in by:
            if c == "q_pos":
                out[c] = qp[r]
            elif c == "q_role":
                out[c] = np.where(codes[r, qp[r]] < 0, n_roles, codes[r, qp[r]])
            elif c == "k_pos":
                out[c] = g
            elif c == "k_role":
                out[c] = np.where(codes[r, g] < 0, n_roles, codes[r, g]) if key_group == "pos" else g
            elif c == "example_id":
                out[c] = idx
            else:
                out[c] = label_codes[c][idx]
        return out, mass[r, h, g], entropy[r, h]


def _indices(value: int | Sequence[int] | None, count: int, what: str) -> list[int]:
    if value is None:
        return list(range(count))
    items = [value] if isinstance(value, (int, np.integer)) else list(value)
    out = []
    for item in items:
        if isinstance(item, (bool, np.bool_)) or not isinstance(item, (int, np.integer)):
            raise InvalidParameterError(f"attention {what}: expected ints, got {item!r}")
        if not 0 <= int(item) < count:
            raise InvalidParameterError(f"attention {what}: {int(item)} is out of range; the model has {count}")
        out.append(int(item))
    if len(set(out)) != len(out):
        raise InvalidParameterError(f"attention {what}: {items} repeats an entry")
    return out
