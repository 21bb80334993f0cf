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
import weakref
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from actstore.errors import InvalidParameterError, StoreCorruptError, UnknownHookError
from actstore.query.progress import tracked
from actstore.store.chunk_read import to_float32
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


def at_answers(array: np.ndarray, dims: Sequence[str], answer_pos: np.ndarray) -> np.ndarray:
    """A hook's value at each example's answer positions: the pos axis becomes [answer].

    array: [example, ..., pos, ...] with axis names `dims`; returned unchanged if already 'answer',
           else as a new array (never a view of `array`, so that a big chunk can be freed)
    answer_pos: [example, answer]
    """
    axis = pos_axis(dims)
    if dims[axis] == "answer":
        return array
    moved = np.moveaxis(array, axis, 1)  # [example, pos, ...]
    if answer_pos.shape[0] and (answer_pos == answer_pos[:1]).all():  # the same positions in every example
        cols = answer_pos[0]
        if (np.diff(cols) == 1).all():  # a contiguous run (a slice copies much faster than fancy indexing)
            picked = moved[:, int(cols[0]):int(cols[-1]) + 1].copy()
        else:
            picked = moved[:, cols]
    else:
        picked = moved[np.arange(array.shape[0])[:, None], answer_pos]  # [example, answer, ...]
    return np.moveaxis(picked, 1, axis)


@dataclass(frozen=True)
class ExampleArrays:
    """Per-example arrays of a whole store, from its examples table (ids 0..n-1 in order)."""

    example_id: np.ndarray      # [example]
    lengths: np.ndarray         # [example]
    answer_pos: np.ndarray      # [example, answer]
    answer_tokens: np.ndarray   # [example, answer]
    counter_tokens: np.ndarray | None
    input_tokens: np.ndarray    # [example, answer] token at each answer position

    @classmethod
    def from_examples(cls, examples: pl.DataFrame, n_answers: int) -> "ExampleArrays":
        """The arrays of an examples table (all of a store's rows, ids 0..n-1 in order)."""
        return cls.concat([cls._of(examples, n_answers)], n_answers, examples.height)

    @classmethod
    def _of(cls, examples: pl.DataFrame, n_answers: int) -> "ExampleArrays":
        n = examples.height

        def matrix(col: str | pl.Expr) -> np.ndarray:
            expr = pl.col(col) if isinstance(col, str) else col
            out = examples.select(expr.list.to_array(n_answers)).to_series().to_numpy()
            return np.asarray(out, dtype=np.int64).reshape(n, n_answers)

        counter = examples.get_column("counter_tokens")
        has_counter = counter.null_count() < n
        return cls(
            example_id=examples.get_column("example_id").to_numpy().astype(np.int64),
            lengths=examples.get_column("length").to_numpy().astype(np.int64),
            answer_pos=matrix("answer_positions"),
            answer_tokens=matrix("answer_tokens"),
            counter_tokens=matrix(pl.col("counter_tokens").fill_null(pl.lit([-1] * n_answers, dtype=pl.List(pl.Int64))))
            if has_counter else None,
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


ARRAY_COLUMNS = ("example_id", "length", "answer_positions", "answer_tokens", "counter_tokens", "tokens")
_ARRAYS: "weakref.WeakKeyDictionary[Store, ExampleArrays]" = weakref.WeakKeyDictionary()


def example_arrays(store: Store) -> ExampleArrays:
    """The store's ExampleArrays, built once per opened store from only the columns they need, one
    meta part at a time: a query never holds the whole examples table (about 1 KB per example)."""
    arrays = _ARRAYS.get(store)
    if arrays is None:
        if "examples" in store.__dict__:  # the whole table is loaded already
            arrays = ExampleArrays.from_examples(store.examples, store.n_answers)
        else:
            arrays = ExampleArrays.concat((ExampleArrays._of(part, store.n_answers)
                                           for part in store.meta_parts("examples", ARRAY_COLUMNS)),
                                          store.n_answers, store.n_examples)
        for a in vars(arrays).values():  # shared by every query on this store: never written to
            if a is not None:
                a.setflags(write=False)
        _ARRAYS[store] = arrays
    return arrays


def padded_tokens(examples: pl.DataFrame, width: int) -> np.ndarray:
    """[example, width] token ids of an examples slice, right-padded with 0."""
    out = np.zeros((examples.height, width), dtype=np.int64)
    for i, row in enumerate(examples.get_column("tokens").to_list()):
        out[i, : len(row)] = row
    return out


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


READ_THREADS = 2  # reading threads per scan; a Dask worker sets its own thread count (executor.run_batch)
_POOLS: dict[int, ThreadPoolExecutor] = {}
if hasattr(os, "register_at_fork"):  # a forked child has none of the parent's threads
    os.register_at_fork(after_in_child=_POOLS.clear)


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
           examples: ExampleArrays | None = None, workers: int | None = None, answer_dtype: Any = None,
           ranges: Sequence[tuple[int, int]] | None = None, label: str = "chunks") -> Iterator[Chunk]:
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
    """
    ex = examples or example_arrays(store)
    workers = READ_THREADS if workers is None else workers
    names = list(dict.fromkeys([*answer_hooks, *full_hooks]))
    dims = {name: store.hook_info(name).dims for name in names}
    answers, fulls = set(answer_hooks), set(full_hooks)
    pool = reader_pool(min(workers, len(names))) if workers > 1 and len(names) > 1 else None

    def load(name: str, start: int, stop: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        # gather the answers at once, so that a big all-position array is dropped right away
        # and the next read reuses its memory (keeping a chunk's arrays alive costs page faults)
        arr = store.read(name, start, stop)
        picked = at_answers(arr, dims[name], ex.answer_pos[start:stop]) if name in answers else None  # a copy
        if picked is not None and answer_dtype is not None:
            picked = (to_float32(picked) if picked.dtype == np.float16 and np.dtype(answer_dtype) == np.float32
                      else picked.astype(answer_dtype, copy=False))  # to_float32: the same bits, faster
        return picked, (arr if name in fulls else None)

    def submit(start: int, stop: int) -> list[Any]:
        return [pool.submit(load, name, start, stop) for name in names]  # type: ignore[union-attr]

    ranges = list(store.chunks()) if ranges is None else list(ranges)
    pending: list[Any] | None = None
    try:
        pending = submit(*ranges[0]) if pool is not None and ranges else None
        for k, (start, stop) in enumerate(tracked(ranges, label)):
            if pending is not None:  # this chunk's reads are in flight; start the next one's
                results = [f.result() for f in pending]
                pending = submit(*ranges[k + 1]) if k + 1 < len(ranges) else None
            else:
                results = [load(name, start, stop) for name in names]
            loaded = dict(zip(names, results))
            del results
            sl = slice(start, stop)
            chunk = Chunk(
                example_id=ex.example_id[sl], lengths=ex.lengths[sl],
                tokens=(padded_tokens(store.examples.slice(start, stop - start), store.manifest.width)
                        if tokens else None),
                answer_pos=ex.answer_pos[sl], answer_tokens=ex.answer_tokens[sl],
                counter_tokens=None if ex.counter_tokens is None else ex.counter_tokens[sl],
                input_tokens=ex.input_tokens[sl],
                at_answer={n: a for n, (a, _) in loaded.items() if a is not None},
                full={n: f for n, (_, f) in loaded.items() if f is not None},
                start=start,
            )
            del loaded
            yield chunk
    finally:  # a scan left early: the next chunk's reads not yet started are dropped
        for future in pending or ():
            future.cancel()
