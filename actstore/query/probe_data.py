"""The rows a probe or a PCA reads: one stored hook's value at one position of each example.

    probe_hooks(store, hooks)          which hooks (default: every stored residual hook)
    resolve_positions(store, pos)      each position item -> the position it names in each example
    holdout_mask(example_id, fraction) the deterministic, disjoint train/test split
    stream_rows(store, hook, rows, keep)   per chunk, each item's feature rows [row, features] float64

A position item is an int (a position; negative counts back from each example's end), a token
role ('=', 'END', 'a0'; one token of that role per example), 'answer' or 'answer:J' (the
example's J-th answer position; 'answer' is answer 0), or 'all' (every position, one item each).
An example without the position (too short, no token of the role) is left out of that item.
A hook's features are its value at the position with every other axis flattened (hook_z:
head x d_head, hook_pattern: head x key_pos). Hooks stored at the answer positions only are read
where the position is an answer position of every example.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np

from actstore.errors import InvalidParameterError, UnknownHookError
from actstore.query.chunks import ExampleArrays, example_arrays, pos_axis, stream
from actstore.query.selectors import Roles
from actstore.store.arch import hooks_named
from actstore.store.reader import Store

PosItem = Union[int, str]
PosSpec = Union[PosItem, Sequence[PosItem], None]

RESIDUAL = re.compile(r"blocks\.\d+\.hook_resid_(pre|mid|post)")
Z = re.compile(r"blocks\.\d+\.attn\.hook_z")
DEFAULT_POS = "answer:0"


# --- hooks ------------------------------------------------------------------------------------

def probe_hooks(store: Store, hooks: str | Sequence[str] | None = None) -> list[str]:
    """Stored hooks to read, in storage order.

    None: every stored residual hook (resid_pre / resid_mid / resid_post), else every per-layer
    hook_z (heads flattened). A name is a stored hook, or a short form meaning that hook in every
    layer ('resid_post', 'z', 'hook_pattern').
    """
    stored = store.hooks
    if hooks is None:
        found = [h for h in stored if RESIDUAL.fullmatch(h)] or [h for h in stored if Z.fullmatch(h)]
        if not found:
            raise UnknownHookError(f"store {store.path} holds no residual hook (resid_pre/mid/post) and no hook_z; "
                                   f"name one with hooks=... (stored: {', '.join(stored)})")
        return found
    names = [hooks] if isinstance(hooks, str) else list(hooks)
    if not names:
        raise InvalidParameterError("hooks: an empty list names no hook; pass None for the residual hooks")
    out: list[str] = []
    for name in names:
        if not isinstance(name, str):
            raise InvalidParameterError(f"hooks: expected hook names, got {name!r}")
        out.extend(h for h in _expand(name, stored) if h not in out)
    return [h for h in stored if h in out]


def _expand(name: str, stored: list[str]) -> list[str]:
    found = hooks_named(name, stored)
    if found:
        return found
    close = difflib.get_close_matches(name, stored, n=3, cutoff=0.5)
    hint = f"closest stored: {', '.join(close)}" if close else f"stored: {', '.join(stored)}"
    raise UnknownHookError(f"hook {name!r} is not stored in {store_name(stored)} ({hint}; short forms like "
                           f"'resid_post' or 'z' mean every layer)")


def store_name(stored: list[str]) -> str:
    return "this store" if stored else "this store (it holds no hooks)"


def hook_layer(name: str) -> int | None:
    """The block a hook belongs to ('blocks.3.hook_resid_post' -> 3), None outside the blocks."""
    m = re.match(r"blocks\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def feature_count(store: Store, hook: str) -> int:
    """Features of a hook at one position (the product of its axes other than example and position)."""
    info = store.hook_info(hook)
    axis = pos_axis(info.dims)
    return int(np.prod([s for i, s in enumerate(info.shape) if i not in (0, axis)], dtype=np.int64))


# --- positions --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rows:
    """One position item resolved: `pos[e]` is example e's position, -1 where it has none."""

    name: str         # the item as the tables show it ('answer:0', '=', '3', '-1')
    pos: np.ndarray   # [example] int64


def position_items(store: Store, pos: PosSpec) -> list[PosItem]:
    """The items of a position spec, 'all' expanded to every position, duplicates dropped."""
    items = [DEFAULT_POS] if pos is None else [pos] if isinstance(pos, (int, np.integer, str)) else list(pos)
    if not items:
        raise InvalidParameterError("pos: an empty list selects no position; leave it out for the first answer")
    out: list[PosItem] = []
    for item in items:
        if isinstance(item, (bool, np.bool_)) or not isinstance(item, (int, np.integer, str)):
            raise InvalidParameterError(f"pos: expected a position, role, 'answer[:J]' or 'all', got {item!r}")
        expanded: list[PosItem] = (list(range(store.manifest.width)) if item == "all"
                                   else [int(item)] if isinstance(item, (int, np.integer)) else [item])
        out.extend(i for i in expanded if i not in out)
    return out


def resolve_positions(store: Store, pos: PosSpec, arrays: ExampleArrays | None = None) -> list[Rows]:
    """Each item of `pos` (see the module doc) as per-example positions; one-line errors for bad items."""
    arrays = arrays or example_arrays(store)
    width = int(store.manifest.width)
    lengths = arrays.lengths
    roles: Roles | None = None
    out = []
    for item in position_items(store, pos):
        if isinstance(item, int):
            if not -width <= item < width:
                raise InvalidParameterError(f"pos: position {item} is outside the store's {width} positions")
            at = item + lengths if item < 0 else np.full(lengths.size, item, dtype=np.int64)
            out.append(Rows(str(item), np.where((at >= 0) & (at < lengths), at, -1).astype(np.int64)))
            continue
        answer = _answer_index(item, store.n_answers)
        if answer is not None:
            out.append(Rows(f"answer:{answer}", arrays.answer_pos[:, answer].astype(np.int64)))
            continue
        if roles is None:
            roles = Roles.from_tokens(store.tokens, lengths.size, width)
        hits = roles.codes == roles.code(item, "pos")  # [example, pos]
        count = hits.sum(axis=1)
        if (count > 1).any():
            e = int(np.argmax(count > 1))
            raise InvalidParameterError(f"pos: role {item!r} occurs {int(count[e])} times in example {e}; a probe "
                                        f"reads one position per example: give a position index instead")
        out.append(Rows(item, np.where(count == 1, hits.argmax(axis=1), -1).astype(np.int64)))
    return out


def _answer_index(item: str, n_answers: int) -> int | None:
    head, sep, tail = item.partition(":")
    if head != "answer":
        return None
    if not sep:
        return 0
    try:
        j = int(tail)
    except ValueError:
        j = -1
    if not 0 <= j < n_answers:
        raise InvalidParameterError(f"pos: {item!r} names no answer; this store's examples have answers "
                                    f"0..{n_answers - 1} ('answer:J')")
    return j


def stored_index(store: Store, hook: str, rows: Rows, arrays: ExampleArrays) -> np.ndarray:
    """[example] index into the hook's stored position axis (-1: no row), for hooks stored at every
    position or at the answer positions only."""
    info = store.hook_info(hook)
    if info.positions == "all":
        return rows.pos
    has = rows.pos >= 0
    match = arrays.answer_pos == rows.pos[:, None]  # [example, answer]
    missing = has & ~match.any(axis=1)
    if missing.any():
        e = int(np.argmax(missing))
        raise InvalidParameterError(f"hook {hook!r} is stored at the answer positions only, and position "
                                    f"{int(rows.pos[e])} of example {e} (pos {rows.name}) is not one; probe it at "
                                    f"'answer:J' or re-ingest with --hooks {hook}:all")
    return np.where(has, match.argmax(axis=1), -1).astype(np.int64)


# --- the split --------------------------------------------------------------------------------

def holdout_mask(example_id: np.ndarray, fraction: float, seed: int = 0, purpose: str = "test") -> np.ndarray:
    """[example] bool: True for the held-out examples (`fraction` of them, in expectation).

    A hash (splitmix64) of the example_id keyed by (seed, purpose), compared with `fraction`:
    deterministic, the same for an example whatever the store's size or chunking, so the held-out
    and the other examples are disjoint by construction. purpose 'test' gives the test split;
    another purpose ('validation') an independent split of the same examples.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise InvalidParameterError(f"test_fraction must be a number strictly between 0 and 1, got {fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise InvalidParameterError(f"seed must be a non-negative integer, got {seed!r}")
    salt = sum(ord(c) << (8 * (i % 8)) for i, c in enumerate(purpose)) % 2**64
    key = _splitmix64(_splitmix64(np.array([seed], dtype=np.uint64)) ^ np.uint64(salt))
    z = _splitmix64(np.asarray(example_id, dtype=np.uint64) + key)
    u = (z >> np.uint64(11)).astype(np.float64) * 2.0**-53  # uniform in [0, 1)
    return u < float(fraction)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's output function of x (uint64 arrays; the arithmetic wraps modulo 2**64)."""
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


# --- streaming --------------------------------------------------------------------------------

def stream_rows(store: Store, hook: str, index: Sequence[np.ndarray], keep: np.ndarray,
                arrays: ExampleArrays, label: str) -> Iterator[list[tuple[np.ndarray, np.ndarray]]]:
    """Per committed chunk with any selected row: for each item, (example rows [row], features [row, F]).

    index: per item, [example] index into the hook's position axis (-1: none; see stored_index);
    keep: [example] bool, the examples to read at all. Features are float64.
    """
    info = store.hook_info(hook)
    axis = pos_axis(info.dims)
    wanted = [(ix >= 0) & keep for ix in index]
    ranges = [(a, b) for a, b in store.chunks() if any(w[a:b].any() for w in wanted)]
    for chunk in stream(store, [], [hook], examples=arrays, ranges=ranges, label=label):
        a, b = chunk.start, chunk.stop
        moved = np.moveaxis(chunk.full.pop(hook), axis, 1)  # [example, pos, ...]
        out = []
        for ix, w in zip(index, wanted):
            local = np.flatnonzero(w[a:b])
            x = moved[local, ix[a:b][local]].reshape(local.size, -1).astype(np.float64)
            out.append((local + a, x))
        del moved
        yield out


__all__ = ["DEFAULT_POS", "PosItem", "PosSpec", "Rows", "feature_count", "hook_layer", "position_items",
           "probe_hooks", "resolve_positions", "holdout_mask", "stored_index", "stream_rows"]
