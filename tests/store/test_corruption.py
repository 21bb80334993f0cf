"""Corruption suite: damage every kind of file in a real store and read everything back.

Each case copies a clean store, damages one file (deletes it, truncates it, flips one bit, or
puts a FIFO or a directory in its place: a FIFO would block a careless reader forever),
then reads everything a user can read: every hook, every weight, the meta tables, a DLA query
and the SQL view over the derived cache. A case must end one of two ways:

- detected: an ActstoreError with a one-line message (and `verify` does not pass), or
- harmless: every value read equals the clean store's, bit for bit;

never silently wrong (values that differ, read without an error). A crash that is not an
ActstoreError (a traceback) fails too. The default run damages one file of each kind; the full
sweep (every file, delete / truncate / 8 bit flips each) is marked slow.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import shutil
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from actstore import open_store
from actstore.errors import ActstoreError
from actstore.query import dla
from actstore.store.verify import verify

FLIPS_PER_FILE = 8


@pytest.fixture(scope="module")
def clean(real_store_template, tmp_path_factory) -> tuple[Path, str]:
    """A finished store with a cached derived table, and the fingerprint of everything read from it."""
    path = tmp_path_factory.mktemp("clean") / "store"
    shutil.copytree(real_store_template, path)
    fingerprint = observe(path)  # also writes derived/ (the dla view), which is then damaged like the rest
    assert any((path / "derived").iterdir())
    return path, fingerprint


def _frame_digest(h: "hashlib._Hash", df: pl.DataFrame) -> None:
    h.update(repr(df.schema).encode())
    h.update(df.hash_rows(seed=0).to_numpy().tobytes())


def observe(path: Path) -> str:
    """sha256 over everything a reader gets from the store at `path`."""
    h = hashlib.sha256()
    store = open_store(path)
    h.update(repr((store.n_examples, store.manifest.to_dict())).encode())
    for name in store.hooks:
        h.update(name.encode())
        h.update(store.read(name).tobytes())
    for name in store.param_names:
        h.update(name.encode())
        h.update(store.param(name).tobytes())
    for table in (store.examples, store.tokens, store.outputs):
        _frame_digest(h, table)
    _frame_digest(h, dla(store, level="head"))
    _frame_digest(h, store.sql("SELECT * FROM dla ORDER BY ALL").pl())
    return h.hexdigest()


def damage(path: Path, how: str, rng: random.Random) -> None:
    if how == "delete":
        path.unlink()
    elif how == "fifo":
        path.unlink()
        os.mkfifo(path)
    elif how == "dir":
        path.unlink()
        path.mkdir()
    elif how == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:  # flip one bit
        data = bytearray(path.read_bytes())
        if not data:
            return
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))


def kind_of(rel: str) -> str:
    """A file's kind: what the default run samples one of."""
    if rel.startswith("acts/"):
        return "acts metadata" if rel.endswith("zarr.json") else "acts chunk"
    if rel.startswith("params/"):
        return "params metadata" if rel.endswith("zarr.json") else "params chunk"
    if rel.startswith("meta/"):
        return rel.split("/")[1] + " part"
    if rel.startswith("_commits/"):
        return {"store.json": "store record", "complete.json": "completion record"}.get(rel.split("/")[1],
                                                                                         "commit record")
    if rel.startswith("derived/"):
        return "derived record" if not rel.endswith(".parquet") else "derived table"
    return "manifest" if rel == "zarr.json" else "other"


class ReaderBlocked(BaseException):
    """A read that blocked (no `except Exception` or `except OSError` in the code may swallow it)."""


def _blocked(*_: object) -> None:
    raise ReaderBlocked("a reader blocked for 120 s")


def run_case(clean_path: Path, fingerprint: str, rel: str, how: str, seed: int, work: Path) -> str:
    """Damage one file of a copy and classify what a reader sees: 'detected' or 'harmless'."""
    copy = work / "store"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(clean_path, copy)
    target = copy / rel
    before = target.read_bytes()
    damage(target, how, random.Random(seed))
    if target.is_file() and target.read_bytes() == before:
        return "harmless"
    signal.signal(signal.SIGALRM, _blocked)
    signal.alarm(120)  # a reader that blocks (on a FIFO) fails the test instead of hanging it
    try:
        got = observe(copy)
    except ActstoreError as e:
        message = str(e)
        assert message and "\n" not in message, f"{rel} {how}: error is not one line: {message!r}"
        if not rel.startswith("derived/"):
            try:
                report = verify(copy)
                assert not report.passed, f"{rel} {how}: reads fail ({message}) but verify passes"
            except ActstoreError:
                pass
        return "detected"
    finally:
        signal.alarm(0)
    assert got == fingerprint, f"{rel} {how} (seed {seed}): read back different values with no error"
    return "harmless"


def cases(root: Path, full: bool) -> list[tuple[str, str, int]]:
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    if not full:  # one file of each kind
        seen: dict[str, str] = {}
        for rel in files:
            seen.setdefault(kind_of(rel), rel)
        files = sorted(seen.values())
        return [(rel, how, 0) for rel in files for how in ("delete", "flip", "fifo")]
    return [(rel, how, seed) for rel in files
            for how, seed in [("delete", 0), ("truncate", 0), ("fifo", 0), ("dir", 0),
                              *(("flip", s) for s in range(FLIPS_PER_FILE))]]


def sweep(clean: tuple[Path, str], work: Path, full: bool) -> Counter:
    path, fingerprint = clean
    outcome: Counter = Counter()
    for rel, how, seed in cases(path, full):
        outcome[run_case(path, fingerprint, rel, how, seed, work), kind_of(rel), how] += 1
    return outcome


def summary(outcome: Counter) -> str:
    total = Counter()
    for (result, _, _), n in outcome.items():
        total[result] += n
    return (f"{sum(total.values())} cases: {total['detected']} detected, {total['harmless']} harmless, "
            "0 silently wrong")


def test_one_file_of_every_kind(clean, tmp_path):
    outcome = sweep(clean, tmp_path, full=False)
    kinds = {k for _, k, _ in outcome}
    assert {"acts chunk", "acts metadata", "params chunk", "params metadata", "examples part", "tokens part",
            "outputs part", "commit record", "store record", "completion record", "manifest",
            "derived table"} <= kinds
    # damage to data or records is always detected; the derived cache is recomputed instead, and
    # without its completion record a store whose chunks are all committed reads the same (and warns)
    for (result, kind, how), _ in outcome.items():
        if kind in ("acts chunk", "params chunk", "examples part", "tokens part", "outputs part", "store record",
                    "commit record") or (kind == "completion record" and how == "flip"):
            assert result == "detected", (kind, how)
    print(summary(outcome))


@pytest.mark.slow
def test_every_file_deleted_truncated_and_bit_flipped(clean, tmp_path):
    outcome = sweep(clean, tmp_path, full=True)
    by_kind: dict[str, Counter] = {}
    for (result, kind, _), n in outcome.items():
        by_kind.setdefault(kind, Counter())[result] += n
    for kind, c in sorted(by_kind.items()):
        print(f"{kind:18s} detected {c['detected']:4d}  harmless {c['harmless']:4d}")
    print(summary(outcome))
