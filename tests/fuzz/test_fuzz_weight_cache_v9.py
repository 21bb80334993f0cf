"""Issue 14's weight cache changes (a stamp that moved in ctime and link count only is used unread; linking relative
to open directory fds) against what could break them: an in-place edit of a hard-linked params chunk through a
store, same size, mtime put back with os.utime, with and without a store deleted after it; a symlink planted in
the cache entry; a kill in the middle of linking a new store's params/ (a real SIGKILL in a second interpreter).
Every store made after them either reads the model's own weights, bit for bit, or is refused on every read."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "ingest"))
from helpers import tree_bytes  # noqa: E402
from tiny_models import tiny_model  # noqa: E402

import actstore  # noqa: E402
from actstore.cli import main as cli_main  # noqa: E402
from actstore.errors import StoreCorruptError  # noqa: E402
from actstore.ingest.model_info import params_dict  # noqa: E402
from actstore.store.verify import verify  # noqa: E402
from actstore.store import weight_cache  # noqa: E402
from actstore.store.weight_cache import ENV  # noqa: E402

KW = dict(chunk=32, batch=16, quiet=True, model_spec="tiny:addition", hooks=["blocks.0.hook_resid_pre"])
ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def model():
    return tiny_model("addition", seed=5)


def _ingest(model, out: Path):
    return actstore.ingest("addition", model, 32, 1, out, **KW)


def _chunk(store_path: Path) -> Path:
    """A weight chunk file of the store (hard-linked from the cache entry)."""
    return store_path / "params/blocks.0.attn.W_V/c.0.0.0"


def _edit_in_place(path: Path, put_mtime_back: bool) -> None:
    """Flip one bit in the middle of `path`, through this link, size kept; optionally put its mtime back."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(st.st_size // 2)
        byte = f.read(1)[0]
        f.seek(st.st_size // 2)
        f.write(bytes([byte ^ 1]))
    if put_mtime_back:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _reads_the_models_weights(store, model) -> bool:
    """True where every weight reads back bit for bit as the model's; False where reading it is refused
    (StoreCorruptError); a weight read back with other values fails the test at once (silently wrong)."""
    want = params_dict(model)
    try:
        got = {name: store.param(name) for name in store.param_names}
    except StoreCorruptError:
        return False
    for name, value in want.items():
        assert np.array_equal(np.asarray(got[name], np.float32).view(np.uint32),
                              np.asarray(value, np.float32).view(np.uint32)), f"{name}: a wrong weight read back"
    return True


@pytest.mark.parametrize("put_mtime_back, delete", [(False, False), (True, False), (False, True)])
def test_an_edit_through_a_store_is_caught_by_the_next_ingest(model, tmp_path, put_mtime_back, delete):
    """Edited in place through store a (and a then deleted, or not): the next store reads the model's weights."""
    a = _ingest(model, tmp_path / "a").path
    _edit_in_place(_chunk(a), put_mtime_back)
    if delete:
        shutil.rmtree(a)
    b = _ingest(model, tmp_path / "b")
    assert _reads_the_models_weights(b, model)
    assert verify(b.path).passed
    assert _chunk(b.path).stat().st_nlink == 2  # linked from the rebuilt entry, not copied
    if not delete:
        assert not _reads_the_models_weights(actstore.open_store(a), model)  # a keeps its edited chunk, refused


def test_an_edit_with_its_mtime_put_back_then_a_deletion_is_caught_by_some_later_ingest(model, tmp_path):
    """Finding V9-1: edited through a with the mtime put back, a deleted (a ctime and link-count move, accepted
    unread): the stores made after it, each deleted before the next, are refused on their reads (never silently
    wrong) until the check's audit (one in AUDIT files a check, in turn) reads the chunk, removes the entry and
    rebuilds it, within AUDIT ingests; every store from then on reads the model's weights."""
    a = _ingest(model, tmp_path / "a").path
    _edit_in_place(_chunk(a), put_mtime_back=True)
    shutil.rmtree(a)
    healed = None
    for k in range(weight_cache.AUDIT + 2):
        b = _ingest(model, tmp_path / f"b{k}")
        ok = _reads_the_models_weights(b, model)
        assert ok or not verify(b.path).passed  # never silently wrong: refused, and verify says so
        if healed is not None:
            assert ok
        elif ok:
            healed = k
        shutil.rmtree(b.path)
    assert healed is not None and healed <= weight_cache.AUDIT


def test_a_symlink_planted_in_the_entry_is_not_followed(model, tmp_path):
    """A directory of the cache entry swapped for a symlink to a look-alike elsewhere: the entry is rebuilt, the
    new store holds real files with the model's weights, and nothing under the symlink's target changes."""
    cache = Path(os.environ[ENV])
    a = _ingest(model, tmp_path / "a").path
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    victim = entry / "params/blocks.0.attn.W_V"
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(victim, elsewhere)
    before = tree_bytes(elsewhere)
    shutil.rmtree(victim)
    victim.symlink_to(elsewhere, target_is_directory=True)
    shutil.rmtree(a)
    b = _ingest(model, tmp_path / "b")
    assert _reads_the_models_weights(b, model) and verify(b.path).passed
    assert not any(p.is_symlink() for p in b.path.rglob("*"))
    assert not victim.is_symlink()  # rebuilt
    assert tree_bytes(elsewhere) == before and all(p.stat().st_nlink == 1 for p in elsewhere.rglob("*") if p.is_file())


KILL = r'''
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from tiny_models import tiny_model
import actstore
links = [0]
real = os.link
def link(*a, **k):
    links[0] += 1
    if links[0] == 7:  # in the middle of a new store's params/ (the entry's own build copies, never links)
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*a, **k)
os.link = link
actstore.ingest("addition", tiny_model("addition", seed=5), 32, 1, sys.argv[2], chunk=32, batch=16, quiet=True,
                model_spec="tiny:addition", hooks=["blocks.0.hook_resid_pre"])
sys.exit(3)
'''


def test_a_kill_while_linking_leaves_nothing_the_next_ingest_or_verify_mishandles(model, tmp_path, capsys):
    """SIGKILL at the 7th link of b's params/ (the entry built and linked once by a): b then ingests to the same
    bytes as a store made in one go, every read checked, its leftover gone; the entry is not rebuilt."""
    a = _ingest(model, tmp_path / "a").path
    run = subprocess.run([sys.executable, "-c", KILL, str(Path(__file__).parents[1] / "ingest"), str(tmp_path / "b")],
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    assert not (tmp_path / "b").exists()  # the half-made store is beside it, never published
    assert any(p.name.startswith(".b.creating") for p in tmp_path.iterdir())
    capsys.readouterr()
    code = cli_main(["verify", str(tmp_path / "b")])  # `actstore verify` says so in one line
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    b = _ingest(model, tmp_path / "b")
    assert _reads_the_models_weights(b, model) and verify(b.path).passed
    assert tree_bytes(b.path) == tree_bytes(a)
    assert _chunk(b.path).stat().st_ino == _chunk(a).stat().st_ino  # linked from the same entry
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["a", "b"]


def test_an_entry_swapped_for_a_symlink_to_a_damaged_copy_is_neither_used_nor_emptied(model, tmp_path):
    """The whole entry directory replaced by a symlink to a copy of it whose chunk was edited (mtime put back) and
    whose store then went: the next store reads the model's weights, and the copy behind the symlink keeps its
    files (nothing is removed through the link)."""
    cache = Path(os.environ[ENV])
    a = _ingest(model, tmp_path / "a").path
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(entry, elsewhere, copy_function=os.link)  # the same inodes: a's links see the copy's files
    shutil.rmtree(entry)
    entry.symlink_to(elsewhere, target_is_directory=True)
    _edit_in_place(_chunk(a), put_mtime_back=True)
    before = tree_bytes(elsewhere)
    shutil.rmtree(a)
    b = _ingest(model, tmp_path / "b")
    assert _reads_the_models_weights(b, model) and verify(b.path).passed
    assert tree_bytes(elsewhere) == before
