"""A thread's kept read buffers (chunk_read: the chunk file's bytes and transient_reads' output) must be its
process's own: after a fork, the child's reads must not write into the parent's buffers. An anonymous
mmap is MAP_SHARED by default, so a forked child (multiprocessing's fork, a forking Dask or user pool: the
package clears its thread pools at fork for that case) decoding a chunk overwrote what the parent had read
and not yet used: another chunk's values in the parent's result, past every check."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "ingest"))
from tiny_models import tiny_model  # noqa: E402

import actstore  # noqa: E402
from actstore.store.chunk_read import transient_reads  # noqa: E402


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_childs_reads_leave_the_parents_buffers_alone(tmp_path):
    path = actstore.ingest("addition", tiny_model("addition"), 16, 0, tmp_path / "s", chunk=8, batch=8,
                           quiet=True).path
    store = actstore.open_store(path)
    hook = "blocks.0.attn.hook_z"
    want = store.read(hook, 0, 8).copy()
    other = store.read(hook, 8, 16).copy()
    assert not np.array_equal(want, other)
    with transient_reads():
        got = store.read(hook, 0, 8)  # a view of this thread's kept buffer, valid until its next read
    np.testing.assert_array_equal(got, want)
    pid = os.fork()
    if pid == 0:  # the child: one read of the other chunk on its copy of this thread
        try:
            with transient_reads():
                store.read(hook, 8, 16)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    np.testing.assert_array_equal(got, want)
