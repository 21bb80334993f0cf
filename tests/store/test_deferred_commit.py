"""ChunkWriter(defer_commit=True): a chunk's fsync, digests and commit record run on a committer thread,
in chunk order, and the store it makes is byte-identical to one written with inline commits; a failed
commit is raised by the next write_chunk or by flush()."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import tree_bytes
from synthetic_store import CHUNK, N, synthetic_manifest, synthetic_meta, synthetic_values, write_synthetic

import actstore
from actstore.store.commits import commit_path
from actstore.store.writer import ChunkWriter, create_store


def deferred_writer(path: Path) -> ChunkWriter:
    m = synthetic_manifest()
    params = {"embed.W_E": np.arange(18, dtype=np.float32).reshape(3, 6), "blocks.0.attn.W_O": np.ones((2, 3, 6))}
    create_store(path, m, params)
    return ChunkWriter(path, m, defer_commit=True)


def write(w: ChunkWriter, k: int) -> int:
    start, stop = k * CHUNK, min(k * CHUNK + CHUNK, N)
    return w.write_chunk(k, {h: v[start:stop] for h, v in synthetic_values().items()}, synthetic_meta(start, stop))


def finish_like(w: ChunkWriter, path: Path, ref: Path) -> None:
    """Finish `w`'s store at `path` and check it holds the same files as `ref` and reads back finished."""
    w.finish()
    w.close()
    assert tree_bytes(path) == tree_bytes(ref)
    store = actstore.open_store(path)
    z = "blocks.0.attn.hook_z"
    assert store.finished and np.array_equal(store.read(z), synthetic_values()[z])


def test_deferred_commits_make_the_same_bytes_in_order(tmp_path):
    ref = write_synthetic(tmp_path / "ref")
    w = deferred_writer(tmp_path / "s")
    sizes = []
    for k in range(3):
        sizes.append(write(w, k))
        assert all(commit_path(w.root, j).exists() for j in range(k))  # every earlier chunk is committed
    w.flush()
    assert commit_path(w.root, 2).exists()
    finish_like(w, tmp_path / "s", ref)
    chunk_files = [p for d in ("acts", "meta") for p in (tmp_path / "s" / d).rglob("*")
                   if p.is_file() and p.name != "zarr.json"]
    assert sum(sizes) == sum(p.stat().st_size for p in chunk_files)  # the bytes of its chunk files and parts


def test_a_failed_commit_is_raised_and_leaves_it_uncommitted(tmp_path):
    w = deferred_writer(tmp_path / "s")
    commit_path(w.root, 1).mkdir(parents=True)  # the record's place is taken: its atomic replace fails
    write(w, 0)
    write(w, 1)
    with pytest.raises(OSError):
        w.flush()
    w.close()
    assert commit_path(w.root, 0).is_file() and commit_path(w.root, 1).is_dir()
    commit_path(w.root, 1).rmdir()
    with pytest.warns(actstore.errors.IncompleteStoreWarning):
        assert actstore.open_store(tmp_path / "s").n_examples == CHUNK


def test_a_failed_commit_is_raised_by_the_next_write(tmp_path):
    w = deferred_writer(tmp_path / "s")
    commit_path(w.root, 0).mkdir(parents=True)
    write(w, 0)
    with pytest.raises(OSError):
        write(w, 1)
    w.close()
    assert not commit_path(w.root, 1).exists()


def test_parts_given_as_their_bytes_make_the_same_store(tmp_path):
    """write_chunk takes a meta table's part_bytes (what ingest makes ahead) as well as its frame: same files,
    same commit records."""
    from actstore.store.parts import part_bytes

    ref = write_synthetic(tmp_path / "ref")
    w = deferred_writer(tmp_path / "s")
    for k in range(3):
        start, stop = k * CHUNK, min(k * CHUNK + CHUNK, N)
        meta = {t: part_bytes(f) if t != "outputs" else f for t, f in synthetic_meta(start, stop).items()}
        w.write_chunk(k, {h: v[start:stop] for h, v in synthetic_values().items()}, meta)
    w.flush()
    finish_like(w, tmp_path / "s", ref)
