"""The helper thread that creates a new store beside the first chunk (ingest.creation) never outlives ingest(),
never writes into the store's directory after ingest() returned or raised, and its own failure is raised by
ingest() as the error the creation raised (naming the path), with nothing left at the path; an interrupt or a
failure at each point of the first chunks leaves what the next ingest turns into the bytes of an
uninterrupted one."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "ingest"))
from tiny_models import tiny_model  # noqa: E402

import actstore  # noqa: E402
from actstore.errors import InvalidParameterError, StoreWriteError  # noqa: E402
from tests.helpers import tree_bytes  # noqa: E402

# a subset of hooks (the decomposition check is skipped): shapes come from the config, the creation waits
HOOKS = ["blocks.0.attn.hook_z", "blocks.1.mlp.hook_post", "blocks.0.attn.hook_pattern", "ln_final.hook_scale"]
KW = dict(chunk=8, batch=4, quiet=True, hooks=HOOKS)
N = 27


def _helpers_alive(wait: float = 2.0) -> list[str]:
    """Names of creation threads still alive after up to `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        alive = [t.name for t in threading.enumerate() if t.name.startswith("actstore-create") and t.is_alive()]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def _beside(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir()
                  if p.name.startswith(f".{out.name}.") and not p.name.endswith(".lock"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, bytes]:
    """The store of the same ingest made the probe-first way (no helper thread)."""
    out = tmp_path_factory.mktemp("ref") / "s"
    actstore.ingest("addition", tiny_model("addition"), N, 0, out, background=False, **KW)
    return tree_bytes(out)


def test_no_helper_thread_outlives_a_finished_ingest(tmp_path, reference):
    st: dict[str, float] = {}
    out = tmp_path / "s"
    actstore.ingest("addition", tiny_model("addition"), N, 0, out, stats=st, **KW)
    assert st["probe_s"] < 0.05  # the overlapped path ran (no probe)
    assert _helpers_alive() == []
    assert tree_bytes(out) == reference and _beside(out) == []


def test_a_creation_that_fails_is_raised_with_nothing_left(tmp_path, reference):
    model = tiny_model("addition")
    out = tmp_path / "s"
    blocker = tmp_path / f".s.creating-{os.getpid()}"  # a file where the creation builds: a real OS refusal
    blocker.write_bytes(b"not a directory")
    forwards = []
    handle = model.blocks[0].register_forward_hook(lambda *_: forwards.append(1))
    try:
        with pytest.raises(StoreWriteError, match="cannot create a store at .*s'"):
            actstore.ingest("addition", model, N, 0, out, **KW)
    finally:
        handle.remove()
    assert _helpers_alive() == []
    assert not out.exists()
    assert _beside(out) == [blocker.name] and blocker.read_bytes() == b"not a directory"
    blocker.unlink()
    actstore.ingest("addition", model, N, 0, out, **KW)
    assert tree_bytes(out) == reference and _beside(out) == []


class Stop(BaseException):
    """Stands for a KeyboardInterrupt (not an Exception: no handler in ingest may swallow it)."""


@pytest.mark.parametrize("at_call", [1, 2, 3, 5, 9])  # the first batch, later batches of chunk 0, chunks 1 and 2
def test_an_interrupt_in_the_first_chunks_resumes_to_the_same_bytes(tmp_path, reference, at_call):
    model = tiny_model("addition")
    out = tmp_path / "s"
    calls = []

    def interrupt(*_):
        calls.append(1)
        if len(calls) == at_call:
            raise Stop

    handle = model.blocks[1].register_forward_hook(interrupt)
    try:
        with pytest.raises(Stop):
            actstore.ingest("addition", model, N, 0, out, **KW)
    finally:
        handle.remove()
    assert _helpers_alive() == []
    # each batch runs blocks.1 twice (the answers' pass, the twins' pass): calls 1-2 are the first batch, which
    # never passed its check, so nothing was published; later, an empty (or one-chunk) store is there
    assert out.exists() == (at_call > 2) and _beside(out) == []
    snapshot = tree_bytes(out) if out.exists() else {}
    time.sleep(0.3)  # nothing writes into the directory once ingest() raised
    assert (tree_bytes(out) if out.exists() else {}) == snapshot
    actstore.ingest("addition", model, N, 0, out, **KW)
    assert tree_bytes(out) == reference and _beside(out) == []


def _blocked_ingest(tmp_path: Path) -> tuple[StoreWriteError, int, Path]:
    """An ingest of 4 chunks whose creation fails for real (a file where the store is built): (its error, the
    forward passes of blocks.0 that ran, the path)."""
    model = tiny_model("addition")
    out = tmp_path / "s"
    (tmp_path / f".s.creating-{os.getpid()}").write_bytes(b"not a directory")
    forwards = []
    handle = model.blocks[0].register_forward_hook(lambda *_: forwards.append(1))
    try:
        with pytest.raises(StoreWriteError) as info:
            actstore.ingest("addition", model, 32, 0, out, **KW)
    finally:
        handle.remove()
    return info.value, len(forwards), out


def test_a_failed_creation_is_raised_as_its_own_line(tmp_path):
    error, _, out = _blocked_ingest(tmp_path)
    assert str(error) == f"cannot create a store at {str(out)!r}: File exists"


def test_a_failed_creation_stops_the_ingest_by_the_first_chunks_write(tmp_path):
    _, forwards, _ = _blocked_ingest(tmp_path)
    # chunk 0: 2 batches of 4, each run twice through blocks.0 (the answers' pass and the twins' pass)
    assert forwards <= 4


def test_a_hook_that_never_fires_is_refused_as_the_tree_before_refused_it(tmp_path):
    # hook_result fires only with use_attn_result; the config gives it a shape, the first batch finds it silent
    with pytest.raises(InvalidParameterError) as info:
        actstore.ingest("addition", tiny_model("addition"), 12, 0, tmp_path / "s", chunk=8, batch=4, quiet=True,
                        hooks=["blocks.0.attn.hook_result", "blocks.1.attn.hook_z"])
    # the tree before (c836571) raised this line from its probe
    assert str(info.value) == "hook 'blocks.0.attn.hook_result' did not fire in a forward pass; it cannot be stored"
    assert not (tmp_path / "s").exists() and _beside(tmp_path / "s") == [] and _helpers_alive() == []


def test_a_failed_first_forward_leaves_no_store_with_default_hooks(tmp_path):
    model = tiny_model("addition")
    calls = []

    def boom(*_):
        calls.append(1)
        if len(calls) == 2:  # call 1 is the probe's pass (the decomposition check), call 2 the loop's first batch
            raise RuntimeError("boom in the first forward")

    handle = model.blocks[1].register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            actstore.ingest("addition", model, 40, 0, tmp_path / "s", chunk=16, batch=8, quiet=True)
    finally:
        handle.remove()
    assert _helpers_alive() == []
    assert not (tmp_path / "s").exists()


def test_overwrite_and_an_empty_directory_get_the_same_bytes(tmp_path, reference):
    model = tiny_model("addition")
    out = tmp_path / "s"
    actstore.ingest("addition", model, N, 1, out, **KW)  # another run (seed 1) there first
    st: dict[str, float] = {}
    actstore.ingest("addition", model, N, 0, out, overwrite=True, stats=st, **KW)
    assert st["probe_s"] < 0.05  # replaced through the overlapped creation
    assert tree_bytes(out) == reference and _beside(out) == [] and _helpers_alive() == []
    empty = tmp_path / "empty"
    empty.mkdir()
    actstore.ingest("addition", model, N, 0, empty, **KW)
    assert tree_bytes(empty) == reference and _beside(empty) == []
