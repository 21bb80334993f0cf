"""Hostile store files: a growth intent record (_commits/grow.json) of any content or kind, lock files made
directories or symlinks, a chunk file made a directory, a weight-cache entry holding a symlink. Each is one
ActstoreError line (nothing half-written), or the work goes on to exactly the bytes an untouched run makes."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "ingest"))
from tiny_models import tiny_model  # noqa: E402

import actstore  # noqa: E402
from actstore.errors import StoreCorruptError, StoreFormatError, StoreWriteError  # noqa: E402
from actstore.store.verify import verify  # noqa: E402
from actstore.store.weight_cache import ENV  # noqa: E402

KW = dict(hooks=["blocks.0.attn.hook_z", "ln_final.hook_scale"], chunk=16, batch=8, quiet=True)


@pytest.fixture(scope="module")
def model():
    return tiny_model("addition")


@pytest.fixture(scope="module")
def small(model, tmp_path_factory) -> Path:
    """24 examples in chunks of 16: a partial last chunk, which a growth redoes."""
    return actstore.ingest("addition", model, 24, 0, tmp_path_factory.mktemp("small") / "store", **KW).path


@pytest.fixture(scope="module")
def direct(model, tmp_path_factory) -> Path:
    return actstore.ingest("addition", model, 40, 0, tmp_path_factory.mktemp("direct") / "store", **KW).path


def data_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] in ("acts", "meta", "params", "zarr.json")}


def copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def one_line(e: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(e.value)
    assert "\n" not in text and text
    return text


GOOD = {"n": 40, "from_n": 24, "previous": []}
BAD_INTENTS = {
    "empty": b"", "truncated": json.dumps(GOOD).encode()[:15], "a list": b"[]", "null": b"null", "a number": b"42",
    "n infinite": b'{"n": 1e400, "from_n": 24, "previous": []}', "n NaN": b'{"n": NaN, "from_n": 24, "previous": []}',
    "previous a number": json.dumps({**GOOD, "previous": 5}).encode(), "binary": bytes(range(256)),
}


@pytest.mark.parametrize("content", list(BAD_INTENTS), ids=list(BAD_INTENTS))
def test_an_unreadable_growth_intent_is_one_line_for_readers_and_for_the_ingest(model, small, tmp_path, content):
    root = copy(small, tmp_path / "store")
    (root / "_commits/grow.json").write_bytes(BAD_INTENTS[content])
    before = data_files(root)
    with pytest.raises(StoreCorruptError, match="grow.json"):
        actstore.open_store(root)
    with pytest.raises(StoreFormatError) as e:
        actstore.ingest("addition", model, 40, 0, root, **KW)
    assert "grow.json is unreadable" in one_line(e) and "--overwrite" in one_line(e)
    assert data_files(root) == before  # refused before anything was touched


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_a_growth_intent_that_is_no_file_is_one_line(model, small, tmp_path, kind):
    root = copy(small, tmp_path / "store")
    where = root / "_commits/grow.json"
    if kind == "directory":
        where.mkdir()
    else:
        os.mkfifo(where)
    with pytest.raises(StoreCorruptError) as e:
        actstore.ingest("addition", model, 40, 0, root, **KW)
    assert "not a regular file" in one_line(e)


@pytest.mark.parametrize("intent", [{**GOOD, "from_n": -1}, {**GOOD, "from_n": 10**30}, {**GOOD, "from_n": 3.5},
                                    {**GOOD, "previous": "abc"}, {**GOOD, "previous": ["0" * 7] * 1000}],
                         ids=["from_n -1", "from_n huge", "from_n 3.5", "previous a string", "previous junk"])
def test_a_growth_with_an_odd_intent_still_ends_byte_identical_to_a_direct_ingest(model, small, direct, tmp_path,
                                                                                   intent):
    """A hand-made intent cannot make a grown store hold other numbers: chunks whose records no longer
    match are rewritten, and the result is a direct ingest's bytes."""
    root = copy(small, tmp_path / "store")
    (root / "_commits/grow.json").write_text(json.dumps(intent))
    store = actstore.ingest("addition", model, 40, 0, root, **KW)
    assert store.finished and store.n_examples == 40
    assert data_files(root) == data_files(direct)
    assert verify(root).passed


def test_a_chunk_made_a_directory_is_one_line_naming_it(small, tmp_path):
    root = copy(small, tmp_path / "store")
    chunk = root / "acts/blocks.0.attn.hook_z/c/1/0/0/0"
    chunk.unlink()
    chunk.mkdir()
    store = actstore.open_store(root)
    np.testing.assert_array_equal(store.read("blocks.0.attn.hook_z", 0, 16),
                                  actstore.open_store(small).read("blocks.0.attn.hook_z", 0, 16))
    with pytest.raises(StoreCorruptError) as e:
        store.read("blocks.0.attn.hook_z", 0, 24)
    assert "c/1/0/0/0 is not a regular file" in one_line(e)


@pytest.mark.parametrize("lock", [".store.lock", ".store.shard-0-of-2.lock", ".store.create.lock"])
@pytest.mark.parametrize("kind", ["dangling symlink", "symlink to a file", "directory"])
def test_a_planted_lock_file_is_refused_and_nothing_is_made_through_it(model, tmp_path, lock, kind):
    target = tmp_path / "elsewhere"
    where = tmp_path / lock
    if kind == "directory":
        where.mkdir()
    else:
        if kind == "symlink to a file":
            target.write_bytes(b"keep")
        where.symlink_to(target)
    shard = None if lock == ".store.lock" else "0/2"
    with pytest.raises(StoreWriteError) as e:
        actstore.ingest("addition", model, 24, 0, tmp_path / "store", shard=shard, **KW)
    want = "it is a directory" if kind == "directory" else "it is a symbolic link"
    assert f"its lock file {lock} cannot be made ({want}; remove" in one_line(e)
    assert not (tmp_path / "store").exists()
    assert target.read_bytes() == b"keep" if kind == "symlink to a file" else not target.exists()


def test_a_weight_cache_entry_holding_a_symlink_is_rebuilt_and_never_linked(model, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv(ENV, str(cache))
    first = actstore.ingest("addition", model, 16, 0, tmp_path / "a", **KW).path
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    chunk = entry / "params/embed.W_E/c.0.0"
    outside = tmp_path / "outside"
    outside.write_bytes(chunk.read_bytes())  # the same bytes: only the kind of file differs
    chunk.unlink()
    chunk.symlink_to(outside)
    second = actstore.ingest("addition", model, 16, 0, tmp_path / "b", **KW).path
    linked = second / "params/embed.W_E/c.0.0"
    assert not linked.is_symlink() and not any(p.is_symlink() for p in cache.rglob("*"))
    outside.unlink()
    assert data_files(second) == data_files(first) and verify(second).passed



@pytest.mark.parametrize("content", [b"", b"garbage", b"[1, 2]", b'{"pid": [], "host": {"a": 1}, "since": true}',
                                     b"\xff\xfe" * 100])
def test_a_remote_lock_object_of_any_content_is_refused_then_unlocked(model, capsys, content):
    import fsspec  # noqa: PLC0415

    from actstore.cli import main  # noqa: PLC0415
    from actstore.errors import StoreLockedError  # noqa: PLC0415

    url = f"memory://fuzz-lock-{len(content)}-{content[:3].hex()}/store"
    lock = url.removeprefix("memory:/").replace("/store", "/.store.lock")
    fsspec.filesystem("memory").pipe_file(lock, content)
    with pytest.raises(StoreLockedError) as e:
        actstore.ingest("addition", model, 16, 0, url, **KW)
    assert "which does not name its holder" in one_line(e)
    assert f"actstore unlock {url.replace('memory://', 'memory:///')}" in one_line(e)
    assert main(["unlock", url]) == 0 and "does not name its holder" in capsys.readouterr().err
    assert actstore.ingest("addition", model, 16, 0, url, **KW).finished
    fsspec.filesystem("memory").rm(url.removeprefix("memory:/").removesuffix("/store"), recursive=True)
