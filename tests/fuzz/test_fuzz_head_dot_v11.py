"""Fuzz query/head_dot.py (9b9fb9b): the C kernel (_head_dot.c, AVX2 + F16C and portable loops), the numpy code
(head_dot.KERNEL = None) and a pure-Python loop of the documented order, bit for bit (NaN payloads excepted).

    values[e, a, h] = sum over d of z[e, pos[e, a], h, d] * table[rows[e, a], h, d]

exact float64 products, four running sums over d mod 4 (each in order of d), then (s0 + s1) + (s2 + s3).

Seeded random cases over shapes (d_head not a multiple of 4 or 8, one head / answer / example, no example,
more examples than the kernel's prefetch distance), float16 bit patterns of every class (subnormals, +-0, +-inf,
NaN with any payload, +-65504), float32 z and tables (subnormal, huge, inf, NaN, random bits), strided and
unaligned inputs, byte-swapped inputs (z and pos / rows are converted and give the native answer on both paths; a
byte-swapped table is refused with ValueError on both; the kernel itself refuses any non-native buffer), out-of-
range, negative and huge (2**62, +-2**63) positions and rows (ValueError on both paths, nothing written past the
buffers), and one store end to end: dla(store, "head", "diff") with the kernel and with the numpy code.

A Python thread that writes the positions during a call (the kernel checks and reads its own copy of them, taken
with the GIL held) gives ValueError or some answer, never a crash; +inf - inf gives NaN quietly on both paths.
"""

from __future__ import annotations

import math
import struct
import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from actstore.query import head_dot as hd
from actstore.query.head_dot import head_dot

KERNEL = hd.KERNEL
needs_kernel = pytest.mark.skipif(KERNEL is None, reason="the C kernel is not built here (no C compiler)")
ROOT = Path(__file__).parents[2]


# ---------------------------------------------------------------- the documented sums, one Python float at a time

def _half(bits: int) -> float:
    """A float16's value from its bits, by arithmetic (independent of numpy's and the kernel's conversions)."""
    sign = -1.0 if bits & 0x8000 else 1.0
    exp, man = (bits >> 10) & 0x1F, bits & 0x3FF
    if exp == 31:
        return math.nan if man else sign * math.inf
    if exp == 0:
        return sign * math.ldexp(man, -24)
    return sign * math.ldexp(1024 + man, exp - 25)


HALF = [_half(b) for b in range(1 << 16)]


def python_floats(x: np.ndarray) -> list[float]:
    """The values of a float16 / float32 array as Python floats (exact), flattened in C order."""
    x = np.ascontiguousarray(x)
    if x.dtype == np.float16:
        return [HALF[b] for b in x.view(np.uint16).ravel().tolist()]
    assert x.dtype == np.float32
    return list(struct.unpack(f"={x.size}f", x.tobytes()))


def reference(z: np.ndarray, pos: np.ndarray, rows: np.ndarray, table: np.ndarray) -> np.ndarray:
    e, p, h, d = z.shape
    zf, tf = python_floats(z), python_floats(table)
    out = np.empty((e, pos.shape[1], h))
    for i in range(e):
        for j in range(pos.shape[1]):
            zb = ((i * p + int(pos[i, j])) * h) * d
            tb = int(rows[i, j]) * h * d
            for k in range(h):
                s = [0.0, 0.0, 0.0, 0.0]
                for m in range(d):
                    s[m % 4] += zf[zb + k * d + m] * tf[tb + k * d + m]
                out[i, j, k] = (s[0] + s[1]) + (s[2] + s[3])
    return out


def same_bits(a: np.ndarray, b: np.ndarray, what: str = "") -> None:
    """Equal bit for bit (the sign of 0 included), except that any NaN equals any NaN."""
    assert a.shape == b.shape and a.dtype == b.dtype == np.float64, (what, a.shape, b.shape, a.dtype, b.dtype)
    nan = np.isnan(a)
    np.testing.assert_array_equal(nan, np.isnan(b), err_msg=what)
    np.testing.assert_array_equal(a[~nan].view(np.uint64), b[~nan].view(np.uint64), err_msg=what)


# ---------------------------------------------------------------- random inputs

def half_values(rng: np.random.Generator, shape: tuple[int, ...], wild: bool) -> np.ndarray:
    """float16 of every class: normal, subnormal, +-0, +-65504, random bits; with wild, also +-inf and NaN
    (quiet and signalling, any payload, either sign)."""
    n = int(np.prod(shape))
    sign = rng.integers(0, 2, n).astype(np.uint16) << 15
    kinds = rng.choice(8, size=n, p=[.45, .15, .08, .04, .18, .04, .03, .03] if wild else
                       [.5, .2, .1, .05, .15, 0, 0, 0])
    normal = rng.integers(1, 31, n).astype(np.uint16) << 10 | rng.integers(0, 1024, n).astype(np.uint16)
    sub = rng.integers(1, 1024, n).astype(np.uint16)
    bits = np.where(kinds == 0, normal, 0).astype(np.uint16)
    bits = np.where(kinds == 1, sub, bits)
    bits = np.where(kinds == 2, 0, bits)
    bits = np.where(kinds == 3, 0x7BFF, bits)
    bits = np.where(kinds == 4, rng.integers(0, 1 << 16, n), bits).astype(np.uint16)
    bits = np.where(kinds == 5, 0x7C00, bits)
    bits = np.where(kinds == 6, 0x7C00 | rng.integers(1, 1024, n), bits).astype(np.uint16)
    bits = np.where(kinds == 7, 0x7E00 | rng.integers(0, 512, n), bits).astype(np.uint16)
    if not wild:  # random bits may be inf / NaN: keep them finite
        bits = np.where((bits & 0x7C00) == 0x7C00, bits & 0x03FF, bits)
    return (bits | sign).astype(np.uint16).view(np.float16).reshape(shape)


def single_values(rng: np.random.Generator, shape: tuple[int, ...], wild: bool) -> np.ndarray:
    """float32 over the whole exponent range (subnormals and +-0 included) and random bits; with wild, also
    +-inf and NaN."""
    n = int(np.prod(shape))
    with np.errstate(over="ignore", under="ignore"):
        spread = (rng.standard_normal(n) * 2.0 ** rng.integers(-152, 128, n)).astype(np.float32)
        tame = (rng.standard_normal(n) * 2.0 ** rng.integers(-8, 8, n)).astype(np.float32)
    random_bits = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    kinds = rng.choice(6, size=n, p=[.3, .4, .05, .15, .05, .05] if wild else [.35, .45, .05, .15, 0, 0])
    out = np.where(kinds == 0, spread, tame)
    out = np.where(kinds == 2, np.float32(-0.0) if rng.random() < .5 else np.float32(0.0), out)
    out = np.where(kinds == 3, random_bits, out)
    out = np.where(kinds == 4, np.float32(np.inf) * rng.choice([-1, 1], n).astype(np.float32), out)
    out = np.where(kinds == 5, np.float32(np.nan), out).astype(np.float32)
    if not wild:
        out = np.where(np.isfinite(out), out, np.float32(1.5)).astype(np.float32)
        out = np.where(np.abs(out) > 1e30, np.float32(-3.25), out).astype(np.float32)
    return out.reshape(shape)


def random_case(seed: int):
    rng = np.random.default_rng([11, seed])
    e = int(rng.choice([0, 1, 2, 3, 5, 9, 12, 17]))
    p = int(rng.integers(1, 7))
    h = int(rng.choice([1, 1, 2, 3, 5]))
    d = int(rng.choice([0, 1, 2, 3, 4, 5, 7, 8, 9, 12, 15, 16, 17, 23, 31, 33, 40]))
    a = int(rng.choice([0, 1, 1, 2, 3, 4]))
    r = int(rng.integers(1, 7))
    wild = bool(rng.random() < 0.6)
    z = half_values(rng, (e, p, h, d), wild) if rng.random() < 0.65 else single_values(rng, (e, p, h, d), wild)
    table = single_values(rng, (r, h, d), wild and rng.random() < 0.5)
    pos = rng.integers(0, p, (e, a))
    rows = rng.integers(0, r, (e, a))
    return rng, z, pos, rows, table


def strided(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """The same values as a non-C-contiguous view (every other element of a bigger array, or Fortran order)."""
    if x.ndim == 0 or x.size == 0:
        return x
    if rng.random() < 0.5:
        return np.asfortranarray(x)
    big = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), dtype=x.dtype)
    big[..., ::2] = x
    return big[..., ::2]


def unaligned(x: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of x whose data starts one byte off its dtype's alignment."""
    buf = np.zeros(x.nbytes + x.itemsize + 1, dtype=np.uint8)
    u = np.ndarray(x.shape, dtype=x.dtype, buffer=buf, offset=1)
    u[...] = x
    assert x.itemsize == 1 or not u.flags.aligned or x.size == 0
    return u


def both_paths(monkeypatch):
    """Yields twice: with the kernel (where built), then with the numpy code (KERNEL None) until the next yield."""
    for numpy_code in (False, True):
        with monkeypatch.context() as m:
            if numpy_code:
                m.setattr(hd, "KERNEL", None)
            yield numpy_code


def all_paths(z, pos, rows, table, monkeypatch) -> dict[str, np.ndarray]:
    """head_dot through the kernel (wrapper, and both loops called directly) and through the numpy code."""
    got = {}
    if KERNEL is not None:
        got["kernel"] = head_dot(z, pos, rows, table)
        for vector in (True, False):
            out = np.full(pos.shape + z.shape[2:3], np.nan)  # every element must be written
            KERNEL.head_dot(np.ascontiguousarray(z), np.ascontiguousarray(pos, dtype=np.int64),
                            np.ascontiguousarray(rows, dtype=np.int64), np.ascontiguousarray(table), out, vector)
            got[f"kernel vector={vector}"] = out
    with monkeypatch.context() as m:
        m.setattr(hd, "KERNEL", None)
        got["numpy"] = head_dot(z, pos, rows, table)
    return got


# ---------------------------------------------------------------- values

@pytest.mark.parametrize("seed", range(80))
def test_random_cases_give_the_documented_bits_on_every_path(seed, monkeypatch):
    rng, z, pos, rows, table = random_case(seed)
    want = reference(z, pos, rows, table)
    for name, got in all_paths(z, pos, rows, table, monkeypatch).items():
        same_bits(got, want, f"seed {seed} {name} z {z.dtype}{z.shape} A {pos.shape[1]}")
    # the same values as strided views (the wrapper copies them C-contiguous) and as unaligned buffers
    views = (strided(rng, z), strided(rng, pos), strided(rng, rows), strided(rng, table))
    for name, got in all_paths(*views, monkeypatch).items():
        same_bits(got, want, f"seed {seed} strided {name}")
    odd = (unaligned(z), unaligned(pos), unaligned(rows), unaligned(table))
    for name, got in all_paths(*odd, monkeypatch).items():
        same_bits(got, want, f"seed {seed} unaligned {name}")
    if KERNEL is not None:  # and into an unaligned out
        out = unaligned(np.full(want.shape, np.nan))
        for vector in (True, False):
            KERNEL.head_dot(*odd, out, vector)
            same_bits(np.array(out), want, f"seed {seed} unaligned out vector={vector}")


@pytest.mark.parametrize("seed", range(3))
def test_many_examples_cross_the_numpy_blocks_and_the_prefetch_distance(seed, monkeypatch):
    """300 examples (more than the kernel's AHEAD = 8; several of the numpy code's blocks of 2**16 products),
    each with its own answer positions."""
    rng = np.random.default_rng([11, 1000 + seed])
    e, p, h, d, a, r = 300, 9, 4, (70, 61, 37)[seed], 3, 40
    z = half_values(rng, (e, p, h, d), True) if seed != 1 else single_values(rng, (e, p, h, d), True)
    table = single_values(rng, (r, h, d), seed == 2)
    pos, rows = rng.integers(0, p, (e, a)), rng.integers(0, r, (e, a))
    assert hd._BLOCK // (a * h * d) < e  # more than one block of the numpy code
    want = reference(z, pos, rows, table)
    for name, got in all_paths(z, pos, rows, table, monkeypatch).items():
        same_bits(got, want, f"seed {seed} {name}")


@pytest.mark.parametrize("seed", range(6))
def test_float16_z_gives_what_its_float32_and_other_dtypes_give(seed, monkeypatch):
    """float16 -> float32 is exact: the same bits either way; float64 / integer z are read as float32."""
    rng, z, pos, rows, table = random_case(seed)
    z16 = half_values(rng, z.shape, True)
    z64 = single_values(rng, z.shape, False).astype(np.float64) * (1 + 2.0 ** -40)  # rounds to float32
    zint = rng.integers(-3000, 3000, z.shape)
    for _ in both_paths(monkeypatch):
        same_bits(head_dot(z16, pos, rows, table), head_dot(z16.astype(np.float32), pos, rows, table))
        same_bits(head_dot(z64, pos, rows, table), head_dot(z64.astype(np.float32), pos, rows, table))
        same_bits(head_dot(zint, pos, rows, table), reference(zint.astype(np.float32), pos, rows, table))


@pytest.mark.parametrize("shape", [(0, 4, 2, 7, 3, 5), (5, 0, 2, 7, 0, 5), (5, 4, 0, 7, 3, 5), (5, 4, 2, 0, 3, 5),
                                   (5, 4, 2, 7, 0, 5), (0, 0, 0, 0, 0, 0), (1, 1, 1, 1, 1, 1), (5, 4, 2, 7, 0, 0),
                                   (0, 4, 2, 7, 3, 0)])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_empty_axes(shape, dtype, monkeypatch):
    """E, P, H, D, A or R of 0 (with nothing to read where P or R is 0): an array of that shape, 0.0 where D is
    0, on every path; nothing read or written out of bounds."""
    e, p, h, d, a, r = shape
    rng = np.random.default_rng(sum(shape))
    z = (rng.standard_normal((e, p, h, d)) * 4).astype(dtype)
    table = rng.standard_normal((r, h, d)).astype(np.float32)
    pos = rng.integers(0, max(p, 1), (e, a))
    rows = rng.integers(0, max(r, 1), (e, a))
    want = reference(z, pos, rows, table)
    for name, got in all_paths(z, pos, rows, table, monkeypatch).items():
        same_bits(got, want, f"{shape} {name}")
        assert got.shape == (e, a, h)
        if d == 0:
            assert not np.signbit(got).any() and (got == 0).all()


@pytest.mark.parametrize("p_or_r", [0, 1])
def test_nothing_to_read_but_answers_to_read_is_refused(p_or_r, monkeypatch):
    """P = 0 (no position) or R = 0 (no table row) while some answer reads one: ValueError on both paths."""
    z = np.zeros((3, 0 if p_or_r == 0 else 2, 2, 5), np.float16)
    table = np.zeros((0 if p_or_r == 1 else 2, 2, 5), np.float32)
    pos = rows = np.zeros((3, 2), np.int64)
    for _ in both_paths(monkeypatch):
        with pytest.raises(ValueError, match="out of range"):
            head_dot(z, pos, rows, table)


# ---------------------------------------------------------------- untrusted positions and rows

BAD = [("P", 0), (-1, 0), (2 ** 62, 0), (2 ** 63 - 1, 0), (-2 ** 63, 0),
       (0, "R"), (0, -1), (0, 2 ** 62), (0, 2 ** 63 - 1), (0, -2 ** 63), (2 ** 62, 2 ** 62), (-7, "R")]


@pytest.mark.parametrize("where", ["first", "last", "ahead"])
@pytest.mark.parametrize("bad", BAD, ids=[str(b) for b in BAD])
def test_bad_positions_and_rows_are_refused_on_both_paths(bad, where, monkeypatch):
    """One out-of-range position or row (the first answer, the last, or one the kernel's prefetch reaches
    before its loop does): ValueError from the wrapper on both paths and from the kernel itself, out untouched
    past its own elements."""
    rng = np.random.default_rng(7)
    e, p, h, d, a, r = 20, 5, 3, 9, 3, 4
    z, table = half_values(rng, (e, p, h, d), True), single_values(rng, (r, h, d), True)
    pos, rows = rng.integers(0, p, (e, a)), rng.integers(0, r, (e, a))
    at = {"first": (0, 0), "last": (e - 1, a - 1), "ahead": (9, 1)}[where]
    pos[at] = p if bad[0] == "P" else bad[0]
    rows[at] = r if bad[1] == "R" else bad[1]
    for _ in both_paths(monkeypatch):
        with pytest.raises(ValueError, match="out of range"):
            head_dot(z, pos, rows, table)
    if KERNEL is not None:
        for vector in (True, False):
            with pytest.raises(ValueError, match="out of range"):
                KERNEL.head_dot(z, pos, rows, table, np.empty((e, a, h)), vector)


@pytest.mark.parametrize("numpy_code", [False, True])
def test_inf_minus_inf_gives_nan_quietly_on_both_paths(numpy_code, monkeypatch):
    """+inf and -inf products in one lane (d = 0 and d = 4) and in two lanes (d = 1, d = 2): NaN, as the kernel
    gives it, without a warning or a floating-point error on either path, whatever numpy's error state."""
    z = np.zeros((1, 1, 1, 8), np.float16)
    z[0, 0, 0, [0, 1, 2, 4]] = [np.inf, np.inf, -np.inf, -np.inf]
    table = np.ones((1, 1, 8), np.float32)
    pos = rows = np.zeros((1, 1), np.int64)
    if numpy_code:
        monkeypatch.setattr(hd, "KERNEL", None)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        got = head_dot(z, pos, rows, table)
    assert np.isnan(got).all()


@pytest.mark.parametrize("dtype", [np.uint64, np.int32, np.int16])
def test_other_index_dtypes_are_converted_and_checked(dtype, monkeypatch):
    """pos / rows of another integer dtype are cast to int64 by the wrapper: 2**64 - 1 as uint64 is -1 there
    (refused), a valid index gives the int64 answer."""
    rng = np.random.default_rng(3)
    z, table = half_values(rng, (6, 4, 2, 11), False), single_values(rng, (3, 2, 11), False)
    pos, rows = rng.integers(0, 4, (6, 2)), rng.integers(0, 3, (6, 2))
    want = reference(z, pos, rows, table)
    for _ in both_paths(monkeypatch):
        same_bits(head_dot(z, pos.astype(dtype), rows.astype(dtype), table), want)
        if dtype == np.uint64:
            bad = rows.astype(np.uint64)
            bad[2, 1] = np.uint64(2 ** 64 - 1)
            with pytest.raises(ValueError, match="out of range"):
                head_dot(z, pos.astype(dtype), bad, table)


def test_float_indices_are_refused(monkeypatch):
    """Positions or rows as floats are refused, not truncated, on both paths."""
    rng = np.random.default_rng(4)
    z, table = half_values(rng, (6, 4, 2, 11), False), single_values(rng, (3, 2, 11), False)
    pos, rows = rng.integers(0, 4, (6, 2)), rng.integers(0, 3, (6, 2))
    for _ in both_paths(monkeypatch):
        for args in ((pos + 0.5, rows), (pos, rows.astype(np.float64))):
            with pytest.raises(ValueError, match="must be integers"):
                head_dot(z, *args, table)


# ---------------------------------------------------------------- byte order

@pytest.mark.parametrize("zdtype", [np.float16, np.float32])
def test_byte_swapped_inputs(zdtype, monkeypatch):
    """Byte-swapped z, pos and rows: converted by the wrapper, the native answer on both paths (z is read as
    float32, exact for float16). A byte-swapped table: ValueError on both paths. The kernel itself refuses
    every non-native buffer with ValueError."""
    rng = np.random.default_rng(17)
    e, p, h, d, a, r = 11, 4, 3, 13, 2, 5
    z = (half_values if zdtype == np.float16 else single_values)(rng, (e, p, h, d), True)
    table = single_values(rng, (r, h, d), True)
    pos, rows = rng.integers(0, p, (e, a)), rng.integers(0, r, (e, a))
    want = reference(z, pos, rows, table)

    def swapped(x: np.ndarray) -> np.ndarray:
        s = x.astype(x.dtype.newbyteorder())
        assert not s.dtype.isnative and np.array_equal(s.view(np.uint8), x.byteswap().view(np.uint8))
        return s

    for _ in both_paths(monkeypatch):
        same_bits(head_dot(swapped(z), pos, rows, table), want, "swapped z")
        same_bits(head_dot(z, swapped(pos), swapped(rows), table), want, "swapped pos, rows")
        same_bits(head_dot(swapped(z), swapped(pos), swapped(rows), table), want, "swapped z, pos, rows")
        with pytest.raises(ValueError, match="table"):
            head_dot(z, pos, rows, swapped(table))
    if KERNEL is not None:
        out = np.empty((e, a, h))
        for args in [(swapped(z), pos, rows, table, out), (z, swapped(pos), rows, table, out),
                     (z, pos, swapped(rows), table, out), (z, pos, rows, swapped(table), out),
                     (z, pos, rows, table, np.empty((e, a, h), np.dtype(np.float64).newbyteorder()))]:
            with pytest.raises(ValueError):
                KERNEL.head_dot(*args)


@needs_kernel
def test_the_kernel_refuses_bad_buffers_and_writes_every_output():
    rng = np.random.default_rng(5)
    z, table = half_values(rng, (9, 3, 2, 6), True), single_values(rng, (4, 2, 6), True)
    pos, rows = rng.integers(0, 3, (9, 2)), rng.integers(0, 4, (9, 2))
    out = np.full((9, 2, 2), np.nan)
    KERNEL.head_dot(z, pos, rows, table, out)
    same_bits(out, reference(z, pos, rows, table))
    read_only = np.empty((9, 2, 2))
    read_only.setflags(write=False)
    with np.errstate(over="ignore"):
        half_table = table.astype(np.float16)
    for args in [(z, pos, rows, table, read_only), (z, pos, rows, table, np.empty((9, 2, 4))[..., ::2]),
                 (z[..., ::2], pos, rows, table[..., ::2], out), (z, pos[:, :1], rows, table, out),
                 (z, pos, rows, table[:, :1], out), (z.astype(np.float64), pos, rows, table, out),
                 (z, pos.astype(np.uint64), rows, table, out), (z, pos, rows, half_table, out),
                 (z, pos, rows, table, out.astype(np.float32)), (z[0], pos, rows, table, out),
                 (z, pos.ravel(), rows.ravel(), table, out), (z, pos, rows, table, out.reshape(9, 4))]:
        with pytest.raises((ValueError, BufferError, TypeError)):
            KERNEL.head_dot(*args)
    with pytest.raises(TypeError):
        KERNEL.head_dot(z, pos, rows, table)


@needs_kernel
def test_threads_calling_at_once_give_the_same_bits():
    """The GIL is released for the loop and nothing is shared between calls: 2 threads, the same answers."""
    rng = np.random.default_rng(9)
    z, table = half_values(rng, (400, 6, 4, 24), True), single_values(rng, (7, 4, 24), True)
    pos, rows = rng.integers(0, 6, (400, 3)), rng.integers(0, 7, (400, 3))
    want = head_dot(z, pos, rows, table)
    results: list[np.ndarray] = []

    def work() -> None:
        for _ in range(20):
            results.append(head_dot(z, pos, rows, table))

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 40
    for got in results:
        same_bits(got, want)


RACE = textwrap.dedent("""
    import threading, numpy as np
    from actstore.query.head_dot import head_dot
    E = 400_000
    z, t = np.zeros((E, 4, 1, 4), np.float16), np.zeros((1, 1, 4), np.float32)
    pos, rows = np.zeros((E, 1), np.int64), np.zeros((E, 1), np.int64)
    stop = False
    def writer():
        while not stop:
            pos[-1, 0] = 1 << 40  # out of range: refused if seen by the check, a wild read if seen after it
            pos[-1, 0] = 0
    w = threading.Thread(target=writer)
    w.start()
    try:
        for _ in range(400):
            try:
                head_dot(z, pos, rows, t)
            except (ValueError, IndexError):
                pass
    finally:
        stop = True
        w.join()
    print("no crash")
""")


@needs_kernel
def test_positions_changed_by_another_thread_during_a_call_never_crash():
    """A position that another Python thread changes while a call runs gives ValueError or some answer, never
    a crash (a second interpreter: a crash must not take the test run with it)."""
    run = subprocess.run([sys.executable, "-c", RACE], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "no crash" in run.stdout, (run.returncode, run.stderr[-2000:])


# ---------------------------------------------------------------- one store, end to end

@pytest.fixture(scope="module")
def odd_head_store(tmp_path_factory):
    """A float16 store of 24 examples in 3 chunks from a tiny addition model with d_head 7 (not a multiple of 4
    or 8: the kernel's tail loops)."""
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    import actstore

    torch.set_num_threads(1)
    cfg = HookedTransformerConfig(n_layers=2, n_heads=3, d_model=30, d_head=7, d_mlp=32, n_ctx=16, d_vocab=12,
                                  act_fn="gelu", normalization_type="LN", seed=11, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(cfg)
    gen = torch.Generator().manual_seed(12)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.split(".")[-1].startswith("b_"):
                param.normal_(0, 0.2, generator=gen)
    model.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    model.eval()
    path = tmp_path_factory.mktemp("head-dot-v11") / "store"
    actstore.ingest("addition", model, 24, 5, path, dtype="float16", chunk=8, batch=8, quiet=True)
    return path


@pytest.mark.parametrize("target", ["diff", "correct"])
def test_a_stores_head_dla_is_the_same_with_the_numpy_code(odd_head_store, target, monkeypatch):
    import actstore
    from actstore.query.dla import dla

    store = actstore.open_store(odd_head_store)
    assert store.chunk_size == 8 and store.n_examples == 24
    kernel = dla(store, "head", target)
    heads = kernel.filter(pl.col("component").str.starts_with("L"))
    assert heads.height > 0
    with monkeypatch.context() as m:
        m.setattr(hd, "KERNEL", None)
        numpy_same_store = dla(store, "head", target)
        numpy_fresh = dla(actstore.open_store(odd_head_store), "head", target)  # nothing kept from the first
    assert kernel.equals(numpy_same_store)
    assert kernel.equals(numpy_fresh)
    assert dla(actstore.open_store(odd_head_store), "head", target).equals(kernel)
