"""Where a read-out query (dla, logit_lens) reads: the answer positions, or any stored position.

pos=None (default): each example's answer positions; the table is keyed by example_id, answer_idx,
answer_pos and 'correct' / 'diff' read each answer's own tokens.

pos=a position selector (selectors.py: an int, negative from each example's end; a role such as
'END' or '='; a list of those; or 'all' for every real position): the positions it picks in each
example, as many as there are (none for an example where it picks none, e.g. a position beyond a
short example's end); the table is keyed by example_id, pos, role (the token's role there, or
null) and 'correct' / 'diff' read answer `answer`'s tokens at every picked position. Every hook
the query reads must then be stored at every position (ingest's default), not at answers only.

`ReadAt.arrays` is an ExampleArrays whose answer_pos / input_tokens hold the picked positions
([example, slot], padded with position 0 where an example picks fewer), so the scan (chunks.stream)
gathers the hooks there and the attribution math runs unchanged; `frame` drops the padded slots.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import polars as pl

from actstore.errors import InvalidParameterError
from actstore.query.chunks import ExampleArrays, ExampleIndex, Examples, check_hooks, example_arrays, example_index
from actstore.query.selectors import Roles, select_positions
from actstore.query.tables import ColumnType
from actstore.store.reader import Store

ALL = "all"  # pos='all': every real position
ANSWER_KEYS: dict[str, ColumnType] = {"example_id": pl.Int64, "answer_idx": pl.Int64, "answer_pos": pl.Int64}
POS_KEYS: dict[str, ColumnType] = {"example_id": pl.Int64, "pos": pl.Int64, "role": pl.String}


@dataclass(frozen=True)
class ReadAt:
    """The positions a query reads (see the module docstring).

    pos:    the selector as given (None: the answer positions)
    arrays: at the answer positions, the store's ExampleIndex (read chunk by chunk); for pos, its
            ExampleArrays with answer_pos / input_tokens, answer_tokens / counter_tokens of answer
            `answer`, at the read positions [example, slot]
    valid:  [example, slot] bool, False on padded slots (None: every slot is real)
    role:   [example, slot] role codes (-1: none) and their Roles, for the `role` column (pos only)
    """

    pos: Any
    arrays: Examples
    valid: np.ndarray | None = None
    role: np.ndarray | None = None
    roles: Roles | None = None

    @property
    def at_answers(self) -> bool:
        return self.pos is None

    @property
    def keys(self) -> dict[str, ColumnType]:
        return ANSWER_KEYS if self.at_answers else POS_KEYS

    @classmethod
    def build(cls, store: Store, pos: Any = None, answer: int = 0, examples: Examples | None = None) -> "ReadAt":
        if isinstance(answer, bool) or not isinstance(answer, (int, np.integer)) or not 0 <= answer < store.n_answers:
            raise InvalidParameterError(f"answer={answer!r}: expected an answer index in [0, {store.n_answers})")
        if pos is None:
            if answer:
                raise InvalidParameterError("answer= chooses whose tokens 'correct' / 'diff' read at pos=; without "
                                            "pos the query reads every answer at its own position")
            return cls(None, examples or example_index(store))
        ex = examples if isinstance(examples, ExampleArrays) else example_arrays(store)  # every example at once
        if isinstance(pos, (list, tuple)) and not pos:
            raise InvalidParameterError("pos: an empty list selects nothing; pass pos=None for the answer positions")
        width = int(store.manifest.width)
        n = ex.example_id.size
        tokens = store.tokens
        roles = Roles.from_tokens(tokens, n, width)
        spec = None if isinstance(pos, str) and pos == ALL else pos
        mask = select_positions(spec, ex.lengths, roles.codes, roles, width, "pos")  # [example, pos]
        counts = mask.sum(axis=1)
        slots = int(counts.max()) if n else 0
        order = np.argsort(~mask, axis=1, kind="stable")[:, :slots]  # picked positions first, in order
        valid = np.arange(slots)[None, :] < counts[:, None]
        read_pos = np.where(valid, order, 0).astype(np.int64)
        ids = np.zeros((n, width), dtype=np.int64)
        ex_i = tokens.get_column("example_id").to_numpy()
        keep = ex_i < n
        ids[ex_i[keep], tokens.get_column("pos").to_numpy()[keep]] = tokens.get_column("token_id").to_numpy()[keep]
        rows = np.arange(n)[:, None]
        counter = None if ex.counter_tokens is None else np.repeat(ex.counter_tokens[:, answer:answer + 1], slots, 1)
        arrays = replace(ex, answer_pos=read_pos, input_tokens=ids[rows, read_pos],
                         answer_tokens=np.repeat(ex.answer_tokens[:, answer:answer + 1], slots, axis=1),
                         counter_tokens=counter)
        return cls(pos, arrays, valid, roles.codes[rows, read_pos], roles)

    def check_hooks(self, store: Store, answer_hooks: list[str], full_hooks: list[str], what: str) -> None:
        """check_hooks for this query: at pos=, every hook it reads must be stored at every position."""
        if self.at_answers:
            check_hooks(store, answer_hooks, full_hooks, what)
        else:
            check_hooks(store, [], [*answer_hooks, *full_hooks], f"{what} at pos={self.pos!r}")

    def ranges(self, store: Store) -> list[tuple[int, int]]:
        """The committed chunks with at least one read position."""
        if self.valid is None:
            return list(store.chunks())
        return [(a, b) for a, b in store.chunks() if self.valid[a:b].any()]

    def frame(self, start: int, stop: int, items: pl.DataFrame, values: np.ndarray,
              constants: dict[str, str], tokens: np.ndarray | None = None) -> pl.DataFrame:
        """Rows (example, slot, token, item) of examples [start, stop), padded slots left out.

        values: [example, slot, token, item]; tokens: [token] ids for a `token` column (None: no column,
        and the token axis has length 1); constants: string columns after the keys (e.g. target).
        """
        e, s, t, k = values.shape
        rows = self.arrays.rows(start, stop)
        if self.at_answers and tokens is None:  # the answer tables as they always were (tables.long_frame)
            def keys() -> pl.DataFrame:
                return pl.DataFrame({
                    "example_id": np.repeat(rows.example_id, s * k),
                    "answer_idx": np.tile(np.repeat(np.arange(s, dtype=np.int64), k), e),
                    "answer_pos": np.repeat(rows.answer_pos.reshape(-1), k),
                }, schema=ANSWER_KEYS)
            def keys_items() -> pl.DataFrame:  # the constants and items too: a string column built per query
                head = keys()  # cost more than the rest of the table (zoo:addition: 0.1-0.5 of 0.7 ms)
                if constants:
                    head = head.with_columns(pl.lit(v, dtype=pl.String).alias(n) for n, v in constants.items())
                return head.hstack(tiled(items, e * s).get_columns())
            n = self.arrays.n if isinstance(self.arrays, ExampleIndex) else self.arrays.example_id.size
            # kept for the next query only if a whole scan's keys fit (a longer scan evicts each first); a hit
            # needs the same items frame (kept with the store, query/memo.py), so its id names it
            key = (id(self.arrays), start, stop, k, id(items), tuple(constants.items()))
            head = _kept(_KEYS, key, (self.arrays, items), keys_items) if n * s * k <= KEPT_ROWS else keys_items()
            flat = np.ascontiguousarray(values[:, :, 0, :], dtype=np.float64).reshape(-1)
            return head.hstack([pl.Series("value", flat)])
        per_slot = t * k
        slot = np.repeat(np.arange(e * s), per_slot)
        if self.at_answers:
            head = pl.DataFrame({
                "example_id": rows.example_id.repeat(s)[slot],
                "answer_idx": np.tile(np.arange(s, dtype=np.int64), e)[slot],
                "answer_pos": rows.answer_pos.reshape(-1)[slot],
            }, schema=ANSWER_KEYS)
        else:
            assert self.roles is not None and self.role is not None
            head = pl.DataFrame({
                "example_id": rows.example_id.repeat(s)[slot],
                "pos": rows.answer_pos.reshape(-1)[slot],
            }, schema={"example_id": pl.Int64, "pos": pl.Int64}).with_columns(
                self.roles.strings(self.role[start:stop].reshape(-1)[slot]).alias("role"))
        for name, value in constants.items():
            head = head.with_columns(pl.lit(value, dtype=pl.String).alias(name))
        if tokens is not None:
            head = head.with_columns(pl.Series("token", np.tile(np.repeat(tokens, k), e * s), dtype=pl.Int64))
        body = items[np.tile(np.arange(k), e * s * t)] if k else items.clear()
        out = pl.concat([head, body, pl.DataFrame({"value": values.reshape(-1).astype(np.float64)})],
                        how="horizontal")
        if self.valid is not None and not self.valid[start:stop].all():
            out = out.filter(pl.Series(np.repeat(self.valid[start:stop].reshape(-1), per_slot)))
        return out

    def empty(self, items: pl.DataFrame, constants: dict[str, ColumnType], per_token: bool) -> pl.DataFrame:
        """A typed empty table with the columns `frame` gives."""
        schema = dict(self.keys) | dict(constants) | ({"token": pl.Int64} if per_token else {})
        return pl.DataFrame(schema=schema | dict(items.schema) | {"value": pl.Float64})


KEPT_ROWS = 1 << 20  # rows of key columns (with constants and items) kept for later chunks and queries (~30-50 MB each)
_TILED: OrderedDict[Any, tuple[tuple[Any, ...], pl.DataFrame]] = OrderedDict()
_KEYS: OrderedDict[Any, tuple[tuple[Any, ...], pl.DataFrame]] = OrderedDict()
_KEPT_LOCK = threading.Lock()


def _kept(cache: OrderedDict[Any, tuple[tuple[Any, ...], pl.DataFrame]], key: Any, refs: tuple[Any, ...],
          make: Callable[[], pl.DataFrame]) -> pl.DataFrame:
    """make(), kept in `cache` under `key` while the caches hold at most KEPT_ROWS rows; a hit needs the
    very objects `refs` the frame was made from (kept alive with it, so their ids stay unique)."""
    with _KEPT_LOCK:  # queries may run on several threads
        hit = cache.get(key)
        if hit is not None and len(hit[0]) == len(refs) and all(a is b for a, b in zip(hit[0], refs)):
            cache.move_to_end(key)
            return hit[1]
    frame = make()
    if frame.height <= KEPT_ROWS:
        with _KEPT_LOCK:
            cache[key] = (refs, frame)
            while sum(f.height for _, f in cache.values()) > KEPT_ROWS:
                cache.popitem(last=False)
    return frame


def tiled(items: pl.DataFrame, reps: int) -> pl.DataFrame:
    """`items` repeated `reps` times, row after row (the item columns of a long table), kept while small:
    every chunk of a store has the same shape but the last, and a kept items frame (query/memo.py)
    is the same object in later queries."""
    return _kept(_TILED, (id(items), reps), (items,),
                 lambda: items[np.tile(np.arange(items.height), reps)] if items.height else items.clear())
