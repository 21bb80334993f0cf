"""query/head_dot.py: each head's output along a target at each answer, by the C kernel and by numpy, bit for bit."""

from __future__ import annotations

import threading

import numpy as np
import polars as pl
import pytest

from actstore.query import head_dot as hd
from actstore.query.dla import dla
from actstore.query.head_dot import head_dot

needs_kernel = pytest.mark.skipif(hd.KERNEL is None, reason="the C kernel is not built here (no C compiler)")
EVERY = np.arange(1 << 16, dtype=np.uint16)


def awkward_case(seed: int, d_head: int, dtype: type = np.float16):
    """z [e, pos, head, d_head] from every kind of float16 (subnormals, both zeros, +-65504, a few inf and NaN),
    each example its own answer positions, table rows of float32 values from 2**-100 to 2**14."""
    rng = np.random.default_rng(seed)
    e, p, h, a, r = 90, 7, 3, 4, 11
    finite = EVERY[(EVERY & 0x7C00) != 0x7C00]
    z = rng.choice(finite, size=(e, p, h, d_head)).view(np.float16)
    pos = rng.integers(0, p, size=(e, a))
    for k, special in enumerate([np.inf, -np.inf, np.nan, -np.nan, 65504, -0.0]):  # at positions read
        z[3 * k, pos[3 * k, 0], k % h, k % d_head] = special
    rows = rng.integers(0, r, size=(e, a))
    table = (rng.standard_normal((r, h, d_head)) * 2.0 ** rng.integers(-100, 14, size=(r, h, d_head)))
    return z.astype(dtype), pos, rows, table.astype(np.float32)


def lanes_in_python(z, pos, rows, table) -> np.ndarray:
    """The module docstring's sums, one Python float at a time: four running sums over d mod 4, in order of d."""
    e, a = pos.shape
    out = np.empty((e, a, z.shape[2]))
    for i in range(e):
        for j in range(a):
            for h in range(z.shape[2]):
                s = [0.0, 0.0, 0.0, 0.0]
                for d in range(z.shape[3]):
                    s[d % 4] += float(z[i, pos[i, j], h, d]) * float(table[rows[i, j], h, d])
                out[i, j, h] = (s[0] + s[1]) + (s[2] + s[3])
    return out


def same_bits(a: np.ndarray, b: np.ndarray) -> None:
    """Equal bit for bit, except that any NaN equals any NaN (its payload is not part of the contract)."""
    assert a.shape == b.shape and a.dtype == b.dtype == np.float64
    nan = np.isnan(a)
    np.testing.assert_array_equal(nan, np.isnan(b))
    np.testing.assert_array_equal(a[~nan].view(np.uint64), b[~nan].view(np.uint64))


@pytest.mark.parametrize("d_head", [1, 3, 4, 7, 8, 13, 24, 64])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_kernel_numpy_and_python_give_the_same_bits(d_head, dtype, monkeypatch):
    z, pos, rows, table = awkward_case(d_head, d_head, dtype)
    want = lanes_in_python(z, pos, rows, table)
    assert np.isnan(want).any() and np.isinf(want).any() and np.isfinite(want).mean() > 0.5
    if hd.KERNEL is not None:
        same_bits(head_dot(z, pos, rows, table), want)
        for vector in (True, False):  # AVX2 + F16C where the CPU has them, and the portable loop
            out = np.empty(want.shape)
            hd.KERNEL.head_dot(z, pos, rows, table, out, vector)
            same_bits(out, want)
    monkeypatch.setattr(hd, "KERNEL", None)
    same_bits(head_dot(z, pos, rows, table), want)


@pytest.mark.parametrize("width", [3071, 3072])
def test_an_mlp_wide_row_gives_the_same_bits_on_every_path(width, monkeypatch):
    """One 'head' as wide as an MLP (dla reads hook_post [e, pos, 1, d_mlp] so): the numpy code's lane sums
    over hundreds of groups, and a row of only -0.0 products (+0.0, as the kernel's sums start there)."""
    rng = np.random.default_rng(width)
    z = (rng.standard_normal((12, 5, 1, width)) * 4).astype(np.float16)
    pos, rows = rng.integers(0, 5, size=(12, 2)), rng.integers(0, 3, size=(12, 2))
    table = (rng.standard_normal((3, 1, width)) * 2.0 ** rng.integers(-30, 10, size=(3, 1, width))).astype(np.float32)
    z[0, pos[0, 0]] = -0.0
    table[rows[0, 0]] = np.abs(table[rows[0, 0]])  # every product of answer (0, 0) is -0.0
    want = lanes_in_python(z, pos, rows, table)
    assert want[0, 0, 0] == 0 and not np.signbit(want[0, 0, 0])
    if hd.KERNEL is not None:
        same_bits(head_dot(z, pos, rows, table), want)
    monkeypatch.setattr(hd, "KERNEL", None)
    same_bits(head_dot(z, pos, rows, table), want)


def test_values_are_the_float64_dot_products_to_rounding():
    rng = np.random.default_rng(5)
    z = rng.standard_normal((50, 6, 4, 24)).astype(np.float16)
    pos, rows = rng.integers(0, 6, size=(50, 3)), rng.integers(0, 9, size=(50, 3))
    table = rng.standard_normal((9, 4, 24)).astype(np.float32)
    exact = np.einsum("eahd,eahd->eah", z[np.arange(50)[:, None], pos].astype(np.float64),
                      table[rows].astype(np.float64))
    np.testing.assert_allclose(head_dot(z, pos, rows, table), exact, rtol=1e-13, atol=1e-13)


def test_strided_inputs_give_what_contiguous_ones_do():
    z, pos, rows, table = awkward_case(2, 24)
    want = head_dot(z, pos, rows, table)
    wide = np.zeros((z.shape[0], z.shape[1], z.shape[2] + 1, 24), dtype=np.float16)
    wide[:, :, 1:] = z
    same_bits(head_dot(wide[:, :, 1:], np.asfortranarray(pos), rows[:, ::1], table), want)


@pytest.mark.parametrize("numpy_code", [False, True])
def test_out_of_range_positions_and_rows_are_refused(numpy_code, monkeypatch):
    if numpy_code:
        monkeypatch.setattr(hd, "KERNEL", None)
    z, pos, rows, table = awkward_case(3, 8)
    for bad_pos, bad_rows in ((pos + 7, rows), (pos - 1, rows), (pos, rows + 11), (pos, rows * -1 - 1)):
        with pytest.raises(ValueError, match="out of range"):
            head_dot(z, bad_pos, bad_rows, table)


@pytest.mark.parametrize("bad", ["table dtype", "table heads", "pos shape", "z ndim", "pos float", "rows bool"])
def test_mismatched_shapes_are_refused(bad):
    z, pos, rows, table = awkward_case(4, 8)
    args = {"table dtype": (z, pos, rows, table.astype(np.float64)), "table heads": (z, pos, rows, table[:, :2]),
            "pos shape": (z, pos[:, :2], rows, table), "z ndim": (z[0], pos, rows, table),
            "pos float": (z, pos.astype(np.float64), rows, table), "rows bool": (z, pos, rows > 0, table)}[bad]
    with pytest.raises(ValueError, match="head_dot"):
        head_dot(*args)


@needs_kernel
def test_the_kernel_refuses_what_it_cannot_read():
    z, pos, rows, table = awkward_case(6, 8)
    out = np.empty(pos.shape + (3,))
    cases = [(z.astype(np.float64), pos, rows, table, out), (z, pos.astype(np.int32), rows, table, out),
             (z, pos, rows, table.astype(np.float64), out), (z, pos, rows, table, out.astype(np.float32)),
             (z, pos, rows, table, out[:, :1]), (z[:, :, ::2], pos, rows, table, out)]
    for args in cases:
        with pytest.raises((ValueError, BufferError)):
            hd.KERNEL.head_dot(*args)
    read_only = out.copy()
    read_only.setflags(write=False)
    with pytest.raises((ValueError, BufferError, TypeError)):
        hd.KERNEL.head_dot(z, pos, rows, table, read_only)


@needs_kernel
def test_the_kernel_lets_other_threads_run():
    """The GIL is released for the loop: a Python thread keeps counting while a long call runs."""
    rng = np.random.default_rng(7)
    z = rng.standard_normal((20000, 8, 8, 64)).astype(np.float16)
    pos, rows = np.tile(np.arange(8), (20000, 1)), np.zeros((20000, 8), dtype=np.int64)
    table = rng.standard_normal((1, 8, 64)).astype(np.float32)
    counted, done = [0], threading.Event()

    def count() -> None:
        while not done.is_set():
            counted[0] += 1

    thread = threading.Thread(target=count)
    thread.start()
    try:
        before = counted[0]
        for _ in range(3):
            head_dot(z, pos, rows, table)
        assert counted[0] - before > 1000
    finally:
        done.set()
        thread.join()


@pytest.fixture(scope="module")
def one_chunk_store(tmp_path_factory):
    """A store of one chunk (dla computes its heads on the reading threads from hook_z as read)."""
    import actstore
    from query_models import tiny_model

    path = tmp_path_factory.mktemp("one-chunk") / "store"
    actstore.ingest("addition", tiny_model("ln_mlp"), 40, 3, path, dtype="float16", chunk=64, batch=8, quiet=True)
    return actstore.open_store(path)


@pytest.mark.parametrize("target", ["correct", "diff", 4])
def test_a_stores_dla_is_the_same_with_the_numpy_code(tiny_store, one_chunk_store, target, monkeypatch):
    """dla on a one-chunk store and on many-chunk ones, with the kernel and with the numpy code: the same tables."""
    for store in (one_chunk_store, tiny_store("ln_mlp", "float16"), tiny_store("ln_attn", "float32")):
        kernel = dla(store, "head", target)
        with monkeypatch.context() as m:
            m.setattr(hd, "KERNEL", None)
            numpy = dla(store, "head", target)
        assert kernel.filter(pl.col("component").str.starts_with("L")).height > 0
        assert kernel.equals(numpy)
