"""The weight cache (actstore.store.weight_cache): params/ linked from one entry per weights digest is byte-identical
to params/ written directly and verifies; a damaged entry is detected and rebuilt, never used (also when its
mtime was put back); deleting a store that linked an entry costs no re-hash of its weights; a store copied
away keeps its weights; a model edited in place after hashing is hashed again."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "ingest"))
from helpers import tree_bytes  # noqa: E402
from tiny_models import tiny_model  # noqa: E402

import actstore  # noqa: E402
from actstore.errors import StoreCorruptError  # noqa: E402
from actstore.ingest.model_info import weights_digest  # noqa: E402
from actstore.store.integrity import weights_sha256  # noqa: E402
from actstore.store.verify import verify  # noqa: E402
from actstore.store import weight_cache  # noqa: E402
from actstore.store.weight_cache import ENV, RECORD  # noqa: E402

KW = dict(hooks=["blocks.0.hook_resid_pre"], chunk=16, batch=8, quiet=True)


@pytest.fixture(scope="module")
def model():
    return tiny_model("addition")


def entry_of(cache: Path) -> Path:
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    return entry


def test_linked_params_equal_params_written_directly(model, tmp_path, monkeypatch):
    cache = Path(os.environ[ENV])
    a = actstore.ingest("addition", model, 20, 0, tmp_path / "a", **KW).path
    b = actstore.ingest("addition", model, 20, 1, tmp_path / "b", **KW).path
    monkeypatch.setenv(ENV, "off")
    direct = actstore.ingest("addition", model, 20, 0, tmp_path / "direct", **KW).path
    assert tree_bytes(a / "params") == tree_bytes(direct / "params") == tree_bytes(b / "params")
    assert (a / "_commits/store.json").read_bytes() == (direct / "_commits/store.json").read_bytes()
    chunk = a / "params/embed.W_E/c.0.0"
    assert chunk.stat().st_nlink == 3 and chunk.stat().st_ino == (b / "params/embed.W_E/c.0.0").stat().st_ino
    assert direct.joinpath("params/embed.W_E/c.0.0").stat().st_nlink == 1
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 1
    for s in (a, b, direct):
        assert verify(s).passed


@pytest.mark.parametrize("how", ["in place", "in place, mtime put back", "replaced"])
def test_a_damaged_entry_is_detected_and_rebuilt(model, tmp_path, how):
    cache = Path(os.environ[ENV])
    first = actstore.ingest("addition", model, 20, 0, tmp_path / "first", **KW).path
    victim = entry_of(cache) / "params/blocks.0.attn.W_O/c.0.0.0"
    data = bytearray(victim.read_bytes())
    data[20] ^= 0xFF  # inside the blosc payload: the crc32c tail and the size stay as recorded
    if how.startswith("in place"):  # every store linking the file sees it too, and its reads say so
        was = victim.stat()
        with open(victim, "r+b") as f:
            f.write(bytes(data))
        if how.endswith("put back"):  # only the ctime tells: the crc32c check of the bytes catches it
            os.utime(victim, ns=(was.st_atime_ns, was.st_mtime_ns))
            assert victim.stat().st_mtime_ns == was.st_mtime_ns and victim.stat().st_ino == was.st_ino
    else:  # a new file under the same name: the stores keep their own inode
        tmp = victim.with_name("x")
        tmp.write_bytes(bytes(data))
        os.replace(tmp, victim)
    second = actstore.ingest("addition", model, 20, 0, tmp_path / "second", **KW)
    assert verify(second.path).passed
    np.testing.assert_array_equal(second.param("blocks.0.attn.W_O"), model.blocks[0].attn.W_O.detach().numpy())
    assert entry_of(cache).joinpath("params/blocks.0.attn.W_O/c.0.0.0").read_bytes() != bytes(data)
    assert verify(first).passed == (how == "replaced")


def _audit_share(cache: Path) -> int:
    """The most files a check reads again of those it accepts on a link-count move (one in AUDIT, in turn)."""
    files = json.loads((entry_of(cache) / weight_cache.RECORD).read_text())["files"]
    return -(-len(files) // weight_cache.AUDIT)


def test_deleting_a_linked_store_costs_no_rehash_of_the_weights(model, tmp_path):
    cache = Path(os.environ[ENV])
    first = actstore.ingest("addition", model, 20, 0, tmp_path / "first", **KW).path
    chunk = entry_of(cache) / "params/embed.W_E/c.0.0"
    was = chunk.stat()
    shutil.rmtree(first)  # unlinking changes the shared inode's ctime and nothing else
    assert chunk.stat().st_ctime_ns != was.st_ctime_ns or chunk.stat().st_nlink != was.st_nlink
    before = weight_cache.files_read()
    second = actstore.ingest("addition", model, 20, 0, tmp_path / "second", **KW).path
    # only ctimes and link counts moved: no file read again but the audit's share (one in AUDIT, in turn)
    assert 0 < weight_cache.files_read() - before <= _audit_share(cache)
    assert (second / "params/embed.W_E/c.0.0").stat().st_ino == was.st_ino  # the entry was used, not rebuilt
    assert verify(second).passed
    shutil.rmtree(second)  # the stamps recorded after linking `second`: deleting it again reads the next share only
    before = weight_cache.files_read()
    third = actstore.ingest("addition", model, 20, 1, tmp_path / "third", **KW).path
    assert 0 < weight_cache.files_read() - before <= _audit_share(cache) and verify(third).passed


def test_the_audit_reads_every_file_accepted_on_link_moves_within_its_turns(model, tmp_path, monkeypatch):
    """AUDIT ingests, each after the last store's deletion, read every file of the entry once between them."""
    cache = Path(os.environ[ENV])
    read: list[str] = []
    real = weight_cache._crc_matches
    monkeypatch.setattr(weight_cache, "_crc_matches", lambda path, want: read.append(str(path)) or real(path, want))
    last = actstore.ingest("addition", model, 20, 0, tmp_path / "s0", **KW).path
    entry = entry_of(cache)
    files = json.loads((entry / weight_cache.RECORD).read_text())["files"]
    chunks = {str(entry / "params" / rel) for rel, d in files.items() if len(d) == 3}
    for k in range(1, weight_cache.AUDIT + 1):
        shutil.rmtree(last)
        last = actstore.ingest("addition", model, 20, 0, tmp_path / f"s{k}", **KW).path
    assert set(read) == chunks and len(read) == len(chunks)  # each chunk once, none twice


def _edit_in_place(victim: Path) -> tuple[os.stat_result, bytes]:
    """Flip a byte inside the blosc payload of the chunk file `victim` (size and crc32c tail as recorded), in place,
    with its mtime put back: only its ctime tells."""
    was = victim.stat()
    data = bytearray(victim.read_bytes())
    data[20] ^= 0xFF
    with open(victim, "r+b") as f:
        f.write(bytes(data))
    os.utime(victim, ns=(was.st_atime_ns, was.st_mtime_ns))
    now = victim.stat()
    assert (now.st_ino, now.st_size, now.st_mtime_ns, now.st_nlink) == (was.st_ino, was.st_size, was.st_mtime_ns,
                                                                          was.st_nlink)
    return was, bytes(data)


def test_an_edit_through_a_store_with_its_mtime_put_back_is_caught(model, tmp_path):
    """A write into a store's params/ file in place moves the shared inode's ctime with its link count unchanged:
    the next ingest reads the file again and rebuilds the entry, never links the edited bytes."""
    first = actstore.ingest("addition", model, 20, 0, tmp_path / "first", **KW).path
    shutil.rmtree(actstore.ingest("addition", model, 20, 1, tmp_path / "other", **KW).path)
    third = actstore.ingest("addition", model, 20, 2, tmp_path / "third", **KW).path  # stamps after the deletion
    was, _ = _edit_in_place(first / "params/blocks.0.attn.W_O/c.0.0.0")
    before = weight_cache.files_read()
    second = actstore.ingest("addition", model, 20, 0, tmp_path / "second", **KW)
    assert weight_cache.files_read() > before
    np.testing.assert_array_equal(second.param("blocks.0.attn.W_O"), model.blocks[0].attn.W_O.detach().numpy())
    assert (second.path / "params/blocks.0.attn.W_O/c.0.0.0").stat().st_ino != was.st_ino  # a rebuilt entry's
    assert verify(second.path).passed and not verify(first).passed and not verify(third).passed


def test_an_edit_hidden_behind_a_deleted_store_still_fails_every_read(model, tmp_path):
    """The stamp check's known gap (weight_cache.py): an in-place edit with its mtime put back, and a store linking
    the file deleted before the next ingest, moves ctime and link count as the deletion alone would; the new store
    links the edited bytes unread, and every read of that weight says so (its crc32c), as does verify."""
    first = actstore.ingest("addition", model, 20, 0, tmp_path / "first", **KW).path
    other = actstore.ingest("addition", model, 20, 1, tmp_path / "other", **KW).path
    _edit_in_place(first / "params/blocks.0.attn.W_O/c.0.0.0")
    shutil.rmtree(other)
    second = actstore.ingest("addition", model, 20, 0, tmp_path / "second", **KW)
    with pytest.raises(StoreCorruptError, match="blocks.0.attn.W_O"):
        second.param("blocks.0.attn.W_O")
    assert not verify(second.path).passed


def test_an_unreadable_record_is_rebuilt(model, tmp_path):
    cache = Path(os.environ[ENV])
    actstore.ingest("addition", model, 20, 0, tmp_path / "first", **KW)
    (entry_of(cache) / RECORD).write_text("{not json")
    assert verify(actstore.ingest("addition", model, 20, 0, tmp_path / "second", **KW).path).passed


def test_a_copied_store_keeps_its_weights(model, tmp_path):
    cache = Path(os.environ[ENV])
    store = actstore.ingest("addition", model, 20, 0, tmp_path / "s", **KW).path
    shutil.copytree(store, tmp_path / "copy")
    shutil.rmtree(store)
    shutil.rmtree(cache)
    assert verify(tmp_path / "copy").passed


def test_an_unusable_cache_falls_back_to_writing_params(model, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv(ENV, str(blocker / "cache"))
    store = actstore.ingest("addition", model, 20, 0, tmp_path / "s", **KW)
    assert verify(store.path).passed and store.path.joinpath("params/embed.W_E/c.0.0").stat().st_nlink == 1


def test_an_entry_no_store_links_is_pruned_by_other_weights(tmp_path):
    cache = Path(os.environ[ENV])
    first = actstore.ingest("addition", tiny_model("addition", seed=1), 20, 0, tmp_path / "a", **KW).path
    old = entry_of(cache).name
    shutil.rmtree(first)
    actstore.ingest("addition", tiny_model("addition", seed=2), 20, 0, tmp_path / "b", **KW)
    assert entry_of(cache).name != old


def test_a_model_edited_in_place_after_hashing_is_hashed_again(tmp_path):
    model = tiny_model("addition", seed=3)

    def fresh() -> str:
        return weights_sha256((n, p.detach().numpy()) for n, p in sorted(model.named_parameters()))

    before = weights_digest(model)
    with torch.no_grad():
        model.blocks[1].attn.W_O[0, 0, 0] += 1.0  # through the parameter: its version counter moves
    assert weights_digest(model) == fresh() != before
    edited = weights_digest(model)
    model.blocks[0].attn.W_V.data[1] = 0.0  # through .data: the counter stays, the value sample moves
    assert weights_digest(model) == fresh() != edited
    store = actstore.ingest("addition", model, 20, 0, tmp_path / "s", **KW)
    assert store.manifest.weights_sha256 == fresh() and verify(store.path).passed
    np.testing.assert_array_equal(store.param("blocks.0.attn.W_V")[1], 0.0)


def test_params_with_the_old_slash_chunk_keys_still_open_verify_and_read(model, tmp_path, monkeypatch):
    """Stores made before LAYOUT 2 keep their weights under c/0/0 directories: they open, verify and read the same
    weights as a store of today's layout (c.0.0 files, one directory per weight)."""
    monkeypatch.setenv(ENV, "off")
    new = actstore.ingest("addition", model, 20, 0, tmp_path / "new", **KW)
    write = weight_cache.write_params

    def slash_keys(folder, params, codec):  # what write_params wrote before LAYOUT 2
        write(folder, params, codec)
        for name in params:
            arr = folder / name
            meta = json.loads((arr / "zarr.json").read_text())
            meta["chunk_key_encoding"]["configuration"]["separator"] = "/"
            (arr / "zarr.json").write_text(json.dumps(meta))
            (chunk,) = arr.glob("c.*")
            leaf = arr.joinpath(*chunk.name.split("."))
            leaf.parent.mkdir(parents=True)
            chunk.rename(leaf)

    monkeypatch.setattr(weight_cache, "write_params", slash_keys)
    old = actstore.ingest("addition", model, 20, 0, tmp_path / "old", **KW)
    assert (old.path / "params/embed.W_E/c/0/0").is_file() and (new.path / "params/embed.W_E/c.0.0").is_file()
    assert not (new.path / "params/embed.W_E/c").exists()
    assert verify(old.path).passed and verify(new.path).passed
    reopened = actstore.open_store(old.path)
    for name in ("embed.W_E", "blocks.0.attn.W_Q", "unembed.W_U"):
        np.testing.assert_array_equal(reopened.param(name), new.param(name))
        assert reopened.param(name).tobytes() == model.state_dict()[name].float().numpy().tobytes()
