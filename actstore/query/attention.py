"""`attention(store, ...)`: attention probabilities by position or role, raw or aggregated.

    attention(store, layers=None, heads=None, query=None, key=None, aggregate=None, by=None, where=None)

Raw (aggregate None and no by): one row per (example, layer, head, query position, key
position) selected: example_id, layer, head, q_pos, k_pos, q_role, k_role, prob (float32, as
stored). Pad positions are never rows, nor keys after the query in a causal model.

Aggregated (aggregate='mean', or any by): one row per group: layer, head, the `by` columns,
mean, std, n, entropy. The averaged value is a *unit*'s attention mass: the probability a
selected query row puts on its selected keys, summed over the keys of one group. Keys form one
group unless by holds 'k_pos' (a group per key position) or 'k_role' (per role: the mass on all
keys of that role, e.g. every 'open' bracket). So query='END', key='IO' gives END -> IO, and
query='=', key=['a0','a1','a2','a3'], by=['k_role','carry_2'] gives '=' -> each a-digit split by
carry. n counts units (a row with no selected key in a group makes no unit); entropy is the mean
entropy (nats) of the units' query rows over all their keys. by may also hold 'q_pos',
'q_role', 'example_id' and any label column of the store's examples.

Streams one chunk and one layer at a time; aggregation keeps only per-group moments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from actstore.errors import InvalidParameterError, UnknownHookError
from actstore.query.attention_stats import (
    candidate_keys, merge_moments, partial_moments, raw_indices, row_entropy, selected_pairs, unit_masses)
from actstore.query.selectors import Roles, Selector, check_labels, example_filter, select_positions

RAW_SCHEMA: dict[str, pl.DataType] = {
    "example_id": pl.Int64, "layer": pl.Int64, "head": pl.Int64, "q_pos": pl.Int64, "k_pos": pl.Int64,
    "q_role": pl.String, "k_role": pl.String, "prob": pl.Float32}
UNIT_COLUMNS = ("example_id", "q_pos", "q_role", "k_pos", "k_role")
AGGREGATES = ("mean",)


def attention(store: Any, layers: int | Sequence[int] | None = None, heads: int | Sequence[int] | None = None,
              query: Selector = None, key: Selector = None, aggregate: str | None = None,
              by: str | Sequence[str] | None = None,
              where: pl.Expr | Mapping[str, Any] | None = None) -> pl.DataFrame:
    """Attention probabilities of the chosen heads from `query` positions/roles to `key` ones.

    layers, heads: ints or lists (None: all; heads apply in every chosen layer).
    query, key:    position selectors (int, role name, list, None; see selectors.py).
    aggregate:     None for raw rows, 'mean' for group statistics (implied by `by`).
    by:            group columns besides layer and head (see the module docstring).
    where:         keep only examples matching this (Polars expression or {label: value(s)}).
    """
    cfg = store.config
    layers_ = _indices(layers, int(cfg["n_layers"]), "layers")
    heads_ = _indices(heads, int(cfg["n_heads"]), "heads")
    by_ = [by] if isinstance(by, str) else list(by or [])
    if aggregate is not None and aggregate not in AGGREGATES:
        raise InvalidParameterError(f"aggregate must be None or one of {', '.join(AGGREGATES)}, got {aggregate!r}")
    labels = [c for c in by_ if c not in UNIT_COLUMNS]
    check_labels(store.examples, labels, "attention by")
    if len(set(by_)) != len(by_) or {"layer", "head"} & set(by_):
        raise InvalidParameterError(f"attention by={by_}: give each column once (layer and head are always groups)")
    hooks = [f"blocks.{layer}.attn.hook_pattern" for layer in layers_]
    for name in hooks:
        if name not in store.hooks:
            raise UnknownHookError(f"attention needs {name!r}, which store {store.path} does not hold; "
                                   f"re-ingest with --hooks default (or add pattern)")
    plan = _Plan(store, query, key, where)
    if aggregate is None and not by_:
        frames = [plan.raw_chunk(layers_, heads_, hooks, start, stop) for start, stop in plan.chunks()]
        frames = [f for f in frames if f.height]
        return pl.concat(frames, rechunk=False) if frames else pl.DataFrame(schema=RAW_SCHEMA)
    key_group = "pos" if "k_pos" in by_ else "role" if "k_role" in by_ else "all"
    label_frame = store.examples.select("example_id", *labels) if labels else None
    partials = []
    for start, stop in plan.chunks():
        for layer, hook in zip(layers_, hooks):
            units = plan.units(layer, heads_, hook, start, stop, key_group, by_)
            if units.height == 0:
                continue
            if label_frame is not None:
                units = units.join(label_frame, on="example_id", how="left")
            partials.append(partial_moments(units, ["layer", "head", *by_]))
    groups = ["layer", "head", *by_]
    if not partials:
        schema = {"layer": pl.Int64, "head": pl.Int64}
        schema |= {c: (RAW_SCHEMA[c] if c in RAW_SCHEMA else store.examples.schema[c]) for c in by_}
        return pl.DataFrame(schema=schema | {"mean": pl.Float64, "std": pl.Float64, "n": pl.Int64,
                                             "entropy": pl.Float64})
    return merge_moments(pl.concat(partials), groups).sort(groups, nulls_last=True)


class _Plan:
    """What a query reads: examples kept, query and key masks over positions, roles; per chunk."""

    def __init__(self, store: Any, query: Selector, key: Selector, where: pl.Expr | Mapping[str, Any] | None):
        self.store = store
        ex = store.examples
        self.ids = ex.get_column("example_id").to_numpy().astype(np.int64)
        self.lengths = ex.get_column("length").to_numpy().astype(np.int64)
        n_answers = store.n_answers
        self.answer_pos = np.asarray(ex.select(pl.col("answer_positions").list.to_array(n_answers)).to_series()
                                     .to_numpy(), dtype=np.int64).reshape(len(self.ids), n_answers)
        self.width = int(store.manifest.width)
        self.roles = Roles.from_tokens(store.tokens, len(self.ids), self.width)
        self.q_mask = select_positions(query, self.lengths, self.roles.codes, self.roles, self.width, "query")
        self.k_mask = select_positions(key, self.lengths, self.roles.codes, self.roles, self.width, "key")
        keep = example_filter(ex, where)
        if keep is not None:
            self.q_mask &= keep[:, None]
        self.causal = store.config.get("attention_dir", "causal") != "bidirectional"
        self.query = query

    def chunks(self) -> list[tuple[int, int]]:
        """Committed chunks holding at least one selected query row."""
        return [(a, b) for a, b in self.store.chunks() if self.q_mask[a:b].any()]

    def _read(self, hook: str, start: int, stop: int, heads: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """pattern [example, head, query, key], q_pos [example, query], q_sel [example, query] of a chunk."""
        info = self.store.hook_info(hook)
        pattern = self.store.read(hook, start, stop)
        if heads != list(range(pattern.shape[1])):
            pattern = pattern[:, heads]
        sel = self.q_mask[start:stop]
        if info.dims[2] == "answer":
            q_pos = self.answer_pos[start:stop]
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

    def raw_chunk(self, layers: list[int], heads: list[int], hooks: list[str], start: int,
                  stop: int) -> pl.DataFrame:
        """Raw rows of one chunk, every chosen layer, in (example, layer, head, q_pos, k_pos) order."""
        patterns = []
        for hook in hooks:
            pattern, q_pos, q_sel = self._read(hook, start, stop, heads)
            patterns.append(pattern)
        stacked = np.stack(patterns, axis=1)  # [example, layer, head, query, key]
        del patterns
        cand = candidate_keys(q_pos, self.lengths[start:stop], self.width, self.causal)
        pairs = selected_pairs(q_sel, self.k_mask[start:stop], cand)
        e, li, hi, qi, k = raw_indices(pairs, len(layers), len(heads))
        qp = q_pos[e, qi]
        codes = self.roles.codes[start:stop]
        return pl.DataFrame({
            "example_id": self.ids[start:stop][e], "layer": np.asarray(layers, dtype=np.int64)[li],
            "head": np.asarray(heads, dtype=np.int64)[hi], "q_pos": qp.astype(np.int64), "k_pos": k.astype(np.int64),
            "q_role": self.roles.strings(codes[e, qp]), "k_role": self.roles.strings(codes[e, k]),
            "prob": stacked[e, li, hi, qi, k].astype(np.float32),
        }, schema=RAW_SCHEMA)

    def units(self, layer: int, heads: list[int], hook: str, start: int, stop: int, key_group: str,
              by: list[str]) -> pl.DataFrame:
        """One row per unit of one chunk and layer: layer, head, the unit columns `by` needs, value, entropy."""
        pattern, q_pos, q_sel = self._read(hook, start, stop, heads)
        lengths = self.lengths[start:stop]
        cand = candidate_keys(q_pos, lengths, self.width, self.causal)
        pairs = selected_pairs(q_sel, self.k_mask[start:stop], cand)
        codes = self.roles.codes[start:stop]
        mass, exists = unit_masses(pattern, pairs, key_group, key_roles=codes, n_roles=len(self.roles.names))
        entropy = row_entropy(pattern, cand)  # [example, head, query]
        e, h, qi, g = np.nonzero(np.broadcast_to(exists[:, None], mass.shape))
        cols: dict[str, Any] = {"layer": np.full(e.size, layer, dtype=np.int64),
                                "head": np.asarray(heads, dtype=np.int64)[h]}
        qp = q_pos[e, qi]
        if "example_id" in by or any(c not in ("q_pos", "q_role", "k_pos", "k_role") for c in by):
            cols["example_id"] = self.ids[start:stop][e]
        if "q_pos" in by:
            cols["q_pos"] = qp.astype(np.int64)
        if "q_role" in by:
            cols["q_role"] = self.roles.strings(codes[e, qp])
        if "k_pos" in by:
            cols["k_pos"] = g.astype(np.int64)
        if "k_role" in by:
            role_code = codes[e, g] if key_group == "pos" else np.where(g == len(self.roles.names), -1, g)
            cols["k_role"] = self.roles.strings(role_code)
        cols["value"] = mass[e, h, qi, g]
        cols["entropy"] = entropy[e, h, qi]
        return pl.DataFrame(cols)


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
