"""SIGKILL an ingest subprocess at several points, resume it, and compare with an uninterrupted run.

The resumed store must be byte-identical to the uninterrupted one (every file), with every
example exactly once. Each killed run is a fresh Python process (about 8 s here, mostly
imports), so only one kill point runs by default; the full set is marked slow.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from crash_driver import ARGS
from helpers import tree_bytes
from tiny_models import tiny_model

import actstore
from actstore.store.writer import KILL_ENV

DRIVER = Path(__file__).with_name("crash_driver.py")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("ref") / "store"
    actstore.ingest(model=tiny_model("addition"), out=out, **ARGS)
    return tree_bytes(out)


def run_driver(out: Path, kill: str | None = None, kill_after_s: float | None = None) -> int:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(DRIVER.parent), os.environ.get("PYTHONPATH", "")]))
    env.pop(KILL_ENV, None)
    if kill:
        env[KILL_ENV] = kill
    proc = subprocess.Popen([sys.executable, str(DRIVER), str(out)], env=env, stderr=subprocess.PIPE)
    if kill_after_s is not None:
        # wait until the ingest is under way, then kill it mid-chunk; a fresh Python's imports took over 120 s
        # at load 15-20, so the wait is long and, if it runs out, fails instead of killing the store's creation
        deadline = time.monotonic() + 600
        while not (out / "_commits" / "00002.json").exists() and proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"the ingest committed no chunk 2 in 600 s: {proc.communicate()[1].decode()}")
            time.sleep(0.01)
        time.sleep(kill_after_s)
        proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(err.decode())
    return proc.returncode


def resume_and_compare(out: Path, reference: dict[str, bytes], committed_at_most: int) -> None:
    partial = actstore.open_store(out)
    assert partial.n_examples <= committed_at_most
    assert partial.examples["example_id"].to_list() == list(range(partial.n_examples))
    store = actstore.ingest(model=tiny_model("addition"), out=out, **ARGS)  # the same call resumes
    assert store.n_examples == ARGS["n"]
    assert store.examples["example_id"].to_list() == list(range(ARGS["n"]))
    assert store.outputs["example_id"].to_list() == [e for e in range(ARGS["n"]) for _ in range(4)]
    got = tree_bytes(out)
    assert sorted(got) == sorted(reference)
    assert [k for k in got if got[k] != reference[k]] == []


def test_kill_before_a_commit_then_resume(tmp_path, reference):
    out = tmp_path / "store"
    assert run_driver(out, kill="3:meta") == -signal.SIGKILL
    assert not (out / "_commits" / "00003.json").exists() and (out / "meta/outputs/part-00003.parquet").exists()
    resume_and_compare(out, reference, committed_at_most=48)


@pytest.mark.slow
@pytest.mark.parametrize("kill, committed", [("0:arrays", 0), ("4:arrays", 64), ("2:commit", 48), ("9:commit", 150)])
def test_kill_at_each_phase_then_resume(tmp_path, reference, kill, committed):
    out = tmp_path / "store"
    assert run_driver(out, kill=kill) == -signal.SIGKILL
    assert actstore.open_store(out).n_examples == committed
    resume_and_compare(out, reference, committed_at_most=committed)


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.05, 0.2])
def test_timed_kill_then_resume(tmp_path, reference, delay):
    out = tmp_path / "store"
    run_driver(out, kill_after_s=delay)
    resume_and_compare(out, reference, committed_at_most=ARGS["n"])


def test_kill_during_creation_leaves_nothing(tmp_path, reference):
    """A crash while the store is being created leaves only a hidden temp dir, removed by the rerun."""
    out = tmp_path / "store"
    hidden = tmp_path / ".store.creating-99999999"  # left by a process that died
    hidden.mkdir()
    (hidden / "zarr.json").write_text("{}")  # a half-made skeleton
    store = actstore.ingest(model=tiny_model("addition"), out=out, **ARGS)
    assert not hidden.exists() and store.n_examples == ARGS["n"]
    assert tree_bytes(out) == reference
