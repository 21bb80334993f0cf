"""What a store's queries keep between them: per-store-constant arrays, within a byte budget.

A store opened once and queried many times (a notebook, a benchmark, a report) asks for the same
derived arrays on every query: the target's rows for each chunk's answers, the embeddings' share
of the target, the folded tables gathered at every answer. They depend only on the store (an
opened Store is a snapshot: its committed chunks do not change) and on objects the key names, so
they are computed once and kept here, weakly keyed by the Store, least recently used first out.

Kept arrays are read-only. A Memo holds at most `budget` bytes of what its `Budget` counts (large
stores simply keep less: each entry counts itself, and an entry that does not fit is not kept).
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from actstore.store.reader import Store

BUDGET = 48 << 20  # bytes of kept arrays per store
ENTRIES = 64  # kept entries per store


SCAN_ENTRIES = ENTRIES // 2  # per-chunk entries a scan keeps at most (the rest: per-query entries)


def keeps_chunks(store: Store) -> bool:
    """Whether a scan of `store` keeps per-chunk entries for the next query: only if it has at most
    SCAN_ENTRIES committed chunks. A longer scan evicts each entry (least recently used first) before
    the next scan reaches its chunk, so nothing it kept would ever be reused: a one-shot scan of a
    large store would fill the budget for nothing, in memory and time."""
    return -(-store.n_examples // max(1, store.chunk_size)) <= SCAN_ENTRIES


class Budget:
    """Bytes kept by a store's entries (each entry may grow after it is made: see readout.Target)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> bool:
        """Reserve `nbytes` if they fit; whether they did."""
        with self._lock:
            if self.used + nbytes > self.limit:
                return False
            self.used += nbytes
            return True

    def give(self, nbytes: int) -> None:
        with self._lock:
            self.used -= nbytes


class Memo:
    """One store's kept entries: key -> (the objects the value was made from, value)."""

    def __init__(self, budget: int = BUDGET, entries: int = ENTRIES) -> None:
        self.budget = Budget(budget)
        self.entries = entries
        self._kept: OrderedDict[Hashable, tuple[tuple[Any, ...], Any]] = OrderedDict()
        self._lock = threading.RLock()  # queries may run on several threads (a threaded Dask worker)

    def get(self, key: Hashable, refs: tuple[Any, ...], make: Callable[[], Any]) -> Any:
        """The value kept under `key`, made by `make()` if absent or made from other objects.

        refs: objects the value depends on that the key cannot name by value (a Readout, a store's
        ExampleArrays): a hit needs the very same objects (`is`); holding them keeps them alive.
        A value that keeps arrays after it is made counts them in `self.budget` and says how many
        in its `kept_bytes` (given back when it is dropped).
        """
        with self._lock:
            hit = self._kept.get(key)
            if hit is not None and len(hit[0]) == len(refs) and all(a is b for a, b in zip(hit[0], refs)):
                self._kept.move_to_end(key)
                return hit[1]
            if hit is not None:
                self._drop(key)
            value = make()
            self._kept[key] = (refs, value)
            while len(self._kept) > self.entries:
                self._drop(next(iter(self._kept)))
            return value

    def _drop(self, key: Hashable) -> None:
        _, value = self._kept.pop(key)
        self.budget.give(int(getattr(value, "kept_bytes", 0)))


_MEMOS: "weakref.WeakKeyDictionary[Store, Memo]" = weakref.WeakKeyDictionary()
_PER_STORE_LOCK = threading.Lock()
T = TypeVar("T")


def per_store(registry: "weakref.WeakKeyDictionary[Store, T]", store: Store, make: Callable[[], T]) -> T:
    """`registry`'s value for an opened store, made by `make()` on first use (once, whichever thread asks
    first) and gone with the Store: the registry is weakly keyed."""
    with _PER_STORE_LOCK:
        found = registry.get(store)
        if found is None:
            found = registry[store] = make()
        return found


def memo(store: Store) -> Memo:
    """The Memo of an opened store (made on first use, gone with the Store)."""
    return per_store(_MEMOS, store, Memo)
