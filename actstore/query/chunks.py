"""The scan: a store chunk by chunk, with the activations a query needs.

Every streamed query (dla, logit lens, attention, neurons) reads through `stream(store, ...)`,
so a query is per-chunk math plus a combine step, and every I/O improvement (prefetch on
threads, gathering answer positions as arrays arrive, handing freed memory back) reaches all
of them. It reads one committed chunk at a time (bounded memory), only the hooks asked for;
fp16 arrays stay fp16 until the math upcasts the few values it uses.

A `Chunk` is a plain container (no store inside), so the attribution math can be tested on
arrays from a TransformerLens cache exactly as it runs on a store.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import polars as pl

from actstore.errors import InvalidParameterError, StoreCorruptError, UnknownHookError
from actstore.query.memo import per_store
from actstore.query.progress import tracked
from actstore.query.selectors import Roles
from actstore.query.store_facts import read_facts, write_facts
from actstore.store.chunk_read import to_float32, transient_reads
from actstore.store.reader import Store


@dataclass
class Chunk:
    """Examples [start, stop) of a store (or a test batch) and the activations a query reads.

    example_id:     [example]
    lengths:        [example] real tokens of each example (the rest is padding)
    tokens:         [example, pos] right-padded token ids, or None if the query does not need them
    answer_pos:     [example, answer] positions whose logits predict the answers
    answer_tokens:  [example, answer] correct tokens
    counter_tokens: [example, answer] counterfactual tokens, or None
    at_answer:      hook -> its value at the answer positions, the pos axis replaced by `answer`
                    (hook_z [example, answer, head, d_head], hook_pattern [example, head, answer, key_pos],
                    hook_scale [example, answer, 1])
    full:           hook -> its value at every position ([example, pos, ...], TransformerLens order)
    """

    example_id: np.ndarray
    lengths: np.ndarray
    tokens: np.ndarray | None
    answer_pos: np.ndarray
    answer_tokens: np.ndarray
    counter_tokens: np.ndarray | None
    input_tokens: np.ndarray
    at_answer: dict[str, np.ndarray] = field(default_factory=dict)
    full: dict[str, np.ndarray] = field(default_factory=dict)
    start: int = 0  # row of the store's first example in this chunk
    products: dict[str, np.ndarray] = field(default_factory=dict)  # hook -> what stream(products=) made of it

    def __len__(self) -> int:
        return int(self.example_id.shape[0])

    @property
    def stop(self) -> int:
        return self.start + len(self)

    @property
    def n_answers(self) -> int:
        return int(self.answer_pos.shape[1])


def pos_axis(dims: Sequence[str]) -> int:
    """The axis holding (query) positions or answers: 'answer', 'query_pos' or 'pos'."""
    for name in ("answer", "query_pos", "pos"):
        if name in dims:
            return list(dims).index(name)
    raise InvalidParameterError(f"array with axes {tuple(dims)} has no position axis")


def at_answers(array: np.ndarray, dims: Sequence[str], answer_pos: np.ndarray, dtype: Any = None) -> np.ndarray:
    """A hook's value at each example's answer positions: the pos axis becomes [answer].

    array: [example, ..., pos, ...] with axis names `dims`; returned unchanged if already 'answer'
           (and of `dtype`), else as a new array (never a view of `array`, so that a big chunk can be freed)
    answer_pos: [example, answer]
    dtype: the values as this dtype (None: as stored); float16 -> float32 is converted as it is gathered
           (chunk_read.to_float32: the same bits as astype, without a float16 copy first)
    """
    axis = pos_axis(dims)
    if dims[axis] == "answer":
        return array if dtype is None else _as(array, dtype)
    # [example, pos, ...] (moveaxis only where pos is not axis 1 already: its Python cost showed per hook
    # and chunk on a many-hook store)
    moved = array if axis == 1 else np.moveaxis(array, axis, 1)
    cols = _shared_positions(answer_pos)
    run = _run(cols)
    if run is not None:  # a contiguous run (a slice copies much faster than fancy indexing)
        if axis == 1:  # a view, copied (and cast) once
            return moved[:, run].copy() if dtype is None else _as(moved[:, run], dtype, copied=False)
        picked = moved[:, run].copy()
    elif cols is not None:
        picked = moved[:, cols]
    else:
        picked = moved[np.arange(array.shape[0])[:, None], answer_pos]  # [example, answer, ...]
    picked = picked if axis == 1 else np.moveaxis(picked, 1, axis)
    return picked if dtype is None else _as(picked, dtype)


def _as(array: np.ndarray, dtype: Any, copied: bool = True) -> np.ndarray:
    """`array` as `dtype`: float16 -> float32 through chunk_read.to_float32 (C-contiguous, the same bits as
    astype, faster); copied: `array` is a copy already (kept as it is where its dtype is `dtype`), else a
    view to copy (C-contiguous)."""
    if array.dtype == np.float16 and np.dtype(dtype) == np.float32:
        return to_float32(array)
    return array.astype(dtype, copy=False) if copied else np.array(array, dtype=dtype, order="C")


def _check_positions(ids: np.ndarray, lengths: np.ndarray, n_tokens: np.ndarray, answer_pos: np.ndarray) -> None:
    """StoreCorruptError unless each example's length is its token count (at least 1: the examples table keeps
    the real tokens only) and its answer positions [example, answer] are in [0, length): values no digest vouches
    for, and a negative one would wrap to another position (a silently wrong number)."""
    bad = (lengths < 1) | (lengths != n_tokens) | ((answer_pos < 0) | (answer_pos >= lengths[:, None])).any(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise StoreCorruptError(f"meta/examples: example {ids[i]} has length {lengths[i]} and answer positions "
                                f"{answer_pos[i].tolist()}, outside its {n_tokens[i]} tokens; run `actstore verify`")


@dataclass(frozen=True)
class ExampleArrays:
    """Per-example arrays of a whole store, from its examples table (ids 0..n-1 in order)."""

    example_id: np.ndarray      # [example]
    lengths: np.ndarray         # [example]
    answer_pos: np.ndarray      # [example, answer]
    answer_tokens: np.ndarray   # [example, answer]
    counter_tokens: np.ndarray | None
    input_tokens: np.ndarray    # [example, answer] token at each answer position

    @property
    def has_counter(self) -> bool:
        return self.counter_tokens is not None

    def rows(self, start: int, stop: int) -> "ExampleArrays":
        """Examples [start, stop) of these (views)."""
        sl = slice(start, stop)
        return ExampleArrays(self.example_id[sl], self.lengths[sl], self.answer_pos[sl], self.answer_tokens[sl],
                             None if self.counter_tokens is None else self.counter_tokens[sl], self.input_tokens[sl])

    def answer_ids(self, target: str) -> np.ndarray:
        """Every token id (with repeats) whose direction a query toward `target` ('correct' / 'diff') reads."""
        ids = [self.answer_tokens.ravel()]
        if target == "diff" and self.counter_tokens is not None:
            ids.append(self.counter_tokens[self.counter_tokens >= 0])
        return np.concatenate(ids) if ids[0].size or len(ids) > 1 else np.zeros(0, dtype=np.int64)

    @classmethod
    def from_examples(cls, examples: pl.DataFrame, n_answers: int) -> "ExampleArrays":
        """The arrays of an examples table (all of a store's rows, ids 0..n-1 in order)."""
        return cls.concat([cls._of(examples, n_answers)], n_answers, examples.height)

    @classmethod
    def _of(cls, examples: pl.DataFrame, n_answers: int) -> "ExampleArrays":
        def matrix(col: str | pl.Expr) -> np.ndarray:
            return _matrix(examples, col, n_answers)

        ids = examples.get_column("example_id").to_numpy().astype(np.int64)
        lengths = examples.get_column("length").to_numpy().astype(np.int64)
        answer_pos = matrix("answer_positions")
        _check_positions(ids, lengths, examples.get_column("tokens").list.len().to_numpy(), answer_pos)
        return cls(
            example_id=ids,
            lengths=lengths,
            answer_pos=answer_pos,
            answer_tokens=matrix("answer_tokens"),
            counter_tokens=matrix(_counter(n_answers)) if _has_counter(examples) else None,
            input_tokens=matrix(pl.col("tokens").list.gather(pl.col("answer_positions"))),
        )

    @classmethod
    def concat(cls, parts: Iterable["ExampleArrays"], n_answers: int, n: int) -> "ExampleArrays":
        """One store's arrays from its `n` examples' parts in order, each copied into place as it comes
        (memory: the result and one part); StoreCorruptError unless ids are 0..n-1."""
        ids, lengths = np.empty(n, np.int64), np.empty(n, np.int64)
        mats = {f: np.empty((n, n_answers), np.int64) for f in ("answer_pos", "answer_tokens", "counter_tokens",
                                                                  "input_tokens")}
        at, has_counter = 0, False
        for part in parts:
            stop = at + part.example_id.size
            if stop > n:
                break
            ids[at:stop], lengths[at:stop] = part.example_id, part.lengths
            for f, out in mats.items():
                value = getattr(part, f)
                out[at:stop] = -1 if value is None else value  # a part with no counterfactual: -1 (as fill_null)
            has_counter |= part.counter_tokens is not None
            at = stop
        if at != n or not np.array_equal(ids, np.arange(n)):
            raise StoreCorruptError("meta/examples: example_id is not 0..n-1 in order; run `actstore verify`")
        return cls(example_id=ids, lengths=lengths, answer_pos=mats["answer_pos"], answer_tokens=mats["answer_tokens"],
                   counter_tokens=mats["counter_tokens"] if has_counter else None, input_tokens=mats["input_tokens"])


def _matrix(examples: pl.DataFrame, col: str | pl.Expr, n_answers: int) -> np.ndarray:
    """[example, answer] int64 of a list column (or expression) of an examples frame."""
    expr = pl.col(col) if isinstance(col, str) else col
    out = examples.select(expr.list.to_array(n_answers)).to_series().to_numpy()
    return np.asarray(out, dtype=np.int64).reshape(examples.height, n_answers)


def _counter(n_answers: int) -> pl.Expr:
    """counter_tokens with a missing list as -1s (an example without a counterfactual)."""
    return pl.col("counter_tokens").fill_null(pl.lit([-1] * n_answers, dtype=pl.List(pl.Int64)))


def _has_counter(examples: pl.DataFrame) -> bool:
    return examples.get_column("counter_tokens").null_count() < examples.height


ARRAY_COLUMNS = ("example_id", "length", "answer_positions", "answer_tokens", "counter_tokens", "tokens")
ANSWER_COLUMNS = ("answer_tokens", "counter_tokens")
PAIR_BASE = 1 << 32  # (answer, counterfactual) pair keys: answer * PAIR_BASE + counterfactual + 1 (token ids < 2**31)
_ARRAYS: "weakref.WeakKeyDictionary[Store, ExampleArrays]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class AnswerFacts:
    """A store's whole-store answer facts, from one pass over its answer and counterfactual token columns.

    answers:  [token] distinct answer token ids, sorted
    counters: [token] distinct counterfactual token ids, sorted; None if no example has any
    pairs:    [pair] distinct (answer, counterfactual) keys answer * PAIR_BASE + counterfactual + 1, sorted
              (counterfactual -1: none)
    """

    answers: np.ndarray
    counters: np.ndarray | None
    pairs: np.ndarray

    @classmethod
    def of(cls, parts: Iterable[pl.DataFrame], n_answers: int) -> "AnswerFacts":
        """The facts of examples parts holding ANSWER_COLUMNS, one part at a time."""
        answers, counters, pairs, has = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], False
        for part in parts:
            answer = _matrix(part, "answer_tokens", n_answers)
            answers.append(np.unique(answer))
            other = np.full_like(answer, -1)
            if _has_counter(part):
                has = True
                other = _matrix(part, _counter(n_answers), n_answers)
                counters.append(np.unique(other[other >= 0]))
            pairs.append(np.unique(answer * PAIR_BASE + other + 1))
        return cls(np.unique(np.concatenate(answers)), np.unique(np.concatenate(counters)) if has else None,
                   np.unique(np.concatenate(pairs)))

    @classmethod
    def of_store(cls, store: Store) -> "AnswerFacts":
        """The store's facts: from its derived/ file (store_facts.py) when one is vouched for, else from one
        pass over its examples parts, then kept there for later processes (a Dask worker, the next query)."""
        fields = ("answers", "counters", "pairs")
        got = read_facts(store, "answer_facts", fields)
        if got is not None and got["answers"] is not None and got["pairs"] is not None:
            return cls(got["answers"], got["counters"], got["pairs"])
        facts = cls.of(store.meta_parts("examples", ANSWER_COLUMNS), store.n_answers)
        write_facts(store, "answer_facts", {f: getattr(facts, f) for f in fields})
        return facts


class ExampleIndex:
    """A store's per-example arrays, read from the examples part of the chunk a scan reaches: memory
    holds a few chunks' arrays, not the store's (~140 B per example), whatever the store's size.

    `rows(start, stop)` gives examples [start, stop) as ExampleArrays, from the parts they span, each
    read and checked once (ids start..stop-1 in order). A store whose parts' arrays total at most
    KEEP_BYTES keeps them all, so that warm repeated queries read none again; a larger one keeps the
    RECENT last read only, so that its memory does not grow with the store. `answer_ids` and
    `has_counter` (whole-store facts) come from one pass over only the answer and counterfactual
    token columns, when first asked; `roles` from the chunk's tokens part.
    """

    KEEP_BYTES = 16 << 20
    RECENT = 4
    PENDING = 2

    def __init__(self, store: Store) -> None:
        self._store = weakref.ref(store)  # the index is kept per store (weakly keyed): no cycle back to it
        self.n, self.chunk, self.n_answers = store.n_examples, store.chunk_size, store.n_answers
        self._kept: dict[int, ExampleArrays] = {}
        self._recent: OrderedDict[int, ExampleArrays] = OrderedDict()
        self._kept_bytes = 0
        self._answer_facts: AnswerFacts | None = None
        self._role_names: tuple[str, ...] | None = None
        self._pending: OrderedDict[int, Future[ExampleArrays]] = OrderedDict()  # parts read ahead (prefetch)
        self._lock = threading.RLock()  # plans may run on several threads (a threaded Dask worker)

    def _live(self) -> Store:
        store = self._store()
        if store is None:  # an index is only handed out with its store
            raise ReferenceError("the store of this ExampleIndex was closed")
        return store

    @property
    def has_counter(self) -> bool:
        """Whether any example of the store has counterfactual tokens."""
        return self._facts().counters is not None

    def answer_ids(self, target: str) -> np.ndarray:
        """The distinct token ids whose directions a query toward `target` ('correct' / 'diff') reads."""
        facts = self._facts()
        return np.union1d(facts.answers, facts.counters) if target == "diff" and facts.counters is not None \
            else facts.answers

    def answer_pairs(self, counter: bool) -> np.ndarray:
        """The store's distinct answer tokens, sorted; with `counter`, its distinct (answer, counterfactual)
        pairs as sorted keys answer * PAIR_BASE + counterfactual + 1 (counterfactual -1: none), in the order
        np.unique(pairs, axis=0) gives them."""
        facts = self._facts()
        return facts.pairs if counter else facts.answers

    def _facts(self) -> "AnswerFacts":
        with self._lock:
            if self._answer_facts is None:
                self._answer_facts = AnswerFacts.of_store(self._live())
            return self._answer_facts

    def role_names(self) -> Roles:
        """The store's distinct token roles (codes: none), from one pass over the tokens' role column."""
        with self._lock:
            if self._role_names is None:
                names: set[str] = set()
                for part in self._live().meta_parts("tokens", ["role"]):
                    names.update(r for r in part.get_column("role").drop_nulls().unique().to_list() if r)
                self._role_names = tuple(sorted(names))
            return Roles(np.zeros((0, 0), dtype=np.int16), self._role_names)

    def roles(self, start: int, stop: int, width: int) -> Roles:
        """Roles of examples [start, stop): codes [example, width] into the store's `role_names`, the same
        codes as Roles.from_tokens(store.tokens, ...) rows [start, stop), from those chunks' tokens parts."""
        names = self.role_names().names
        codes = np.full((stop - start, width), -1, dtype=np.int16)
        if stop <= start:
            return Roles(codes, names)
        store = self._live()
        for k in range(start // self.chunk, (stop - 1) // self.chunk + 1):
            part = store.meta_part("tokens", k, ["example_id", "pos", "role"])
            code = part.get_column("role").fill_null("").replace_strict(
                list(names), list(range(len(names))), default=-1, return_dtype=pl.Int16).to_numpy()
            ex = part.get_column("example_id").to_numpy()
            pos = part.get_column("pos").to_numpy()
            _check_tokens_part(store, k, ex - k * self.chunk, pos, self._part(k).lengths)
            ex = ex - start
            keep = (ex >= 0) & (ex < stop - start) & (pos >= 0) & (pos < width)
            codes[ex[keep], pos[keep]] = code[keep]
        return Roles(codes, names)

    def rows(self, start: int, stop: int) -> ExampleArrays:
        """Examples [start, stop) (0 <= start <= stop <= n); read-only arrays."""
        if not 0 <= start <= stop <= self.n:
            raise InvalidParameterError(f"examples [{start}, {stop}) are not among the store's {self.n}")
        if start == stop:
            return ExampleArrays.concat([], self.n_answers, 0)
        first, last = start // self.chunk, (stop - 1) // self.chunk
        parts = [self._part(k) for k in range(first, last + 1)]
        lo = first * self.chunk
        if len(parts) == 1:
            part = parts[0]
            return part if (start, stop) == (lo, lo + len(part.example_id)) else part.rows(start - lo, stop - lo)
        fields = {f: np.concatenate([getattr(p, f) for p in parts]) for f in
                  ("example_id", "lengths", "answer_pos", "answer_tokens", "input_tokens")}
        counter = np.concatenate([p.counter_tokens for p in parts]) if parts[0].has_counter else None
        return ExampleArrays(counter_tokens=counter, **fields).rows(start - lo, stop - lo)

    def prefetch(self, start: int, stop: int) -> None:
        """Start reading the parts of examples [start, stop) on the process's meta thread, so that a later
        `rows` finds them read (the scan asks for the next chunk's while it reads this one's hooks); at most
        PENDING parts wait at once (the oldest dropped). Errors surface in the `rows` that needs the part.
        Nothing is read ahead where the process reads on one thread (READ_THREADS 1: a single-threaded Dask
        worker, whose other core is the next worker's): its `rows` reads the part in line."""
        if not 0 <= start < stop <= self.n or READ_THREADS <= 1:
            return
        with self._lock:
            for k in range(start // self.chunk, (stop - 1) // self.chunk + 1):
                if k in self._kept or k in self._recent or k in self._pending:
                    continue
                self._pending[k] = meta_pool().submit(self._read, k)
                while len(self._pending) > self.PENDING:
                    self._pending.popitem(last=False)[1].cancel()

    def _part(self, k: int) -> ExampleArrays:
        with self._lock:
            hit = self._kept.get(k)
            if hit is None and k in self._recent:
                self._recent.move_to_end(k)
                hit = self._recent[k]
            if hit is not None:
                return hit
            pending = self._pending.pop(k, None)
        # read outside the lock: the meta thread may be reading another part meanwhile
        arrays = pending.result() if pending is not None and not pending.cancelled() else self._read(k)
        with self._lock:
            if k in self._kept or k in self._recent:
                return self._part(k)
            nbytes = sum(a.nbytes for a in vars(arrays).values() if a is not None)
            lo, hi = k * self.chunk, min((k + 1) * self.chunk, self.n)
            if nbytes * self.n <= self.KEEP_BYTES * max(1, hi - lo) and self._kept_bytes + nbytes <= self.KEEP_BYTES:
                self._kept[k], self._kept_bytes = arrays, self._kept_bytes + nbytes
            else:
                self._recent[k] = arrays
                while len(self._recent) > self.RECENT:
                    self._recent.popitem(last=False)
            return arrays

    def _read(self, k: int) -> ExampleArrays:
        """Part k's arrays, read, checked and made read-only (on any thread; shares no state but the facts)."""
        store = self._live()
        lo, hi = k * self.chunk, min((k + 1) * self.chunk, self.n)
        part = store.meta_part("examples", k, ARRAY_COLUMNS)
        arrays = ExampleArrays._of(part, self.n_answers)
        if part.height != hi - lo or not np.array_equal(arrays.example_id, np.arange(lo, hi)):
            raise StoreCorruptError(f"{store.path}: meta/examples part {k}: example_id is not {lo}..{hi - 1} in "
                                    f"order (ids must be 0..n-1); run `actstore verify`")
        if arrays.counter_tokens is None and self.has_counter:  # as a whole table fills them: -1
            arrays = replace(arrays, counter_tokens=np.full((hi - lo, self.n_answers), -1, dtype=np.int64))
        _read_only(arrays)
        return arrays


def _check_tokens_part(store: Store, k: int, ex: np.ndarray, pos: np.ndarray, lengths: np.ndarray) -> None:
    """StoreCorruptError unless meta/tokens part k holds exactly one row per real token of its chunk's examples.

    ex, pos: [row] each row's example (offset in the chunk) and position; lengths: [example] of the chunk.
    A row missing, doubled, of another chunk's example or past its example's length would give the
    example other roles, so role-selected queries would return other numbers, silently."""
    ok = ex.size == int(lengths.sum()) and bool(((ex >= 0) & (ex < lengths.size)).all())
    ok = ok and bool(((pos >= 0) & (pos < lengths[ex])).all())
    if ok:
        seen = np.zeros(ex.size, dtype=bool)
        seen[(np.cumsum(lengths) - lengths)[ex] + pos] = True  # each (example, pos) its own slot
        ok = bool(seen.all())
    if not ok:
        raise StoreCorruptError(f"{store.path}: meta/tokens part {k} does not hold one row per token of its "
                                f"chunk's examples; run `actstore verify`")


def _read_only(arrays: ExampleArrays) -> None:
    """Marks every array of `arrays` read-only (shared by every query on the store: never written to)."""
    for a in vars(arrays).values():
        if a is not None:
            a.setflags(write=False)


_INDEXES: "weakref.WeakKeyDictionary[Store, ExampleIndex]" = weakref.WeakKeyDictionary()


def example_index(store: Store) -> ExampleIndex:
    """The store's ExampleIndex (one per opened store): what a streamed query reads its examples from."""
    return per_store(_INDEXES, store, lambda: ExampleIndex(store))


Examples = ExampleArrays | ExampleIndex  # what a scan reads its chunks' examples from


def example_arrays(store: Store) -> ExampleArrays:
    """The store's ExampleArrays for all its examples at once (~140 B per example), built once per opened
    store from only the columns they need, one meta part at a time: for queries that need every example
    at once (position selectors, probes); a scan reads through `example_index` instead."""
    arrays = _ARRAYS.get(store)
    if arrays is None:
        if "examples" in store.__dict__:  # the whole table is loaded already
            arrays = ExampleArrays.from_examples(store.examples, store.n_answers)
        else:
            arrays = ExampleArrays.concat((ExampleArrays._of(part, store.n_answers)
                                           for part in store.meta_parts("examples", ARRAY_COLUMNS)),
                                          store.n_answers, store.n_examples)
        _read_only(arrays)
        _ARRAYS[store] = arrays
    return arrays


def padded_tokens(examples: pl.DataFrame, width: int) -> np.ndarray:
    """[example, width] token ids of an examples slice, right-padded with 0."""
    out = np.zeros((examples.height, width), dtype=np.int64)
    for i, row in enumerate(examples.get_column("tokens").to_list()):
        if len(row) > width:  # a store's examples are at most its width (a raw numpy error otherwise)
            raise StoreCorruptError(f"meta/examples: an example has {len(row)} tokens, more than the store's width "
                                    f"{width}; run `actstore verify`")
        out[i, : len(row)] = row
    return out


def chunk_tokens(store: Store, start: int, stop: int) -> np.ndarray:
    """[example, width] token ids of examples [start, stop), right-padded with 0: from the examples
    parts they span (only their tokens column), or from the whole table if it is loaded already."""
    width = store.manifest.width
    if "examples" in store.__dict__:
        return padded_tokens(store.examples.slice(start, stop - start), width)
    chunk = store.chunk_size
    first, last = start // chunk, max(start, stop - 1) // chunk
    parts = [store.meta_part("examples", k, ["tokens"]) for k in range(first, last + 1)] if stop > start else []
    frame = pl.concat(parts) if len(parts) > 1 else parts[0] if parts else pl.DataFrame({"tokens": []})
    return padded_tokens(frame.slice(start - first * chunk, stop - start), width)


def check_hooks(store: Store, answer_hooks: Sequence[str], full_hooks: Sequence[str], what: str) -> None:
    """Raise a one-line error naming the first hook `what` needs that the store lacks (or lacks at all positions)."""
    stored = set(store.hooks)
    for name in [*answer_hooks, *full_hooks]:
        if name not in stored:
            raise UnknownHookError(f"{what} needs hook {name!r}, which store {store.path} does not hold; "
                                   f"re-ingest with --hooks default (or add {name})")
    for name in full_hooks:
        if store.hook_info(name).positions != "all":
            raise InvalidParameterError(f"{what} needs {name!r} at every position, but store {store.path} holds it at "
                                        f"the answer positions only; re-ingest with --hooks {name}:all")


Product = Callable[[np.ndarray, Sequence[str], np.ndarray], np.ndarray]
# (a chunk's hook as read [example, ...], its axis names, answer_pos [example, answer]) -> a new array (never a
# view of the hook's values, whose buffer the thread's next read reuses): applied on the reading thread
Products = Callable[[ExampleArrays, int, int], Mapping[str, Product]]


def _shared_positions(answer_pos: np.ndarray) -> np.ndarray | None:
    """[answer] the answer positions where every example of answer_pos [example, answer] has the same, else None.

    The last answer (a read-only array whose memory is read-only too: a chunk's examples, ExampleArrays) is
    kept with its result: every hook of a chunk, and on a single-chunk store every query, asks about the same
    array (the comparison cost ~0.1 ms a hook on zoo:addition)."""
    global _LAST_SHARED
    last = _LAST_SHARED
    if last is not None and last[0] is answer_pos:
        return last[1]
    cols = answer_pos[0] if answer_pos.shape[0] and (answer_pos == answer_pos[:1]).all() else None
    owner = answer_pos if answer_pos.base is None else answer_pos.base
    if not answer_pos.flags.writeable and isinstance(owner, np.ndarray) and not owner.flags.writeable:
        _LAST_SHARED = (answer_pos, cols)
    return cols


_LAST_SHARED: tuple[np.ndarray, np.ndarray | None] | None = None  # see _shared_positions


def _run(cols: np.ndarray | None) -> slice | None:
    """The slice of positions `cols` where they are one contiguous run (at least one position), else None."""
    if cols is None or not cols.size or not (np.diff(cols) == 1).all():
        return None
    return slice(int(cols[0]), int(cols[-1]) + 1)


READ_THREADS = 2  # reading threads per scan; a Dask worker sets its own thread count (executor.run_batch)
_POOLS: dict[int, ThreadPoolExecutor] = {}
_META: dict[int, ThreadPoolExecutor] = {}
if hasattr(os, "register_at_fork"):  # a forked child has none of the parent's threads
    os.register_at_fork(after_in_child=_POOLS.clear)
    os.register_at_fork(after_in_child=_META.clear)


def meta_pool() -> ThreadPoolExecutor:
    """The process's one thread that reads examples parts ahead of a scan (ExampleIndex.prefetch): beside
    the reading threads, so that a chunk's examples part (read, sha256, Parquet decode) is not read in
    line with its hooks; one thread, so that at most one part is decoded at a time."""
    return _META.setdefault(0, ThreadPoolExecutor(max_workers=1, thread_name_prefix="actstore-meta"))


def reader_pool(workers: int) -> ThreadPoolExecutor:
    """The process's `workers` reading threads, shared by every scan and kept between scans.

    Threads that live on keep their malloc arenas: a chunk-sized array freed after one read is
    reused by the next. Fresh threads per query (or memory handed back per chunk) made every
    read fault its pages in anew, a third of a GPT-2-shaped DLA's CPU time on a 2-core VM.
    """
    if workers not in _POOLS:
        _POOLS[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="actstore-read")
    return _POOLS[workers]


def stream(store: Store, answer_hooks: Sequence[str], full_hooks: Sequence[str] = (), *, tokens: bool = False,
           examples: Examples | None = None, workers: int | None = None, answer_dtype: Any = None,
           ranges: Sequence[tuple[int, int]] | None = None, label: str = "chunks",
           products: Products | None = None) -> Iterator[Chunk]:
    """Committed chunks of `store` in order, each with the hooks asked for (see `Chunk`).

    answer_hooks: gathered at the answer positions (`Chunk.at_answer`); full_hooks: as stored
    (`Chunk.full`). A hook in both lists is read once. Hooks are read on `workers` threads (see
    reader_pool; decompression releases the GIL), the next chunk's while the caller works on this one; answer
    positions are gathered as each array arrives, so only hooks wanted in full stay in memory.
    workers: reading threads (default READ_THREADS; 1 reads on the calling thread).
    answer_dtype: cast the answer-position values to this dtype on the reading threads (e.g.
    float32, so that the float16 -> float32 conversion overlaps the reads).
    ranges: only these committed [start, stop) chunks (a query that selects no row of a chunk
    skips it); label: what the progress bar calls the work.
    products: products(rows, start, stop), called here as a chunk's reads are queued, gives per answer
    hook a function of the hook as read and the answer positions (`Product`) that the reading thread
    applies instead of gathering the answers (`Chunk.products`, not `Chunk.at_answer`): the math on a
    hook starts as soon as its read lands, beside the other hooks' reads.
    """
    ex = examples or example_index(store)
    workers = READ_THREADS if workers is None else workers
    names = list(dict.fromkeys([*answer_hooks, *full_hooks]))
    dims = {name: store.hook_info(name).dims for name in names}
    answers, fulls = set(answer_hooks), set(full_hooks)
    pool = reader_pool(min(workers, len(names))) if workers > 1 and len(names) > 1 else None

    def load(name: str, start: int, stop: int, answer_pos: np.ndarray,
             product: Product | None) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        # gather the answers at once, so that a big all-position array is dropped right away; one
        # wanted at the answers only is decoded into the thread's reused buffer (chunk_read.transient_reads)
        if name in fulls:
            arr = full = store.read(name, start, stop)
        else:
            with transient_reads():
                arr, full = store.read(name, start, stop), None
        if name in answers and product is not None:
            return None, full, product(arr, dims[name], answer_pos)
        picked = at_answers(arr, dims[name], answer_pos, answer_dtype) if name in answers else None
        if picked is not None and full is None and np.may_share_memory(picked, arr):
            picked = picked.copy()  # stored at the answers already: the buffer is the next read's
        return picked, full, None

    def submit(start: int, stop: int) -> tuple[ExampleArrays, list[Any]]:
        rows = ex.rows(start, stop)  # this chunk's examples, read here (not on the reading threads)
        fns = products(rows, start, stop) if products is not None else {}
        tasks = [(name, start, stop, rows.answer_pos, fns.get(name)) for name in names]
        return rows, [(pool.submit(load, *task), task) for task in tasks]  # type: ignore[union-attr]

    def finish(tasks: list[Any]) -> list[Any]:
        # this thread would only wait: it takes the chunk's reads no reading thread has started yet, from
        # the last one back (the readers work from the front), then waits for the rest; only on a scan's
        # last chunk, where nothing later is queued (blosc decodes on 2 threads of its own here)
        results: list[Any] = [None] * len(tasks)
        for i in reversed(range(len(tasks))):
            future, task = tasks[i]
            if not future.cancel():
                break
            results[i] = load(*task)
        return [future.result() if result is None else result for (future, _), result in zip(tasks, results)]

    ranges = list(store.chunks()) if ranges is None else list(ranges)
    # chunks whose reads are queued while this one's are awaited: with answers only, the next one too, so
    # that no reading thread idles at this chunk's tail (it costs one chunk's gathered answers); arrays
    # wanted in full would then be held for three chunks at once, so those scans queue the next chunk
    # only once this one's reads are done
    depth = 1 if fulls else 2
    queued: deque[tuple[ExampleArrays, list[Any]]] = deque()
    try:
        for k, (start, stop) in enumerate(tracked(ranges, label)):
            if pool is not None:
                while len(queued) < depth and k + len(queued) < len(ranges):
                    queued.append(submit(*ranges[k + len(queued)]))
                if isinstance(ex, ExampleIndex) and k + len(queued) < len(ranges):
                    ex.prefetch(*ranges[k + len(queued)])  # the examples of the next chunk to queue, meanwhile
                rows, tasks = queued.popleft()
                # the last chunk's tail has no later reads to overlap: this thread takes a share of it
                results = finish(tasks) if k + 1 == len(ranges) else [future.result() for future, _ in tasks]
                if not queued and k + 1 < len(ranges):  # read the next chunk while the caller works on this one
                    queued.append(submit(*ranges[k + 1]))
            else:
                rows = ex.rows(start, stop)
                if isinstance(ex, ExampleIndex) and k + 1 < len(ranges):
                    ex.prefetch(*ranges[k + 1])  # the next chunk's examples, read beside this one's hooks
                fns = products(rows, start, stop) if products is not None else {}
                results = [load(name, start, stop, rows.answer_pos, fns.get(name)) for name in names]
            loaded = dict(zip(names, results))
            del results
            chunk = Chunk(
                example_id=rows.example_id, lengths=rows.lengths,
                tokens=chunk_tokens(store, start, stop) if tokens else None,
                answer_pos=rows.answer_pos, answer_tokens=rows.answer_tokens,
                counter_tokens=rows.counter_tokens, input_tokens=rows.input_tokens,
                at_answer={n: a for n, (a, _, _) in loaded.items() if a is not None},
                full={n: f for n, (_, f, _) in loaded.items() if f is not None},
                start=start,
                products={n: p for n, (_, _, p) in loaded.items() if p is not None},
            )
            del loaded
            yield chunk
    finally:  # a scan left early: the next chunks' reads not yet started are dropped
        for _, tasks in queued:
            for future, _ in tasks:
                future.cancel()
