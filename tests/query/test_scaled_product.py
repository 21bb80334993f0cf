"""The cast that leaves float16 values times 2**-112 (chunk_read.scaled_float32_into) and the head products
made from them with the folded table times 2**112 (attribution.scaled_table): the same bits as the cast
values with the table itself, for every finite float16 and tables at the edges of the scalable range."""

from __future__ import annotations

import numpy as np
import pytest

from actstore.query import chunks as chunks_mod
from actstore.query.attribution import COMPUTE, compute_table, head_values, scaled_table
from actstore.query.chunks import answer_product, at_answers
from actstore.query.readout import Readout, Weights
from actstore.store import chunk_read
from actstore.store.arch import Arch
from actstore.store.chunk_read import SCALED, scaled_float32_into

EVERY = np.arange(1 << 16, dtype=np.uint16)
FINITE = EVERY[(EVERY & 0x7C00) != 0x7C00].view(np.float16)  # 63488 values: subnormals, both zeros, +-65504
UP = np.float32(1 / SCALED)


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint32 if a.dtype == np.float32 else np.uint64)


def test_scaled_cast_is_the_cast_times_scaled_for_every_finite_value() -> None:
    """Every finite float16, contiguous and strided, across blocks: True, and each value x * 2**-112 exactly."""
    for a in (FINITE.reshape(-1, 8), FINITE.reshape(-1, 8)[:, 1:6], FINITE[::-1].reshape(-1, 4)[::2]):
        out = np.empty(a.shape, dtype=np.float32)
        assert scaled_float32_into(a, out)
        want = a.astype(np.float32)
        np.testing.assert_array_equal(bits(out), bits((want.astype(np.float64) * SCALED).astype(np.float32)))
        np.testing.assert_array_equal(bits(out * UP), bits(want))


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan, 0x7E01, 0xFE7F])  # the last two: NaNs with payloads
@pytest.mark.parametrize("where", [0, -1])
def test_scaled_cast_of_a_block_with_inf_or_nan_gives_the_values_themselves(bad: float, where: int) -> None:
    """One inf or NaN in the first or the last of several blocks: False, and every value (the blocks before it
    too) bit for bit numpy's cast."""
    n = 2 * chunk_read._CAST_BLOCK + 3 * FINITE.size // 7
    a = np.resize(FINITE, n)
    if isinstance(bad, int):
        a.view(np.uint16)[where] = bad
    else:
        a[where] = bad
    out = np.empty(a.shape, dtype=np.float32)
    assert not scaled_float32_into(a.reshape(-1, 1), out.reshape(-1, 1))
    np.testing.assert_array_equal(bits(out), bits(a.astype(np.float32)))


def edge_table(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """float32 values across the whole scalable range: magnitudes 2**-102 .. 2**14 less an ulp, both signs, zeros."""
    top = np.nextafter(np.float32(2.0 ** 14), np.float32(0))
    size = int(np.prod(shape))
    mags = np.exp2(rng.uniform(-102, 14, size)).astype(np.float32)
    mags = np.clip(mags, np.float32(2.0 ** -102), top)
    mags[: 8] = [2.0 ** -102, top, 0, 1, 2.0 ** -102, top, 0, 2.0 ** -101]
    return (mags * rng.choice(np.array([-1, 1], dtype=np.float32), size)).reshape(shape)


def test_scaled_products_are_the_products_bit_for_bit() -> None:
    """head_values of scaled values with the table times 2**112 equal head_values of the values with the table,
    bit for bit, over every finite float16 (each against tables at the range's edges), also for the
    differences of two table rows (target 'diff')."""
    rng = np.random.default_rng(0)
    for d_head in (24, 5, 128):
        n = FINITE.size // d_head * 4 * d_head
        x = np.resize(FINITE[rng.permutation(FINITE.size)], n).reshape(-1, 2, 2, d_head)
        true = x.astype(np.float32)
        scaled = np.empty_like(true)
        assert scaled_float32_into(x, scaled)
        table = edge_table(rng, (9, 2, d_head))
        correct, counter = rng.integers(0, 9, size=(2, *x.shape[:2]))
        up = table * UP
        np.testing.assert_array_equal(bits(head_values(scaled, up[correct])), bits(head_values(true, table[correct])))
        np.testing.assert_array_equal(bits(head_values(scaled, up[correct] - up[counter])),
                                      bits(head_values(true, table[correct] - table[counter])))


def test_answer_product_takes_the_scaled_product_per_block_and_the_plain_one_for_inf_or_nan(monkeypatch) -> None:
    """A Product with `scaled`: blocks of finite values go to it, a block holding inf or NaN to the Product itself,
    and the result is the plain product of the whole gathered array, bit for bit."""
    monkeypatch.setattr(chunks_mod, "PRODUCT_BLOCK", 1 << 10)
    monkeypatch.setattr(chunk_read, "_CAST_BLOCK", 1 << 8)  # several cast blocks per product block
    rng = np.random.default_rng(2)
    dims = ("example", "pos", "head", "d_head")
    array = np.resize(FINITE[rng.permutation(FINITE.size)], 300 * 7 * 2 * 8).reshape(300, 7, 2, 8)
    array[250, 3, 1, 5] = np.nan  # in a late cast block of a late product block
    pos = np.tile([2, 3, 4], (300, 1))
    table = edge_table(rng, (300, 3, 2, 8))
    paths: list[str] = []

    class Product:
        def __call__(self, z: np.ndarray, rows: slice) -> np.ndarray:
            paths.append("plain")
            return head_values(z, table[rows])

        def scaled(self, z: np.ndarray, rows: slice) -> np.ndarray:
            paths.append("scaled")
            return head_values(z, table[rows] * UP)

    got = answer_product(array, dims, pos, np.float32, Product())
    want = head_values(at_answers(array, dims, pos, np.float32), table)
    np.testing.assert_array_equal(bits(got), bits(want))
    assert paths.count("plain") == 1 and paths.count("scaled") >= 3 and paths[-1] == "scaled"


@pytest.mark.parametrize("factor, scalable", [(1.0, True), (1e9, False), (1e-36, False)])
def test_scaled_table_only_where_every_value_is_in_range(tiny_store, factor: float, scalable: bool) -> None:
    """scaled_table is compute_table times 2**112 (exact) for a model's own weights, and None where W_O makes
    some folded value too big (>= 2**14) or too small (below 2**-102, not 0) to scale safely."""
    store = tiny_store("ln_mlp", "float16")
    params = {name: store.param(name) for name in store.param_names}
    params[Arch.attn_weight(0, "W_O")] = params[Arch.attn_weight(0, "W_O")].astype(np.float64) * factor
    readout = Readout(Weights(store.arch, params), np.arange(5))
    got = scaled_table(readout, "head", 0)
    table = compute_table(readout, "head", 0)
    assert table.dtype == COMPUTE
    if not scalable:
        assert got is None
        return
    assert got is not None and scaled_table(readout, "head", 0) is got  # kept on the readout
    np.testing.assert_array_equal(bits(got / UP), bits(table))
