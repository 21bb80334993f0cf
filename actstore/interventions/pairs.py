"""The examples a sweep runs on, from the store alone: clean and corrupted tokens, answers, roles;
and the positions a sweep addresses, by index or by role.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from actstore.errors import InvalidParameterError
from actstore.store.reader import Store


@dataclass(frozen=True)
class Pairs:
    """Examples [start, stop) of a store as arrays.

    ids:        [n] example ids
    tokens:     [n, pos] clean tokens, right-padded; corrupted: [n, pos] the twins (None: no twin)
    lengths:    [n]; answer_pos, answer, counter: [n, answer] (counter None: no counterfactual)
    roles:      [n, pos] role names ('' where none)
    """

    ids: np.ndarray
    tokens: np.ndarray
    corrupted: np.ndarray | None
    lengths: np.ndarray
    answer_pos: np.ndarray
    answer: np.ndarray
    counter: np.ndarray | None
    roles: np.ndarray

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def take(self, rows: np.ndarray | slice) -> "Pairs":
        return Pairs(self.ids[rows], self.tokens[rows], None if self.corrupted is None else self.corrupted[rows],
                     self.lengths[rows], self.answer_pos[rows], self.answer[rows],
                     None if self.counter is None else self.counter[rows], self.roles[rows])


def load_pairs(store: Store, start: int, stop: int) -> Pairs:
    """Examples [start, stop) of `store` (committed ones only)."""
    ex = store.examples.filter(pl.col("example_id").is_between(start, stop - 1)).sort("example_id")
    n, width = ex.height, store.manifest.width
    if n != stop - start:
        raise InvalidParameterError(f"examples {start}..{stop - 1} are not all in store {store.path} "
                                    f"({store.n_examples} committed); ask for fewer with --examples")
    lengths = ex["length"].to_numpy().astype(np.int64)
    tokens = _padded(ex["tokens"], n, width)
    corrupted = None
    if "corrupted_tokens" in ex.columns and ex["corrupted_tokens"].null_count() == 0:
        corrupted = _padded(ex["corrupted_tokens"], n, width)
        if not np.array_equal(ex["corrupted_tokens"].list.len().to_numpy(), lengths):
            raise InvalidParameterError(f"store {store.path}: a corrupted twin differs in length from its example")
    counter = None
    if ex["counter_tokens"].null_count() == 0:
        counter = np.stack(ex["counter_tokens"].to_list()).astype(np.int64)
    toks = store.tokens.filter(pl.col("example_id").is_between(start, stop - 1))
    roles = np.full((n, width), "", dtype=object)
    r = toks.filter(pl.col("role").is_not_null())
    roles[r["example_id"].to_numpy() - start, r["pos"].to_numpy()] = r["role"].to_numpy()
    return Pairs(ex["example_id"].to_numpy().astype(np.int64), tokens, corrupted, lengths,
                 np.stack(ex["answer_positions"].to_list()).astype(np.int64),
                 np.stack(ex["answer_tokens"].to_list()).astype(np.int64), counter, roles)


def _padded(col: pl.Series, n: int, width: int) -> np.ndarray:
    out = np.zeros((n, width), dtype=np.int64)
    for i, row in enumerate(col.to_list()):
        out[i, : len(row)] = row
    return out


def parse_positions(text: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """'S2,END' or '0,3' -> ('S2', 'END') / ('0', '3'); None stays None (every position)."""
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    out = tuple(str(x).strip() for x in items)
    if not out or any(not x for x in out):
        raise InvalidParameterError(f"--pos expects comma-separated indices or roles, got {text!r}")
    return out


def resolve_positions(pairs: Pairs, pos: tuple[str, ...] | None, all_roles: set[str]) -> tuple[np.ndarray, list[str]]:
    """The position of each addressed slot in each example: ([n, slot] int64, -1 where the example has
    no such position), and the slots' names. None addresses every index 0..width-1.

    A role must name one token per example (a role that repeats, like brackets' 'open', is
    ambiguous: address it by index); an index past an example's end is -1 there.
    """
    n, width = pairs.tokens.shape
    if pos is None:
        idx = np.broadcast_to(np.arange(width), (n, width)).copy()
        idx[idx >= pairs.lengths[:, None]] = -1
        return idx, [str(p) for p in range(width)]
    cols = []
    for item in pos:
        if item.lstrip("-").isdigit():
            p = int(item)
            if p < 0 or p >= width:
                raise InvalidParameterError(f"position {p} is outside 0..{width - 1} (the store's width)")
            cols.append(np.where(pairs.lengths > p, p, -1))
            continue
        if item not in all_roles:
            known = ", ".join(sorted(all_roles)) or "(this task has none)"
            raise InvalidParameterError(f"unknown role {item!r}; roles: {known}")
        hits = pairs.roles == item  # [n, pos]
        counts = hits.sum(axis=1)
        if (counts > 1).any():
            raise InvalidParameterError(f"role {item!r} names {int(counts.max())} tokens in example "
                                        f"{int(pairs.ids[np.argmax(counts > 1)])}; address those positions by index")
        cols.append(np.where(counts == 1, hits.argmax(axis=1), -1))
    return np.stack(cols, axis=1).astype(np.int64), list(pos)
