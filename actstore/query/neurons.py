"""`neurons(store, layers, ...)`: each MLP neuron's activation and its output projected on a direction.

    neurons(store, layers=None, direction='answer', through_head=None, pos=None, top_k=None,
            answer=0, final_ln=None, attention_weighted=False, rank_by='projection', where=None)

layers: an int or a list of MLP layers, as `attention` takes them (None: every layer).

One row per (example, position, neuron): example_id, pos, layer, neuron, activation (the
stored blocks.L.mlp.hook_post, float32) and projection (float64):

    projection = post[e, p, n] * (W_out[L, n] . d) * scale[e, p]

with d and the scale as directions.py documents: for 'answer'/'diff' d is the answer's
(centred) unembedding direction and scale = 1 / ln_final scale at p; through head (l, h), d is
pulled back through the head's OV, scale = 1 / ln1 scale of layer l at p (the key position)
times 1 / ln_final scale at the query position q the head writes to (x pattern[e, h, q, p] if
attention_weighted). Summed over a layer's neurons (plus b_out), the direct projection is the
MLP's direct logit attribution at p.

Rows: pos=None takes each answer position and that answer's tokens (q = p); otherwise `pos` is a
position selector (int, role, list; see selectors.py) and every row reads answer `answer`'s
tokens, with q = that answer's position. top_k keeps, per neuron, the k rows with the largest
`rank_by` value ('projection', 'activation', or with a leading '-' the smallest), adding `rank`.

Streams one chunk at a time; top_k keeps only k rows per neuron. See neuron_stats.py for the
correlation of neuron values with a numeric label.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from actstore.errors import InvalidParameterError, StoreCorruptError, UnknownHookError
from actstore.query.directions import (
    Direction, DirectionSpec, neuron_readout, parse_direction, parse_head, target_directions, through_head as pull_back)
from actstore.query.chunks import PAIR_BASE, Chunk, example_index, stream
from actstore.query.executor import Job, run
from actstore.query.neuron_rows import SCHEMA, NeuronRows, TopK
from actstore.query.readout import Weights
from actstore.query.selectors import Selector, example_filter, select_positions
from actstore.store.arch import Arch
from actstore.store.reader import Store
from actstore.query.options import RANK_BY, RankBy



def neurons(store: Store, layers: int | Sequence[int] | None = None, direction: DirectionSpec = "answer",
            through_head: Any = None, pos: Selector = None, top_k: int | None = None, *, answer: int = 0,
            final_ln: bool | None = None, attention_weighted: bool = False, rank_by: RankBy = "projection",
            where: pl.Expr | Mapping[str, Any] | None = None, client: Any = None) -> pl.DataFrame:
    """Activation and projection of every neuron of `layers` at the chosen positions (see module doc);
    client: a dask.distributed Client to run the chunks on (the same table, row for row)."""
    if rank_by not in RANK_BY:
        raise InvalidParameterError(f"rank_by must be one of {', '.join(RANK_BY)}, got {rank_by!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise InvalidParameterError(f"top_k must be a positive int or None, got {top_k!r}")
    options = dict(direction=direction, through_head=through_head, pos=pos, answer=answer, final_ln=final_ln,
                   attention_weighted=attention_weighted, where=where)
    reduce: tuple[Any, ...] = ("rows",) if top_k is None else ("top_k", int(top_k), rank_by)
    plans = [LayerPlan(store, layer, options, reduce) for layer in mlp_layers(store, layers, through_head)]
    frames = []
    for plan in plans:
        parts = run(Job(layer_plan, plan.params), store, client, plan)
        if top_k is not None:
            best = TopK(int(top_k), rank_by)
            for part in parts:
                best.merge(part)
            frames.append(best.frame(plan.layer))
        else:
            frames.extend(parts)
    if not frames:
        return pl.DataFrame(schema=SCHEMA)
    return pl.concat(frames, rechunk=False) if len(frames) > 1 else frames[0]


def neuron_frames(store: Store, layers: int | Sequence[int] | None = None, direction: DirectionSpec = "answer",
                  through_head: Any = None, pos: Selector = None, client: Any = None,
                  **options: Any) -> Iterator[pl.DataFrame]:
    """The rows of `neurons(...)` (without top_k) one chunk at a time, layer after layer, for tables too
    big to hold; options: answer, final_ln, attention_weighted, where."""
    options = dict(direction=direction, through_head=through_head, pos=pos, **options)
    plans = [LayerPlan(store, layer, options, ("rows",)) for layer in mlp_layers(store, layers, through_head)]
    for plan in plans:
        yield from run(Job(layer_plan, plan.params), store, client, plan)


def layer_plan(store: Store, layer: int, options: Mapping[str, Any], reduce: tuple[Any, ...]) -> "LayerPlan":
    """The executor's entry point (executor.Job): one layer of a neuron query on `store`."""
    return LayerPlan(store, layer, options, reduce)


class LayerPlan:
    """One MLP layer of a neuron query. Partials per chunk: reduce ('rows',) its rows as a table,
    ('top_k', k, rank_by) its TopK."""

    def __init__(self, store: Store, layer: int, options: Mapping[str, Any], reduce: tuple[Any, ...]) -> None:
        self.params = dict(layer=layer, options=dict(options), reduce=tuple(reduce))
        self.layer, self.reduce = layer, tuple(reduce)
        self.plan = NeuronPlan.build(store, layer, **options)

    def ranges(self) -> list[tuple[int, int]]:
        return self.plan.ranges()

    def partials(self, ranges: Sequence[tuple[int, int]]) -> Iterator[Any]:
        for rows in self.plan.stream(ranges):
            if self.reduce[0] == "rows":
                yield rows.frame(self.layer)
            else:
                best = TopK(self.reduce[1], self.reduce[2])
                best.add(rows)
                yield best

    def empty(self) -> pl.DataFrame:
        return pl.DataFrame(schema=SCHEMA)


def mlp_layers(store: Store, layers: int | Sequence[int] | None, through_head: Any = None) -> list[int]:
    """The MLP layers a neuron query covers: `layers` checked (an int or a list); None: every layer,
    or with `through_head` every layer before the head's (the outputs the head can read)."""
    arch = store.arch
    if not arch.has_mlp:
        raise InvalidParameterError(f"store {store.path}'s model is attention-only: it has no MLP neurons "
                                    f"(stored hooks: {', '.join(store.hooks)})")
    if layers is None:
        last = arch.n_layers if through_head is None else parse_head(through_head, arch.n_layers, arch.n_heads)[0]
        if last == 0:
            raise InvalidParameterError(f"no MLP layer comes before through_head {through_head!r}; pick a head in a "
                                        "later layer")
        return list(range(last))
    items = [layers] if isinstance(layers, (int, np.integer)) and not isinstance(layers, bool) else layers
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or not items:
        raise InvalidParameterError(f"neurons layers={layers!r}: expected an int or a non-empty list of ints "
                                    f"in [0, {arch.n_layers})")
    out = []
    for layer in items:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < arch.n_layers:
            raise InvalidParameterError(f"neurons layers={layers!r}: {layer!r} is not a layer in [0, {arch.n_layers})")
        out.append(int(layer))
    if len(set(out)) != len(out):
        raise InvalidParameterError(f"neurons layers={layers!r}: give each layer once")
    return out


def projections(post: np.ndarray, readout: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """[row, d_mlp] float64 projections: post * readout * scale.

    post: [row, d_mlp] activations; readout: [row, d_mlp] W_out[L, n] . d of each row's direction;
    scale: [row] the LayerNorm (and attention) factors of each row.
    """
    return post.astype(np.float64) * readout * np.asarray(scale, dtype=np.float64)[:, None]


class NeuronPlan:
    """Everything a neuron query reads, resolved once; `stream()` yields a NeuronRows per chunk."""

    def __init__(self, store: Store, layer: int, direction: Direction, head: tuple[int, int] | None,
                 pos: Selector, answer: int, attention_weighted: bool, keep: np.ndarray | None) -> None:
        self.store, self.layer, self.direction, self.head = store, layer, direction, head
        self.pos, self.answer, self.attention_weighted, self.keep = pos, answer, attention_weighted, keep
        self.weights = Weights.from_store(store)
        self.index = example_index(store)  # each chunk's examples and roles from its meta parts
        self.width = int(store.manifest.width)
        if pos is not None:  # one-line errors before any chunk is read
            select_positions(pos, np.zeros(0, np.int64), np.zeros((0, self.width), np.int16), self.index.role_names(),
                             self.width, "pos")
        self.post_hook = store.arch.mlp_post(layer)
        self.norm = self.weights.arch.norm is not None
        self.readout, self.pairs = self._readout()
        self._recent: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()  # a threaded Dask worker may run one plan's chunks on several threads

    @classmethod
    def build(cls, store: Store, layer: int, direction: DirectionSpec, through_head: Any, pos: Selector, *,
              answer: int = 0, final_ln: bool | None = None, attention_weighted: bool = False,
              where: pl.Expr | Mapping[str, Any] | None = None) -> "NeuronPlan":
        """Validate the parameters against the store (one-line errors) and resolve them."""
        arch = store.arch
        n_layers, n_heads = arch.n_layers, arch.n_heads
        if not arch.has_mlp:
            raise InvalidParameterError(f"store {store.path}'s model is attention-only: it has no MLP neurons "
                                        f"(stored hooks: {', '.join(store.hooks)})")
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < n_layers:
            raise InvalidParameterError(f"neurons layer={layer!r}: expected an int in [0, {n_layers})")
        layer = int(layer)
        hook = arch.mlp_post(layer)
        if hook not in store.hooks:
            raise UnknownHookError(f"neurons needs {hook!r}, which store {store.path} does not hold (stored "
                                   f"hooks: {', '.join(store.hooks)}); re-ingest with --hooks default")
        if isinstance(answer, bool) or not isinstance(answer, (int, np.integer)) or not 0 <= answer < store.n_answers:
            raise InvalidParameterError(f"neurons answer={answer!r}: expected an answer index in "
                                        f"[0, {store.n_answers})")
        dirn = parse_direction(direction, arch.d_model, final_ln, store=store)
        if dirn.kind == "diff" and not example_index(store).has_counter:
            raise InvalidParameterError(f"direction 'diff' needs counterfactual tokens, and the examples of store "
                                        f"{store.path} have none; use direction='answer' or a vector")
        head = None
        if through_head is not None:
            head = parse_head(through_head, n_layers, n_heads)
            if head[0] <= layer:
                raise InvalidParameterError(f"through_head {head[0]}.{head[1]} must be in a later layer than the "
                                            f"neurons (layer {layer}): a head reads only earlier layers' outputs")
        elif attention_weighted:
            raise InvalidParameterError("attention_weighted needs through_head (the head whose pattern weights)")
        keep = None if where is None else example_filter(store.examples, where)  # the table only for a filter
        plan = cls(store, layer, dirn, head, pos, int(answer), bool(attention_weighted), keep)
        plan._check_hooks()
        return plan

    def needed_hooks(self) -> list[str]:
        hooks = [self.post_hook]
        if self.norm and (self.direction.final_ln or self.head is not None):
            if self.direction.final_ln:
                hooks.append(Arch.final_scale)
            if self.head is not None:
                hooks.append(Arch.ln_scale(self.head[0], "ln1"))
        if self.attention_weighted and self.head is not None:
            hooks.append(Arch.pattern(self.head[0]))
        return hooks

    def _check_hooks(self) -> None:
        for name in self.needed_hooks():
            if name not in self.store.hooks:
                raise UnknownHookError(f"neurons needs {name!r}, which store {self.store.path} does not hold "
                                       f"(stored hooks: {', '.join(self.store.hooks)})")

    def _readout(self) -> tuple[np.ndarray, np.ndarray | None]:
        """[target, d_mlp] folded readouts and the sorted keys of their (answer, counterfactual) token pairs
        (None for a vector; see `target_of`)."""
        d = self.direction
        if d.kind == "vector":
            correct = counter = None
            keys = None
        else:
            keys = self.index.answer_pairs(d.kind == "diff")  # [target] sorted: np.unique's order of the pairs
            correct, counter = np.divmod(keys, PAIR_BASE) if d.kind == "diff" else (keys, None)
            if counter is not None:
                counter = counter - 1
            if counter is not None and (counter < 0).any():
                raise InvalidParameterError(f"direction 'diff': some examples of store {self.store.path} have no "
                                            f"counterfactual token")
        dirs = target_directions(self.weights, d, correct if correct is not None else np.zeros(0, np.int64), counter)
        if self.head is not None:
            dirs = pull_back(self.weights, dirs, *self.head)
        return neuron_readout(self.weights, self.layer, dirs), keys

    def target_of(self, chunk: Chunk) -> np.ndarray:
        """[example, answer] index of each answer's target (its token pair) among the readout's rows."""
        assert self.pairs is not None
        key = chunk.answer_tokens
        if self.direction.kind == "diff":
            counter = chunk.counter_tokens if chunk.counter_tokens is not None else np.full_like(key, -1)
            key = key * PAIR_BASE + counter + 1
        at = np.searchsorted(self.pairs, key)
        if key.size and (at.max() >= self.pairs.size or (self.pairs[np.minimum(at, self.pairs.size - 1)] != key).any()):
            raise StoreCorruptError(f"store {self.store.path}: examples from {chunk.start} have answers its answer "
                                    f"facts (derived/answer_facts-*) lack; delete that file")
        return at

    def rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Selected rows of examples [start, stop): local example index, position, answer index [row]."""
        with self._lock:
            hit = self._recent.get((start, stop))
        if hit is not None:
            return hit
        if self.pos is None:
            answer_pos = self.index.rows(start, stop).answer_pos
            e, j = np.nonzero(np.ones(answer_pos.shape, dtype=bool))
            p = answer_pos[e, j]
        else:
            roles = self.index.roles(start, stop, self.width)
            mask = select_positions(self.pos, self.index.rows(start, stop).lengths, roles.codes, roles, self.width,
                                    "pos")
            e, p = np.nonzero(mask)
            j = np.full(e.size, self.answer)
        if self.keep is not None:
            ok = self.keep[start:stop][e]
            e, p, j = e[ok], p[ok], j[ok]
        with self._lock:  # ranges() computes every chunk's rows; the scan asks for each again
            self._recent[(start, stop)] = (e, p, j)
            while len(self._recent) > 2:
                self._recent.pop(next(iter(self._recent)))
        return e, p, j

    def ranges(self) -> list[tuple[int, int]]:
        """The committed chunks with selected rows."""
        if self.pos is None and self.keep is None:
            return list(self.store.chunks())
        return [(start, stop) for start, stop in self.store.chunks() if self.rows(start, stop)[0].size]

    def stream(self, ranges: Sequence[tuple[int, int]] | None = None) -> Iterator[NeuronRows]:
        """NeuronRows of each chunk of `ranges` (default `ranges()`), in example order."""
        for chunk in stream(self.store, [], self.needed_hooks(), examples=self.index,
                            ranges=self.ranges() if ranges is None else ranges, label=f"neurons L{self.layer}"):
            yield self.chunk_rows(chunk, *self.rows(chunk.start, chunk.stop))

    def chunk_rows(self, chunk: Chunk, e: np.ndarray, p: np.ndarray, j: np.ndarray) -> NeuronRows:
        post = self._at(chunk, self.post_hook, e, p)  # [row, d_mlp]
        q = chunk.answer_pos[e, j]  # the position the direction is read at (through a head)
        scale = np.ones(e.size)
        if self.norm and self.head is not None:
            scale /= self._at(chunk, Arch.ln_scale(self.head[0], "ln1"), e, p)[:, 0]
        if self.norm and self.direction.final_ln:
            scale /= self._at(chunk, Arch.final_scale, e, q if self.head is not None else p)[:, 0]
        if self.attention_weighted and self.head is not None:
            scale *= self._pattern(chunk, e, p, q, j)
        readout = self.readout[0][None, :] if self.pairs is None else self.readout[self.target_of(chunk)[e, j]]
        return NeuronRows(chunk.example_id[e], p, post.astype(np.float32, copy=False),
                          projections(post, readout, scale))

    def _at(self, chunk: Chunk, hook: str, e: np.ndarray, p: np.ndarray) -> np.ndarray:
        """A [example, pos, ...] hook's values at rows (e, p): [row, ...], mapping p to answers if needed."""
        arr = chunk.full[hook]
        if self.store.hook_info(hook).positions == "answer":
            return arr[e, self._answer_index(hook, chunk, e, p)]
        return arr[e, p]

    def _pattern(self, chunk: Chunk, e: np.ndarray, p: np.ndarray, q: np.ndarray, j: np.ndarray) -> np.ndarray:
        hook = Arch.pattern(self.head[0])  # type: ignore[index]
        arr = chunk.full[hook]  # [example, head, query|answer, key]
        qi = j if self.store.hook_info(hook).dims[2] == "answer" else q
        return arr[e, self.head[1], qi, p].astype(np.float64)  # type: ignore[index]

    def _answer_index(self, hook: str, chunk: Chunk, e: np.ndarray, p: np.ndarray) -> np.ndarray:
        start = chunk.start
        ans = chunk.answer_pos[e]  # [row, answer]
        hit = ans == p[:, None]
        if not hit.any(axis=1).all():
            r = int(np.argmin(hit.any(axis=1)))
            raise InvalidParameterError(f"neurons pos={self.pos!r}: store {self.store.path} holds {hook} at the "
                                        f"answer positions only, and example {start + int(e[r])}'s position "
                                        f"{int(p[r])} is not one; use pos=None or re-ingest with --hooks {hook}:all")
        return np.argmax(hit, axis=1)
