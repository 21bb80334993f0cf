"""`dla(store, level, target, pos)`: direct logit attribution, streamed from a store.

Reads only the hooks the granularity needs (hook_z and MLP hook_post at the read positions,
the final LayerNorm scale; for paths also earlier layers at every position, the ln1 scales and
the later layers' patterns), one committed chunk at a time, and returns the tidy table:

    example_id, answer_idx, answer_pos, target, component, layer, head, value
    (+ neuron for level='neuron', + source for level='path')

target (targets.py): 'correct' (the answer's logit), 'diff' (minus the counterfactual's), a token
id or a list of them (one row per token, with a `token` column after `target`), an expression such
as 'W_U[:,7] - W_U[:,3]', or a vector (array, .npy file, saved direction name). pos (read_at.py):
None reads the answer positions; any position selector ('END', 3, -1, 'all', a list) reads there,
and the keys become example_id, pos, role.

The components of a row sum to its logit minus b_U (or logit difference minus the b_U difference;
for a vector read as it is, to the final residual stream . v); see attribution.py for the names.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import polars as pl

from actstore.errors import InvalidParameterError
from actstore.query.attribution import (COMPUTE, Component, check_level, compute_table, direct_attribution,
                                        make_target, mlp_table, required_hooks)
from actstore.query.chunks import Chunk, ExampleArrays, Examples, Product, at_answers, stream
from actstore.query.executor import Job, run
from actstore.query.head_dot import answer_positions, head_dot
from actstore.query.memo import keeps_chunks, memo
from actstore.query.read_at import ReadAt
from actstore.query.readout import Readout, Target, Weights
from actstore.query.tables import ColumnType, item_frame
from actstore.query.targets import ANSWER_KINDS, ReadTarget, parse_target
from actstore.store.arch import Arch
from actstore.store.reader import Store
from actstore.query.options import Level

ITEM_SCHEMA: dict[str, ColumnType] = {"component": pl.String, "layer": pl.Int64, "head": pl.Int64}


def dla(store: Store, level: Level = "head", target: Any = "correct", *, pos: Any = None, answer: int = 0,
        final_ln: bool | None = None, client: Any = None) -> pl.DataFrame:
    """Direct logit attribution at `level` ('layer' | 'head' | 'neuron' | 'path') toward `target`
    (see the module docstring) at the answer positions or at `pos`, one row per (example, position,
    [token,] component), float64. answer: with pos, whose tokens 'correct' / 'diff' read; final_ln:
    read a vector target after the final LayerNorm (True) or as it is (False; see targets.py);
    client: a dask.distributed Client to run the chunks on (the same table, row for row)."""
    plan = DlaPlan(store, level, target, pos, answer, final_ln)
    frames = list(run(Job(dla_plan, plan.params), store, client, plan))
    return pl.concat(frames, rechunk=False) if frames else plan.empty()


def dla_frames(store: Store, level: Level = "head", target: Any = "correct", *, pos: Any = None, answer: int = 0,
               final_ln: bool | None = None, client: Any = None) -> Iterator[pl.DataFrame]:
    """The rows of `dla(...)` one chunk at a time (for tables too big to hold); parameters as dla's."""
    plan = DlaPlan(store, level, target, pos, answer, final_ln)
    return run(Job(dla_plan, plan.params), store, client, plan)


def dla_plan(store: Store, level: Level = "head", target: Any = "correct", pos: Any = None, answer: int = 0,
             final_ln: bool | None = None) -> "DlaPlan":
    """The executor's entry point (executor.Job): dla's plan on `store`."""
    return DlaPlan(store, level, target, pos, answer, final_ln)


class DlaPlan:
    """dla resolved against a store (parameters checked, read-out built); one table per chunk."""

    def __init__(self, store: Store, level: Level, target: Any, pos: Any, answer: int,
                 final_ln: bool | None) -> None:
        check_level(level)
        self.params = dict(level=level, target=target, pos=pos, answer=answer, final_ln=final_ln)
        self.store, self.level = store, level
        self.weights = Weights.from_store(store)
        self.tgt = parse_target(target, self.weights, store, final_ln)
        self.at = ReadAt.build(store, pos, answer)
        self.hooks = required_hooks(self.weights, level)
        self.at.check_hooks(store, *self.hooks, f"dla level={level!r}")
        check_counter(store, self.at.arrays, self.tgt)
        self.readout = answer_readout(store, self.weights, self.at.arrays, self.tgt)

    def ranges(self) -> list[tuple[int, int]]:
        return self.at.ranges(self.store)

    def partials(self, ranges: Sequence[tuple[int, int]]) -> Iterator[pl.DataFrame]:
        tgt = self.tgt
        # one target row per answer: each hook_z's heads (and, but for level 'neuron', each MLP hook_post's
        # output) are computed on its reading thread as its read lands, straight from the stored float16
        # (query/head_dot.py), with no float32 copy of its answers (on the GPT-2 shape's 8 chunks ~10% faster
        # than casting there and computing here; the one-chunk zoo stores have nothing else to overlap that with)
        on_threads = tgt.kind in ANSWER_KINDS and self.level != "path"
        for chunk in stream(self.store, *self.hooks, tokens=self.level == "path", examples=self.at.arrays,
                            answer_dtype=COMPUTE, ranges=ranges, products=self.answer_products if on_threads else None):
            rows = ([chunk_target(self.store, self.readout, self.at.arrays, chunk, tgt.kind)]
                    if tgt.kind in ANSWER_KINDS else tgt.rows(self.readout, chunk.answer_pos.shape))
            per_row = []
            for row in rows:
                values, comps = direct_attribution(self.weights, self.readout, chunk, level=self.level, target=row,
                                                   products=chunk.products)
                per_row.append(values)
            values = np.stack(per_row, axis=2) if len(per_row) > 1 else per_row[0][:, :, None, :]
            yield self.at.frame(chunk.start, chunk.stop, self.items(comps), values, {"target": tgt.label},
                                tgt.tokens if tgt.per_token else None)

    def answer_products(self, rows: ExampleArrays, start: int, stop: int) -> dict[str, Product]:
        """chunks.stream's products for a chunk's examples [start, stop) toward an answer target: each
        layer's hook_z as read -> its head_values at the answers, and (but for level 'neuron') each MLP
        hook_post -> its mlp_values, toward the chunk's Target (made here, on the scan's thread), in one pass
        over the stored values (query/head_dot.py)."""
        chunk = Chunk(example_id=rows.example_id, lengths=rows.lengths, tokens=None, answer_pos=rows.answer_pos,
                      answer_tokens=rows.answer_tokens, counter_tokens=rows.counter_tokens,
                      input_tokens=rows.input_tokens, start=start)
        target = chunk_target(self.store, self.readout, self.at.arrays, chunk, self.tgt.kind)
        arch = self.weights.arch
        out: dict[str, Product] = {
            Arch.z(layer): _AnswerDot(*target.indexed(compute_table(self.readout, "head", layer)))
            for layer in range(arch.n_layers)}
        if arch.has_mlp and self.level != "neuron":
            out.update({Arch.mlp_post(layer): _AnswerDot(*target.indexed(mlp_table(self.readout, layer)))
                        for layer in range(arch.n_layers)})
        return out

    def items(self, comps: list[Component]) -> pl.DataFrame:
        """component_items, kept with the store: the same frame for every chunk and later queries."""
        return memo(self.store).get(("dla items", self.level, tuple(c.name for c in comps)), (),
                                    lambda: component_items(comps, self.level))

    def empty(self) -> pl.DataFrame:
        return self.at.empty(component_items([], self.level), {"target": pl.String}, self.tgt.per_token)


class _AnswerDot:
    """A chunks.Product: the head_values of a chunk's hook_z [example, pos, head, d_head] as read, at its answer
    positions, toward table rows `rows` [row, head, d_head] at `index` [example, answer] (Target.indexed); or
    the mlp_values [example, answer] of an MLP hook_post [example, pos, d_mlp], toward rows [row, 1, d_mlp]."""

    def __init__(self, rows: np.ndarray, index: np.ndarray) -> None:
        self.rows, self.index = rows, index

    def __call__(self, z: np.ndarray, dims: Sequence[str], answer_pos: np.ndarray) -> np.ndarray:
        mlp = len(dims) == 3  # [example, pos | answer, d_mlp]
        if tuple(dims) in (("example", "pos", "head", "d_head"), ("example", "pos", "d_mlp")):
            at, pos = z, answer_pos  # read at the answers straight from the chunk
        else:
            at = at_answers(z, dims, answer_pos)  # [example, answer, ...]: e.g. stored at the answers only
            pos = answer_positions(at)
        values = head_dot(at[:, :, None, :] if mlp else at, pos, self.index, self.rows)
        return values[..., 0] if mlp else values


def check_counter(store: Store, ex: Examples, target: ReadTarget) -> None:
    """'diff' needs counterfactual tokens: a one-line error naming the store if its task has none."""
    if target.kind == "diff" and not ex.has_counter:
        raise InvalidParameterError(f"target 'diff' needs counterfactual tokens, and the {store.manifest.task!r} "
                                    f"examples of store {store.path} have none; use target='correct'")


def answer_readout(store: Store, weights: Weights, ex: Examples, target: ReadTarget) -> Readout:
    """The Readout a target reads; for 'correct' / 'diff', that of the store's answer tokens, kept with
    the store (query/memo.py) so that later queries skip gathering and sorting every answer's tokens."""
    if target.kind not in ANSWER_KINDS:
        return target.readout(weights, answer_token_ids(ex, target.kind))
    return memo(store).get(("answer readout", target.kind), (weights, ex),
                           lambda: target.readout(weights, answer_token_ids(ex, target.kind)))


def chunk_target(store: Store, readout: Readout, ex: Examples, chunk: Chunk, kind: str) -> Target:
    """The Target of a chunk's answers toward 'correct' / 'diff', kept with the store for later queries
    together with what it computes (its folded tables gathered at every answer, the embeddings' share),
    within the store's byte budget (for a store of few enough chunks: memo.keeps_chunks)."""
    if not keeps_chunks(store):
        return make_target(readout, chunk, kind)
    kept = memo(store)
    return kept.get(("answer target", kind, chunk.start, chunk.stop), (readout, ex),
                    lambda: make_target(readout, chunk, kind).keep(kept.budget))


def answer_token_ids(ex: Examples, target: str) -> np.ndarray:
    """The token ids (repeats allowed) whose directions a query toward `target` reads."""
    return ex.answer_ids(target)


def component_items(comps: list[Component], level: str) -> pl.DataFrame:
    """The item columns of a dla table: component, layer, head (+ neuron / source)."""
    schema = dict(ITEM_SCHEMA)
    cols: dict[str, list[object]] = {"component": [c.name for c in comps], "layer": [c.layer for c in comps],
                                     "head": [c.head for c in comps]}
    if level == "neuron":
        schema["neuron"] = pl.Int64
        cols["neuron"] = [c.neuron for c in comps]
    if level == "path":
        schema["source"] = pl.String
        cols["source"] = [c.source for c in comps]
    return item_frame(cols, schema)
