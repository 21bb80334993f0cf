"""Creating a new local store on a helper thread while the first chunk's forward runs (ingest step 3 for a new
store; actstore.ingest.run).

The creation (the wait for the weights digest, the processing record, the weight cache entry's check, params/
linked, the empty arrays, the store record) builds the store beside its path as create_store always does; only its
rename into place waits for the loop's word (`Creation.publish`): the first batch has run, and checked the hook
shapes where the manifest took them from the config. The loop makes its ChunkWriter from the
created store when its first chunk is ready to write, so nothing is written into the store, let alone committed,
before the creation and every check in it passed.
"""

from __future__ import annotations

import glob
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from actstore.store.fs import RemotePath, StorePath
from actstore.store.manifest import Manifest
from actstore.store.open import is_store
from actstore.store.writer import create_store, remove_interrupted_creation, remove_store


class Creation:
    """Creates a new local store on a helper thread (started at once) while the loop runs the first chunk: waits
    for the weights digest, then create_store (its weight cache check, links, records), which builds the store
    beside its path and renames it into place only once `publish()` was called: after the first batch ran (and
    checked the hook shapes where they came from the config). `settle()` (always called before the lock is
    released) publishes nothing that was not allowed and waits for the thread: an ingest that fails or is cut
    short before its first batch ran leaves no store; after it, an empty store or committed chunks, resumed by
    the next ingest."""

    def __init__(self, out: Path, manifest: Manifest, complete: Callable[[Manifest], Manifest],
                 params: Callable[[], dict[str, np.ndarray]]) -> None:
        """complete: the manifest with what is learned from the weights filled in (their digest, waited for on
        its thread; the processing record), run on the creation thread; params: the weights to store."""
        self.digest_s = self.create_s = self.create_cpu_s = 0.0
        self._allowed: bool | None = None  # None: not decided yet
        self._decided = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="actstore-create")
        self._future = self._pool.submit(self._create, out, manifest, complete, params)
        self._pool.shutdown(wait=False)

    def _create(self, out: Path, manifest: Manifest, complete: Callable[[Manifest], Manifest],
                params: Callable[[], dict[str, np.ndarray]]) -> Manifest:
        started = time.perf_counter()
        manifest = complete(manifest)
        self.digest_s = time.perf_counter() - started
        cpu = time.thread_time()
        manifest.validate()
        create_store(out, manifest, _Lazy(params), publish=self._wait_allowed)
        self.create_s = time.perf_counter() - started - self.digest_s
        self.create_cpu_s = time.thread_time() - cpu  # what it took from the loop's cores (this thread's alone)
        return manifest

    def _wait_allowed(self) -> None:
        self._decided.wait()
        if not self._allowed:
            raise _NotPublished

    def publish(self) -> None:
        """Let the store be renamed into place (the first batch ran, its shapes checked)."""
        if self._allowed is None:
            self._allowed = True
            self._decided.set()

    def result(self) -> Manifest:
        """The created store's manifest (the weights digest filled in); CreationFailed carrying what creating it
        raised."""
        try:
            return self._future.result()
        except Exception as e:
            raise CreationFailed(e) from e

    def raise_if_failed(self) -> None:
        """CreationFailed at once if the creation has failed already (so no more forward passes run for it)."""
        if self._future.done() and self._future.exception() is not None:
            self.result()

    def settle(self) -> None:
        """Refuse publishing if not yet allowed, then wait for the thread (its error is result()'s to raise)."""
        if self._allowed is None:
            self._allowed = False
            self._decided.set()
        self._future.exception()


class _Lazy(Mapping[str, np.ndarray]):
    """The weights as a mapping made on first use: a store whose params/ come from the weight cache never reads
    them (making the float32 arrays of a GPT-2-small shape costs ~20 ms of the CPU the loop runs on)."""

    def __init__(self, make: Callable[[], dict[str, np.ndarray]]) -> None:
        self._make = make
        self._made: dict[str, np.ndarray] | None = None

    def _get(self) -> dict[str, np.ndarray]:
        if self._made is None:
            self._made = self._make()
        return self._made

    def __getitem__(self, name: str) -> np.ndarray:
        return self._get()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


class CreationFailed(Exception):
    """What creating the store raised (`error`), carried past the loop's handling of a failed write (which would
    call it a write to a store whose committed chunks are kept) so that ingest raises it as itself."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class _NotPublished(Exception):
    """The ingest ended before its first batch ran: the store being created is dropped."""


def looks_new(out: StorePath, overwrite: bool) -> bool:
    """Whether `out` looks like a path a new local store will be created at (checked again under the lock)."""
    if isinstance(out, RemotePath):
        return False
    try:
        return overwrite or not out.exists() or (out.is_dir() and not any(out.iterdir()))
    except OSError:
        return False


def clear_for_new(out: Path, overwrite: bool) -> bool:
    """Under the lock: make `out` ready for a new store (leftovers removed; the old store removed if
    `overwrite`) and return True, or return False where it holds something to resume, grow or refuse."""
    remove_leftovers(out)
    if not out.exists():
        return True
    if overwrite and is_store(out):
        remove_store(out)
        return True
    return out.is_dir() and not any(out.iterdir())


def remove_leftovers(out: StorePath) -> None:
    """Delete what a crashed creation or overwrite of this store left beside it (the lock is held, so
    they are nobody else's; those of other stores whose names share a prefix are left alone)."""
    if isinstance(out, RemotePath):  # no rename there: a cut-short upload is left in place
        remove_interrupted_creation(out)
        return
    own = re.compile(re.escape(f".{out.name}.") + r"(creating|deleting)-\d+")
    for p in out.parent.glob(f".{glob.escape(out.name)}.*"):
        if own.fullmatch(p.name) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
