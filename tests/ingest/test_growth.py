"""Growing a store: a larger --n on a store of the same run appends examples (actstore.ingest.grow).

The grown store's arrays, parts and metadata are byte-identical to a direct ingest at the larger n; only
the records that name the store record differ (the old chunks' commit records name the old one, which
the new store record lists in `previous`). A crash anywhere in the growth leaves a store that reads as
before or is refused with one line, and the same ingest rerun finishes it.
"""

from __future__ import annotations

import json
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
from actstore.errors import StoreCorruptError, StoreExistsError
from actstore.ingest.grow import KILL_ENV
from actstore.store.verify import verify

DRIVER = Path(__file__).with_name("shard_driver.py")
SMALL, BIG = 40, 100  # chunk 16: the small store's last chunk [32, 40) is partial and is redone
RECORDS = "_commits/"


def ingest(out: Path, n: int, **kw) -> actstore.Store:
    return actstore.ingest(model=tiny_model("addition"), out=out, **{**ARGS, "n": n, **kw})


@pytest.fixture(scope="module")
def direct(tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("direct") / "store"
    ingest(out, BIG)
    return tree_bytes(out)


def check_grown(out: Path, direct: dict[str, bytes]) -> None:
    got = tree_bytes(out)
    assert sorted(got) == sorted(direct)
    differ = sorted(k for k in got if got[k] != direct[k])
    # every array chunk, part and zarr.json is the same; the old chunks' records name the old store record
    assert all(k.startswith(RECORDS) for k in differ), differ
    # the records differ only in the store record they name (which lists its predecessor)
    for k in differ:
        mine, theirs = json.loads(got[k]), json.loads(direct[k])
        if k == "_commits/store.json":
            assert mine.pop("previous") and mine == theirs
        elif k != "_commits/complete.json":
            assert mine.pop("store") != theirs.pop("store") and mine == theirs, k
    store = actstore.open_store(out)
    assert store.finished and store.n_examples == BIG and store.manifest.n == BIG
    assert store.examples["example_id"].to_list() == list(range(BIG))
    assert len(json.loads(got["_commits/store.json"])["previous"]) == 1
    report = verify(out)
    assert report.ok, report.lines()


def test_growing_matches_a_direct_ingest(tmp_path, direct) -> None:
    out = tmp_path / "store"
    small = ingest(out, SMALL)
    first = small.examples
    grown = ingest(out, BIG)
    assert grown.examples.head(SMALL).equals(first)  # the first examples are the same examples
    check_grown(out, direct)
    assert ingest(out, BIG).n_examples == BIG  # a rerun at the grown n is a no-op resume


def test_growing_twice_keeps_every_earlier_record(tmp_path, direct) -> None:
    out = tmp_path / "store"
    ingest(out, 20)  # chunk 16: [16, 20) partial
    ingest(out, SMALL)
    ingest(out, BIG)
    record = json.loads((out / "_commits/store.json").read_bytes())
    assert len(record["previous"]) == 2
    got = tree_bytes(out)
    assert all(got[k] == v for k, v in direct.items() if not k.startswith(RECORDS))
    assert verify(out).ok


def test_smaller_n_and_other_runs_are_refused(tmp_path) -> None:
    out = tmp_path / "store"
    ingest(out, SMALL)
    before = tree_bytes(out)
    with pytest.raises(StoreExistsError, match=r"holds 40 examples of this run; --n 30 is smaller"):
        ingest(out, 30)
    with pytest.raises(StoreExistsError, match=r"another run \(differs in: .*seed"):
        ingest(out, BIG, seed=5)
    assert tree_bytes(out) == before


def run_driver(out: Path, n: int, kill: str | None = None) -> int:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(DRIVER.parent), os.environ.get("PYTHONPATH", "")]))
    env.pop(KILL_ENV, None)
    if kill:
        env[KILL_ENV] = kill
    proc = subprocess.run([sys.executable, str(DRIVER), str(out), "--n", str(n)], env=env, capture_output=True,
                          timeout=300)
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr.decode()
    return proc.returncode


# one kill point by default (80-90 s each at load 12): the other phases take the same refuse-then-finish path
@pytest.mark.parametrize("phase", ["intent", pytest.param("arrays", marks=pytest.mark.slow),
                                   pytest.param("manifest", marks=pytest.mark.slow),
                                   pytest.param("record", marks=pytest.mark.slow)])
def test_a_growth_killed_midway_is_refused_then_finished_by_a_rerun(tmp_path, direct, phase) -> None:
    out = tmp_path / "store"
    ingest(out, SMALL)
    assert run_driver(out, BIG, kill=phase) == -signal.SIGKILL
    with pytest.raises(StoreCorruptError, match=r"was growing it .* rerun that ingest to finish"):
        actstore.open_store(out)
    with pytest.raises(StoreExistsError, match=r"was being grown to n=100 .* rerun that ingest \(--n 100\)"):
        ingest(out, 60)
    ingest(out, BIG)  # the same ingest finishes the growth, then writes the new chunks
    check_grown(out, direct)


def test_shards_grow_a_finished_store_but_not_an_unfinished_one(tmp_path, direct) -> None:
    out = tmp_path / "store"
    ingest(out, SMALL)
    ingest(out, BIG, shard="0/2")  # the first shard to arrive grows it, the second finds it grown
    ingest(out, BIG, shard="1/2")
    check_grown(out, direct)
    other = tmp_path / "other"
    ingest(other, SMALL, shard="0/2")  # shard 1 of the 40-example run has not written yet
    with pytest.raises(StoreExistsError, match=r"a shard grows only a finished store"):
        ingest(other, BIG, shard="1/2")
