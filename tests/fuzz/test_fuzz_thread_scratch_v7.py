"""The per-thread scratch buffers kept between calls (chunk_read.thread_scratch: float32_into's int16 copy,
answer_product's float32 block) must never carry one call's values into another's result: two threads
working on different arrays at once, a product that raises halfway, calls of different sizes back to back,
and the DLA of real stores with answer_product's blocks made small (so that its block path, which the tiny
stores' chunks never reach at the default block size, runs with its last block partial) give what numpy's
astype and a single whole-array product give, bit for bit."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "ingest"))
from tiny_models import tiny_model  # noqa: E402

import actstore  # noqa: E402
from actstore.query import chunks as chunks_mod  # noqa: E402
from actstore.query import dla  # noqa: E402
from actstore.query.chunks import answer_product, at_answers  # noqa: E402
from actstore.store import chunk_read  # noqa: E402
from actstore.store.chunk_read import float32_into  # noqa: E402

DIMS = ("example", "pos", "head", "d_head")


def _halves(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """[*shape] float16 from random bit patterns: every class of value (subnormals, inf, NaN payloads)."""
    return rng.integers(0, 1 << 16, size=shape, dtype=np.uint16).view(np.float16)


def _product(values: np.ndarray, rows: slice) -> np.ndarray:
    """[e, a, head] float64: a per-row product (a new array), with each row's example index folded in."""
    return np.einsum("eahd->eah", values.astype(np.float64)) + np.arange(rows.start, rows.stop)[:, None, None]


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


@pytest.mark.parametrize("block", [1 << 8, 1 << 10, chunks_mod.PRODUCT_BLOCK])
def test_answer_product_in_two_threads_equals_the_whole_product(monkeypatch, block):
    monkeypatch.setattr(chunks_mod, "PRODUCT_BLOCK", block)
    rng = np.random.default_rng(1)
    cases = []
    for n, pos, heads, d in ((3, 4, 2, 16), (257, 6, 4, 8), (1000, 5, 3, 32), (2051, 5, 2, 16)):
        arr = rng.standard_normal((n, pos, heads, d)).astype(np.float16)
        answer_pos = np.tile(np.array([[1, 2, 3]]), (n, 1))  # one run of positions: answer_product's block path
        cases.append((arr, answer_pos, _product(at_answers(arr, DIMS, answer_pos, np.float32), slice(0, n))))
    errors: list[BaseException] = []

    def work(order: list[int]) -> None:
        try:
            for _ in range(3):
                for i in order:
                    arr, answer_pos, want = cases[i]
                    _same(answer_product(arr, DIMS, answer_pos, np.float32, _product), want)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(order,)) for order in ([0, 1, 2, 3], [3, 1, 2, 0], [2, 3, 0, 1])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_a_product_that_raises_halfway_leaves_no_values_behind(monkeypatch):
    monkeypatch.setattr(chunks_mod, "PRODUCT_BLOCK", 1 << 9)
    rng = np.random.default_rng(2)
    big = rng.standard_normal((600, 4, 2, 16)).astype(np.float16)
    small = rng.standard_normal((300, 4, 2, 16)).astype(np.float16)
    pos_big, pos_small = np.tile([[0, 1]], (600, 1)), np.tile([[2, 3]], (300, 1))

    def fails(values: np.ndarray, rows: slice) -> np.ndarray:
        if rows.start > 0:
            raise RuntimeError("halfway")
        return _product(values, rows)

    with pytest.raises(RuntimeError, match="halfway"):
        answer_product(big, DIMS, pos_big, np.float32, fails)
    want = _product(at_answers(small, DIMS, pos_small, np.float32), slice(0, 300))
    _same(answer_product(small, DIMS, pos_small, np.float32, _product), want)


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("scratch")
    model = tiny_model("addition")
    kw = dict(chunk=64, batch=8, quiet=True)  # one chunk each: the DLA's products run on the reading threads
    return [actstore.ingest("addition", model, 37, 0, root / "a", **kw).path,
            actstore.ingest("addition", model, 1, 3, root / "one", **kw).path]  # a store of one example


def test_dla_with_small_product_blocks_equals_whole_blocks(monkeypatch, stores):
    want = {p: [dla(actstore.open_store(p), level) for level in ("head", "neuron")] for p in stores}
    used: list[int] = []  # answer_product's kept block asked for: its block path ran

    def counted(name: str, nbytes: int) -> np.ndarray:
        used.append(nbytes) if name == "answer_product" else None
        return chunk_read.thread_scratch(name, nbytes)

    monkeypatch.setattr(chunks_mod, "thread_scratch", counted)
    for block in (1 << 6, 1 << 8):  # some of a chunk's rows per block; a last block partial
        monkeypatch.setattr(chunks_mod, "PRODUCT_BLOCK", block)
        monkeypatch.setattr(chunk_read, "_CAST_BLOCK", block)
        opened = [actstore.open_store(p) for p in stores]
        for _ in range(2):  # the two stores interleaved, each thread's buffers reused between them
            for p, store in zip(stores, opened):
                for level, w in zip(("head", "neuron"), want[p]):
                    assert dla(store, level).equals(w), (p, level, block)
    assert used
