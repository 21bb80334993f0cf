"""The per-thread scratch buffers kept between calls (chunk_read.thread_scratch: float32_into's int16 copy) must
never carry one call's values into another's result: two threads casting different arrays at once, calls of
different sizes back to back, and the DLA of real stores with the cast's blocks made small (its last block
partial) give what numpy's astype and the whole-block DLA give, bit for bit."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "ingest"))
from tiny_models import tiny_model  # noqa: E402

import actstore  # noqa: E402
from actstore.query import dla  # noqa: E402
from actstore.store import chunk_read  # noqa: E402
from actstore.store.chunk_read import float32_into, thread_scratch  # noqa: E402

DIMS = ("example", "pos", "head", "d_head")


def _halves(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """[*shape] float16 from random bit patterns: every class of value (subnormals, inf, NaN payloads)."""
    return rng.integers(0, 1 << 16, size=shape, dtype=np.uint16).view(np.float16)


def _same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


def test_threads_casting_different_arrays_get_their_own_values():
    rng = np.random.default_rng(0)
    arrays = [_halves(rng, (n, 3, 5, 7)) for n in (1, 2, 900, 1249, 2500)]  # rows over and under a block
    errors: list[BaseException] = []

    def work(order: list[int]) -> None:
        try:
            for _ in range(3):
                for i in order:
                    out = np.empty(arrays[i].shape, dtype=np.float32)
                    float32_into(arrays[i], out)
                    _same(out, arrays[i].astype(np.float32))
        except BaseException as e:  # noqa: BLE001 (reported by the main thread)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(order,)) for order in ([0, 1, 2, 3, 4], [4, 3, 0, 2, 1])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("scratch")
    model = tiny_model("addition")
    kw = dict(chunk=64, batch=8, quiet=True)  # one chunk each: the DLA's products run on the reading threads
    return [actstore.ingest("addition", model, 37, 0, root / "a", **kw).path,
            actstore.ingest("addition", model, 1, 3, root / "one", **kw).path]  # a store of one example


def test_dla_with_small_cast_blocks_equals_whole_blocks(monkeypatch, stores):
    want = {p: [dla(actstore.open_store(p), level) for level in ("head", "neuron")] for p in stores}
    used: list[int] = []  # float32_into's kept block asked for: the cast ran

    def counted(name: str, nbytes: int) -> np.ndarray:
        used.append(nbytes) if name == "float32_into" else None
        return thread_scratch(name, nbytes)

    monkeypatch.setattr(chunk_read, "thread_scratch", counted)
    for block in (1 << 6, 1 << 8):  # some of a chunk's rows per block; a last block partial
        monkeypatch.setattr(chunk_read, "_CAST_BLOCK", block)
        opened = [actstore.open_store(p) for p in stores]
        for _ in range(2):  # the two stores interleaved, each thread's buffers reused between them
            for p, store in zip(stores, opened):
                for level, w in zip(("head", "neuron"), want[p]):
                    assert dla(store, level).equals(w), (p, level, block)
    assert used
