"""Sharded ingest (actstore.ingest.shards, actstore.ingest.cluster): disjoint chunks of one store.

Two shard processes started by hand make a store byte-identical, file by file, to a single-process
ingest; a killed shard's chunks are redone by its rerun; two processes of one shard refuse each
other, shards of one store do not; `workers=2` runs the shards on a real Dask LocalCluster.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from crash_driver import ARGS
from helpers import tree_bytes
from tiny_models import tiny_model

import actstore
from actstore.errors import IncompleteStoreWarning, InvalidParameterError, StoreLockedError
from actstore.ingest.shards import parse_shard, shard_chunks, writer_locks
from actstore.store.verify import verify
from actstore.store.writer import KILL_ENV

DRIVER = Path(__file__).with_name("shard_driver.py")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("ref") / "store"
    actstore.ingest(model=tiny_model("addition"), out=out, **ARGS)
    return tree_bytes(out)


def start_shard(out: Path, shard: str, kill: str | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(DRIVER.parent), os.environ.get("PYTHONPATH", "")]))
    env.pop(KILL_ENV, None)
    if kill:
        env[KILL_ENV] = kill
    return subprocess.Popen([sys.executable, str(DRIVER), str(out), "--shard", shard], env=env,
                            stderr=subprocess.PIPE)


def wait(proc: subprocess.Popen) -> int:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode in (0, -signal.SIGKILL), err.decode()
    return proc.returncode


def test_two_shards_by_hand_make_the_single_process_store(tmp_path, reference) -> None:
    out = tmp_path / "store"
    procs = [start_shard(out, "0/2"), start_shard(out, "1/2")]  # both at once: one creates, the other reuses
    assert [wait(p) for p in procs] == [0, 0]
    assert tree_bytes(out) == reference  # every file, records included; no lock file left beside it
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".lock")]


@pytest.mark.slow  # two more subprocesses (the by-hand test above runs by default)
def test_a_killed_shard_is_redone_by_its_rerun(tmp_path, reference) -> None:
    out = tmp_path / "store"
    assert wait(start_shard(out, "0/2")) == 0
    assert wait(start_shard(out, "1/2", kill="3:arrays")) == -signal.SIGKILL  # chunk 3 is shard 1's second
    with pytest.warns(IncompleteStoreWarning):
        partial = actstore.open_store(out)
    assert partial.n_examples == 3 * ARGS["chunk"]  # chunks 0, 1, 2 in a row; 4, 6, ... after the gap do not count
    assert not verify(out).ok
    assert wait(start_shard(out, "1/2")) == 0
    assert tree_bytes(out) == reference


def test_a_plain_rerun_finishes_what_shards_left(tmp_path, reference) -> None:
    out = tmp_path / "store"
    actstore.ingest(model=tiny_model("addition"), out=out, **ARGS, shard="1/3")
    store = actstore.ingest(model=tiny_model("addition"), out=out, **ARGS)
    assert store.finished and tree_bytes(out) == reference


def test_one_shard_twice_is_refused_other_shards_are_not(tmp_path) -> None:
    out = tmp_path / "store"
    with writer_locks(out, (0, 2)):
        with pytest.raises(StoreLockedError, match=r"another process writes shard 0/2 of"):
            actstore.ingest(model=tiny_model("addition"), out=out, **ARGS, shard="0/2")
        with pytest.raises(StoreLockedError, match=r"another ingest is writing"):
            actstore.ingest(model=tiny_model("addition"), out=out, **ARGS)  # a plain ingest waits for no shard
        store = actstore.ingest(model=tiny_model("addition"), out=out, **ARGS, shard="1/2")
        assert not store.finished and store.n_examples == 0  # chunk 0 is shard 0's
    with writer_locks(out, (0, 1)), pytest.raises(StoreLockedError, match=r"another ingest is writing"):
        actstore.ingest(model=tiny_model("addition"), out=out, **ARGS, shard="0/2")


@pytest.mark.parametrize("shard, message", [("2/2", "0 <= I < N"), ("1-2", "must be I/N"), ((0, 0), "0 <= I < N")])
def test_bad_shards_are_refused(shard, message) -> None:
    with pytest.raises(InvalidParameterError, match=message):
        parse_shard(shard)


def test_shard_chunks_and_overwrite() -> None:
    assert shard_chunks(10, (1, 3)) == [1, 4, 7] and shard_chunks(10, (0, 1)) == list(range(10))
    with pytest.raises(InvalidParameterError, match="--overwrite cannot be used with --shard"):
        actstore.ingest(model=tiny_model("addition"), out="unused", **ARGS, shard="0/2", overwrite=True)


@pytest.mark.usefixtures("cluster_guard")  # a stalled cluster fails with every stack (tests/dask_guard.py)
def test_workers_on_a_local_cluster(tmp_path) -> None:
    """Two Dask worker processes each load zoo:addition from its spec and write one shard."""
    from actstore.ingest.cluster import ingest_on_cluster

    args = dict(task="addition", n=80, seed=3, chunk=16, batch=16, quiet=True)
    single = actstore.ingest(model="zoo:addition", out=tmp_path / "single", **args)
    store = ingest_on_cluster(model="zoo:addition", out=tmp_path / "cluster", workers=2,
                              **{k: v for k, v in args.items() if k != "quiet"})
    assert store.finished and store.n_examples == 80
    assert tree_bytes(tmp_path / "cluster") == tree_bytes(single.path)
    with pytest.raises(InvalidParameterError, match="each worker loads the model from its spec"):
        ingest_on_cluster(model=tiny_model("addition"), out=tmp_path / "x", workers=2, **args)
