"""weight_cache.check_ahead: an entry checked ahead (ingest: beside the probe) is linked by place_params without
reading its files again while they stay as checked, a place_params arriving while the check runs joins it (each
file read once, by both threads), and a file written after the check (its mtime put back, so only its ctime
tells) is read again and caught, never linked, also where the check read nothing (the store linking the entry was
deleted: only ctimes and link counts moved)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "ingest"))
from tiny_models import tiny_model  # noqa: E402

import actstore  # noqa: E402
from actstore.ingest.model_info import params_dict, weights_digest  # noqa: E402
from actstore.store import weight_cache  # noqa: E402
from actstore.store.layout import DEFAULT_CODEC  # noqa: E402
from actstore.store.verify import verify  # noqa: E402
from actstore.store.weight_cache import ENV, check_ahead, place_params  # noqa: E402

KW = dict(hooks=["blocks.0.hook_resid_pre"], chunk=16, batch=8, quiet=True)
VICTIM = "blocks.0.attn.W_O/c.0.0.0"


@pytest.fixture(scope="module")
def model():
    return tiny_model("addition")


def _entry(model, tmp_path, delete: bool) -> tuple[Path, Path]:
    cache = Path(os.environ[ENV])
    store = actstore.ingest("addition", model, 20, 0, tmp_path / "first", **KW).path
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    if delete:
        shutil.rmtree(store)
    else:
        for p in (entry / "params").rglob("*"):
            if p.is_file():
                os.chmod(p, p.stat().st_mode)
    return cache, entry


@pytest.fixture
def touched_entry(model, tmp_path):
    """The model's cache entry after every file's ctime moved, link count unchanged (a chmod to its own mode, as a
    write with its mtime put back leaves it): each chunk is read again."""
    return _entry(model, tmp_path, delete=False)


@pytest.fixture
def unlinked_entry(model, tmp_path):
    """The model's cache entry after the one store linking it was deleted (every file's ctime and link count moved):
    used without reading it again."""
    return _entry(model, tmp_path, delete=True)


def _crc_reads(monkeypatch) -> list[str]:
    reads: list[str] = []
    real = weight_cache._crc_matches
    monkeypatch.setattr(weight_cache, "_crc_matches", lambda p, want: reads.append(str(p)) or real(p, want))
    return reads


def test_an_entry_checked_ahead_is_linked_without_reading_it_again(model, touched_entry, tmp_path, monkeypatch):
    cache, entry = touched_entry
    reads = _crc_reads(monkeypatch)
    check_ahead(weights_digest(model), DEFAULT_CODEC, cache)
    assert reads  # the moved files were read once, here
    reads.clear()
    known = place_params(tmp_path / "params", params_dict(model), DEFAULT_CODEC, weights_digest(model), cache)
    assert reads == [] and known
    assert (tmp_path / "params" / VICTIM).stat().st_ino == (entry / "params" / VICTIM).stat().st_ino


@pytest.mark.parametrize("state", ["touched", "unlinked"])
def test_a_file_written_after_the_check_is_caught(model, state, tmp_path, monkeypatch):
    cache, entry = _entry(model, tmp_path, delete=state == "unlinked")
    before = weight_cache.files_read()
    check_ahead(weights_digest(model), DEFAULT_CODEC, cache)
    read = weight_cache.files_read() - before
    share = -(-len(json.loads((entry / weight_cache.RECORD).read_text())["files"]) // weight_cache.AUDIT)
    assert (read <= share) == (state == "unlinked")  # a deleted store's links: only the audit's share is read
    victim = entry / "params" / VICTIM
    was = victim.stat()
    data = bytearray(victim.read_bytes())
    data[20] ^= 0xFF  # inside the blosc payload: size and crc32c tail as recorded
    with open(victim, "r+b") as f:
        f.write(bytes(data))
    os.utime(victim, ns=(was.st_atime_ns, was.st_mtime_ns))  # only the ctime moved
    reads = _crc_reads(monkeypatch)
    place_params(tmp_path / "params", params_dict(model), DEFAULT_CODEC, weights_digest(model), cache)
    assert str(victim) in reads
    assert (tmp_path / "params" / VICTIM).read_bytes() != bytes(data)  # the entry was rebuilt from the model
    store = actstore.ingest("addition", model, 20, 0, tmp_path / "second", **KW)
    assert verify(store.path).passed


def test_a_placement_arriving_during_the_check_joins_it_and_reads_each_file_once(model, touched_entry, tmp_path,
                                                                                  monkeypatch):
    cache, entry = touched_entry
    reads: list[tuple[str, str]] = []  # (thread, file)
    started = threading.Event()
    real = weight_cache._crc_matches

    def slow(p, want):
        reads.append((threading.current_thread().name, str(p)))
        started.set()
        time.sleep(0.02)  # the check is still running when place_params arrives
        return real(p, want)

    monkeypatch.setattr(weight_cache, "_crc_matches", slow)
    ahead = threading.Thread(target=check_ahead, args=(weights_digest(model), DEFAULT_CODEC, cache), name="ahead")
    ahead.start()
    assert started.wait(10)
    known = place_params(tmp_path / "params", params_dict(model), DEFAULT_CODEC, weights_digest(model), cache)
    ahead.join()
    files = [f for _, f in reads]
    chunks = [p for p in (entry / "params").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert sorted(files) == sorted(map(str, chunks))  # every chunk read, none twice
    assert {t for t, _ in reads} == {"ahead", threading.current_thread().name}  # by both threads
    assert known and (tmp_path / "params" / VICTIM).stat().st_ino == (entry / "params" / VICTIM).stat().st_ino
