"""The derived/ cache is checked by digest when used: a replaced, truncated or bit-flipped cached
table, or one whose record is gone, is recomputed (never served), and a cache that cannot be
written (full disk, read-only) leaves nothing behind while the query still answers."""

from __future__ import annotations

import errno
import io
import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from query_models import N_EXAMPLES

import actstore
from actstore.cli import main
from actstore.query import derived, dla, sql
from actstore.store import cache
from actstore.store.cache import cache_problems, read_checked, record_path, write_checked

PER_HEAD = "SELECT component, avg(value) AS v FROM dla GROUP BY component ORDER BY component"


@pytest.fixture(scope="module")
def cached_store(tiny_store, tmp_path_factory):
    """A tiny store with its default dla table cached, and the numbers it must give."""
    root = tmp_path_factory.mktemp("derived") / "s"
    shutil.copytree(tiny_store("ln_mlp").path, root)
    store = actstore.open_store(root)
    want = sql(store, PER_HEAD).pl()
    return root, want


@pytest.fixture()
def store(cached_store, tmp_path):
    root, _ = cached_store
    shutil.copytree(root, tmp_path / "s")
    return actstore.open_store(tmp_path / "s")


@pytest.fixture()
def want(cached_store):
    return cached_store[1]


def dla_file(store) -> Path:
    (path,) = store.derived_dir.glob("dla-level=head-target=correct-*.parquet")
    return path


def leftovers(store) -> list[str]:
    return sorted(p.name for p in store.derived_dir.iterdir() if p.name.endswith(".tmp"))


def assert_original(store, want) -> None:
    got = sql(store, PER_HEAD).pl()
    assert got["component"].to_list() == want["component"].to_list()
    np.testing.assert_allclose(got["v"], want["v"], rtol=1e-12)
    frame = derived.cached(store, "dla")
    means = frame.group_by("component").agg(v=pl.col("value").mean()).sort("component")
    np.testing.assert_allclose(means["v"], want["v"], rtol=1e-12)


def assert_rewritten(store) -> None:
    path = dla_file(store)
    assert read_checked(path) is not None and cache_problems(store.path) == [] and leftovers(store) == []


def test_cache_is_written_with_a_record(store, want):
    path = dla_file(store)
    rec = json.loads(record_path(path).read_text())
    data = path.read_bytes()
    assert rec["size"] == len(data) and read_checked(path) == data
    assert cache_problems(store.path) == []
    stamp = path.stat().st_mtime_ns
    assert_original(store, want)
    assert path.stat().st_mtime_ns == stamp  # a checked hit: not recomputed


def test_replaced_with_doubled_values_is_recomputed(store, want, capsys):
    """The issue's attack: a valid Parquet file with every value doubled, put in place of the cache."""
    path = dla_file(store)
    doubled = pl.read_parquet(path).with_columns(pl.col("value") * 2)
    doubled.write_parquet(path)
    assert pl.read_parquet(path)["value"].abs().sum() > 0
    problems = cache_problems(store.path)
    assert len(problems) == 1 and path.name in problems[0] and "\n" not in problems[0]
    assert_original(store, want)
    assert_rewritten(store)
    # and through the command line: dla prints the original numbers
    doubled.write_parquet(path)
    assert main(["dla", str(store.path), "--level", "head", "--format", "csv"]) == 0
    got = pl.read_csv(io.StringIO(capsys.readouterr().out))
    fresh = dla(store, level="head")
    np.testing.assert_allclose(np.sort(got["value"].to_numpy()), np.sort(fresh["value"].to_numpy()), rtol=1e-9)


def test_doubled_file_with_a_forged_record_of_the_old_file_is_recomputed(store, want):
    """Replacing the file but keeping its (old) record is a mismatch too."""
    path = dla_file(store)
    pl.read_parquet(path).with_columns(pl.col("value") * 2).write_parquet(path)
    assert read_checked(path) is None
    assert_original(store, want)
    assert_rewritten(store)


@pytest.mark.parametrize("damage", ["truncate", "bitflip", "empty", "delete_record", "bad_record", "delete_file"])
def test_damaged_cache_is_recomputed(store, want, damage):
    path = dla_file(store)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "bitflip":
        flipped = bytearray(data)
        flipped[len(data) // 3] ^= 0x04
        path.write_bytes(bytes(flipped))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "delete_record":
        record_path(path).unlink()
    elif damage == "bad_record":
        record_path(path).write_text("{not json")
    else:
        path.unlink()
    if damage != "delete_file":
        assert read_checked(path) is None
        assert len(cache_problems(store.path)) == 1
    assert_original(store, want)
    assert_rewritten(store)


def test_full_disk_during_the_table_write_leaves_nothing(store, want, monkeypatch):
    """ENOSPC part-way through the Parquet write: no temporary file stays, no cache appears, and
    the query answers from the table computed in memory."""
    shutil.rmtree(store.derived_dir)

    def full(frames, path):
        Path(path).write_bytes(b"PAR1" + b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(derived, "write_parquet_frames", full)
    assert_original(store, want)
    # only the store's answer facts (query/store_facts.py, written before the table) are kept
    assert [p.name for p in store.derived_dir.iterdir() if not p.name.startswith("answer_facts-")] == []
    monkeypatch.undo()
    assert_original(store, want)
    assert_rewritten(store)


def test_full_disk_during_the_record_write_is_a_miss_not_a_hit(store, want, monkeypatch):
    """The table landed but its record could not be written: the query still answers, no
    temporary file stays, and the unvouched file is recomputed on next use."""
    shutil.rmtree(store.derived_dir)
    real = cache._atomic_write

    def full(path, data):
        tmp = Path(path).with_name(f".{Path(path).name}.x.tmp")
        try:
            tmp.write_bytes(data[:3])
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        finally:
            tmp.unlink()

    monkeypatch.setattr(cache, "_atomic_write", full)
    assert_original(store, want)
    path = dla_file(store)
    assert not record_path(path).exists() and leftovers(store) == []
    assert len(cache_problems(store.path)) == 1  # the answer facts (query/store_facts.py) removed, not left unvouched
    monkeypatch.setattr(cache, "_atomic_write", real)
    assert_original(store, want)
    assert_rewritten(store)


def test_unwritable_derived_with_a_bad_cache_computes_in_memory(store, want, monkeypatch):
    """A read-only derived/ holding a doubled file: never served, computed in memory each time."""
    path = dla_file(store)
    pl.read_parquet(path).with_columns(pl.col("value") * 2).write_parquet(path)
    doubled = path.read_bytes()

    def read_only(path, write):
        raise PermissionError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(derived, "write_checked", read_only)
    assert_original(store, want)
    assert path.read_bytes() == doubled  # left alone, and still reported
    assert len(cache_problems(store.path)) == 1


def test_stale_key_is_removed_with_its_record(store):
    path = dla_file(store)
    old = path.with_name(path.name.split("-n=")[0] + "-n=7-000000000000.parquet")
    shutil.copy(path, old)
    shutil.copy(record_path(path), record_path(old))
    path.unlink()
    record_path(path).unlink()
    assert sql(store, "SELECT count(*) FROM dla").fetchall()[0][0] == N_EXAMPLES * store.n_answers * 17
    assert not old.exists() and not record_path(old).exists()
    assert_rewritten(store)


# the cache module on its own

def test_write_checked_and_read_checked(tmp_path):
    path = tmp_path / "t.parquet"
    write_checked(path, lambda tmp: tmp.write_bytes(b"hello"))
    assert path.read_bytes() == b"hello" and read_checked(path) == b"hello"
    assert json.loads(record_path(path).read_text())["size"] == 5
    assert cache_problems(tmp_path.parent / "nope") == []
    path.write_bytes(b"jello")
    assert read_checked(path) is None
    write_checked(path, lambda tmp: tmp.write_bytes(b"world!"))
    assert read_checked(path) == b"world!"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet", "t.parquet.sha256"]


def test_write_checked_failure_removes_the_temporary_file(tmp_path):
    path = tmp_path / "t.parquet"

    def boom(tmp):
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        write_checked(path, boom)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ZeroDivisionError):
        write_checked(path, lambda tmp: (tmp.write_bytes(b"x"), 1 / 0))
    assert list(tmp_path.iterdir()) == []


def test_cache_problems_lines(tmp_path):
    derived_dir = tmp_path / "derived"
    derived_dir.mkdir()
    for name in ("a", "b", "c", "d"):
        write_checked(derived_dir / f"{name}.parquet", lambda tmp, n=name: tmp.write_bytes(n.encode() * 10))
    (derived_dir / "a.parquet").write_bytes(b"A" * 10)  # same size, other bytes
    (derived_dir / "b.parquet").write_bytes(b"b" * 3)  # truncated
    record_path(derived_dir / "c.parquet").unlink()
    (derived_dir / ".x.parquet.1.tmp").write_bytes(b"in flight")  # a writer's temporary file: not a table
    lines = cache_problems(tmp_path)
    assert len(lines) == 3 and all("\n" not in line for line in lines)
    assert "derived/a.parquet" in lines[0] and "sha256" in lines[0]
    assert "derived/b.parquet" in lines[1] and "3 bytes" in lines[1]
    assert "derived/c.parquet" in lines[2] and "record" in lines[2]
