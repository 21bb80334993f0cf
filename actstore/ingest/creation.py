"""Creating a new local store on a helper thread while the first chunk's forward runs (ingest step 3 for a new
store; actstore.ingest.run).

The creation (the wait for the weights digest, the processing record, the weight cache entry's check, params/
linked, the empty arrays, the store record) builds the store beside its path as create_store always does; only its
rename into place waits for the loop's word (`Creation.publish`): the first batch has checked the hook shapes the
manifest took from the config (probed shapes need no check: no wait). The loop makes its ChunkWriter from the
created store when its first chunk is ready to write, so nothing is written into the store, let alone committed,
before the creation and every check in it passed.
"""

from __future__ import annotations

import glob
import re
import shutil
import threading
import time
from collections.abc import Callable
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
    beside its path and renames it into place only once `publish()` was called: after the first batch checked
    the hook shapes from the config (at once where the probe gave them). `settle()` (always called before the
    lock is released) publishes nothing that was not allowed and waits for the thread: a failed or cut-short
    ingest leaves either no store or an empty one, as before."""

    def __init__(self, out: Path, manifest: Manifest, complete: Callable[[Manifest], Manifest],
                 params: Callable[[], dict[str, np.ndarray]], checked: bool) -> None:
        """complete: the manifest with what is learned from the weights filled in (their digest, waited for on
        its thread; the processing record), run on the creation thread; params: the weights to store."""
        self.digest_s = self.create_s = 0.0
        self._allowed: bool | None = True if checked else None  # None: not decided yet
        self._decided = threading.Event()
        if checked:
            self._decided.set()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="actstore-create")
        self._future = self._pool.submit(self._create, out, manifest, complete, params)
        self._pool.shutdown(wait=False)

    def _create(self, out: Path, manifest: Manifest, complete: Callable[[Manifest], Manifest],
                params: Callable[[], dict[str, np.ndarray]]) -> Manifest:
        started = time.perf_counter()
        manifest = complete(manifest)
        self.digest_s = time.perf_counter() - started
        manifest.validate()
        create_store(out, manifest, params(), publish=self._wait_allowed)
        self.create_s = time.perf_counter() - started - self.digest_s
        return manifest

    def _wait_allowed(self) -> None:
        self._decided.wait()
        if not self._allowed:
            raise _NotPublished

    def publish(self) -> None:
        """Let the store be renamed into place (the shapes are checked)."""
        if self._allowed is None:
            self._allowed = True
            self._decided.set()

    def result(self) -> Manifest:
        """The created store's manifest (the weights digest filled in); raises what creating it raised."""
        return self._future.result()

    def settle(self) -> None:
        """Refuse publishing if not yet allowed, then wait for the thread (its error is result()'s to raise)."""
        if self._allowed is None:
            self._allowed = False
            self._decided.set()
        self._future.exception()


class _NotPublished(Exception):
    """The ingest ended before the first batch checked the shapes: the store being created is dropped."""


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
