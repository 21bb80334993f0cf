"""forward_memory keeps freed memory in glibc's heap within its block and hands it back after: measured as the
page faults of a pass that allocates, fills and frees 96 MiB in 12 blocks (as a forward pass's activations
come and go), through glibc's own malloc and free."""

from __future__ import annotations

import ctypes
import os
import resource

import pytest

from actstore.models import allocator
from actstore.models.allocator import forward_memory

pytestmark = pytest.mark.skipif(not allocator.tunable(), reason="glibc's malloc only")

BLOCK, BLOCKS = 8 << 20, 12  # 12 x 8 MiB: under the 32 MiB from the heap, over the 64 MiB kept after
PAGES = BLOCKS * BLOCK // 4096  # what a pass faults in when none of its memory was kept


def _pass() -> int:
    """Page faults of one pass: BLOCKS blocks malloc'ed and filled, then all freed."""
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [libc.malloc(BLOCK) for _ in range(BLOCKS)]
    for b in blocks:
        ctypes.memset(b, 1, BLOCK)
    for b in blocks:
        libc.free(b)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_freed_memory_is_reused_within_and_handed_back_after():
    with forward_memory() as kept:
        assert kept
        _pass()
        assert _pass() < PAGES // 20  # the second pass reuses the first one's memory
    _pass()
    assert _pass() > PAGES // 4  # handed back: the pass faults its memory in again


def test_nested_blocks_restore_once_when_the_outer_one_ends():
    with forward_memory():
        with forward_memory():
            _pass()
        assert _pass() < PAGES // 20  # the inner block's end changed nothing
    assert allocator._DEPTH == 0


@pytest.mark.parametrize("value", ["0", "off", "OFF", " false ", "no"])
def test_turned_off_by_the_environment(monkeypatch, value):
    monkeypatch.setenv("ACTSTORE_MALLOC", value)
    with forward_memory() as kept:
        assert not kept
    monkeypatch.setenv("ACTSTORE_MALLOC", "1")
    with forward_memory() as kept:
        assert kept  # any other value leaves it on
    monkeypatch.delenv("ACTSTORE_MALLOC")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1000000")
    assert not allocator.tunable()


def _in_child(body) -> int:  # type: ignore[no-untyped-def]
    """The exit status of a forked child that runs body() (0 if it returns True)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if body() else 3
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_a_child_forked_inside_a_block_starts_outside_it():
    def child() -> bool:
        _pass()
        return allocator._DEPTH == 0 and _pass() > PAGES // 4  # handed back, as after a block

    with forward_memory():
        assert _in_child(child) == 0
        _pass()
        assert _pass() < PAGES // 20  # the parent is still inside its block
    assert allocator._DEPTH == 0


def test_a_child_leaving_its_parents_block_changes_nothing():
    def child() -> bool:
        block.__exit__(None, None, None)  # the parent's block, left in the child
        with forward_memory():  # a block of the child's own still opens and closes
            inside = allocator._DEPTH == 1
        return inside and allocator._DEPTH == 0

    block = forward_memory()
    block.__enter__()
    try:
        assert _in_child(child) == 0
        assert allocator._DEPTH == 1
    finally:
        block.__exit__(None, None, None)
    assert allocator._DEPTH == 0


def test_ingest_runs_its_forward_passes_within_it(tmp_path):
    import actstore
    from actstore.models import load_model

    model = load_model("zoo:addition")
    depths: list[int] = []
    model.blocks[0].hook_resid_pre.add_hook(lambda x, hook: depths.append(allocator._DEPTH))
    try:
        actstore.ingest("addition", model, 8, 0, tmp_path / "s", quiet=True)
    finally:
        model.reset_hooks()
    assert depths and set(depths) == {1}
    assert allocator._DEPTH == 0
