"""Fuzz 52c0005 (and its follow-ups): each MLP's output at the answers through head_dot (hook_post as one 'head' of
width d_mlp), on the reading threads for levels 'head' and 'layer', and head_dot.py's numpy code that now sums the
lanes in one np.add.reduce over a transposed copy, + 0.0.

- numpy_head_dot (and the kernel, where built) against a pure-Python loop of the documented order (four running
  float64 sums over d mod 4, each in order of d, then (s0 + s1) + (s2 + s3)), bit for bit: one head of MLP width
  (d not a multiple of 4, one output row: the reduce's [group, 1, lane] layout), magnitudes mixed so that any other
  summation order (pairwise, blocked) shows, rows of only -0.0 products, more examples than one numpy block.
- A store of a model with odd widths (d_head 5, d_mlp 13): dla tables for 'head' / 'layer' / 'path' the same bits
  with the kernel and with the numpy code, for any split of the examples into read ranges; mlp{l} equal to a
  float64 computation from the raw stored arrays and weights, and to level 'neuron''s sum of L{l}N* + mlp_bias{l};
  the components summing to logit - b_U.
- hook_post stored at the answers only (float16): the same mlp{l} bits as the all-positions store, both paths.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "query"))
sys.path.insert(0, str(Path(__file__).parents[1]))
from query_models import tiny_model  # noqa: E402
import query_models  # noqa: E402

import actstore  # noqa: E402
from actstore.query import dla  # noqa: E402
from actstore.query import head_dot as hd  # noqa: E402
from actstore.query.dla import DlaPlan  # noqa: E402

KERNEL = hd.KERNEL
ODD = ("addition", dict(n_layers=2, n_heads=3, d_model=20, d_head=5, d_mlp=13, n_ctx=16, d_vocab=12,
                        act_fn="gelu", normalization_type="LN"))


# ---------------------------------------------------------------- numpy_head_dot against the documented order

def documented(z: np.ndarray, pos: np.ndarray, rows: np.ndarray, table: np.ndarray) -> np.ndarray:
    e, a = pos.shape
    h, d = z.shape[2], z.shape[3]
    zf, tf = z.astype(np.float64).tolist(), table.astype(np.float64).tolist()
    out = np.empty((e, a, h))
    for i in range(e):
        for j in range(a):
            for k in range(h):
                zr, tr = zf[i][int(pos[i, j])][k], tf[int(rows[i, j])][k]
                s = [0.0, 0.0, 0.0, 0.0]
                for q in range(d):
                    s[q & 3] += zr[q] * tr[q]
                out[i, j, k] = (s[0] + s[1]) + (s[2] + s[3])
    return out


def numpy_path(z, pos, rows, table) -> np.ndarray:
    saved = hd.KERNEL
    hd.KERNEL = None
    try:
        return hd.head_dot(z, pos, rows, table)
    finally:
        hd.KERNEL = saved


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("d", [0, 1, 2, 3, 4, 5, 7, 8, 9, 13, 33, 257, 3075])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_one_wide_head_in_the_documented_order(d, dtype):
    rng = np.random.default_rng(d * 7 + (dtype == np.float16))
    for e, a in [(1, 1), (2, 3), (3, 1)]:
        # magnitudes over 12 decades: any other summation order changes the low bits
        z = (rng.standard_normal((e, 4, 1, d)) * 10.0 ** rng.integers(-3, 4, (e, 4, 1, d))).astype(dtype)
        t = (rng.standard_normal((3, 1, d)) * 10.0 ** rng.integers(-6, 6, (3, 1, d))).astype(np.float32)
        pos, rows = rng.integers(0, 4, (e, a)), rng.integers(0, 3, (e, a))
        want = documented(z, pos, rows, t)
        assert same_bits(numpy_path(z, pos, rows, t), want), (d, e, a)
        if KERNEL is not None:
            assert same_bits(hd.head_dot(z, pos, rows, t), want), (d, e, a)


def test_negative_zero_rows_and_many_examples():
    rng = np.random.default_rng(12)
    d = 13
    z = rng.standard_normal((400, 3, 1, d)).astype(np.float16)
    t = rng.standard_normal((2, 1, d)).astype(np.float32)
    z[:50] = -np.abs(z[:50])  # rows of only -0.0 products: -x * +0.0 and +x * -0.0
    t[0] = 0.0
    z[50:100] = 0.0
    t[1, 0, ::2] = -0.0
    pos, rows = rng.integers(0, 3, (400, 2)), rng.integers(0, 2, (400, 2))
    rows[:100] = 0
    want = documented(z, pos, rows, t)
    got = numpy_path(z, pos, rows, t)
    assert same_bits(got, want)
    assert not np.signbit(got[:100]).any()  # the kernel's sums start at +0.0
    # more examples than one block of the numpy code ([example, answer, 1, 3072] rows, 42 examples a block)
    wide = rng.standard_normal((100, 2, 1, 3072)).astype(np.float16)
    wt = (rng.standard_normal((5, 1, 3072)) * 10.0 ** rng.integers(-4, 4, (5, 1, 3072))).astype(np.float32)
    p, r = rng.integers(0, 2, (100, 1)), rng.integers(0, 5, (100, 1))
    got = numpy_path(wide, p, r, wt)
    assert same_bits(got[:3], documented(wide[:3], p[:3], r[:3], wt))
    assert same_bits(got[-3:], documented(wide[-3:], p[-3:], r[-3:], wt))
    if KERNEL is not None:
        assert same_bits(hd.head_dot(wide, p, r, wt), got)
        assert same_bits(hd.head_dot(z, pos, rows, t), want)


# ---------------------------------------------------------------- stores

@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlp_products_v12")
    query_models.SHAPES["odd_v12"] = ODD  # not left there: tests/query parametrize over SHAPES
    try:
        model = tiny_model("odd_v12")
    finally:
        del query_models.SHAPES["odd_v12"]
    kw = dict(chunk=16, batch=8, quiet=True, dtype="float16")
    full = actstore.ingest("addition", model, 40, 3, tmp / "full", hooks=["default"], **kw)
    answer = actstore.ingest("addition", model, 40, 3, tmp / "answer", positions="answer", **kw)
    return full.path, answer.path


def plan_table(path, level, target, ranges, kernel: bool) -> pl.DataFrame:
    saved = hd.KERNEL
    hd.KERNEL = KERNEL if kernel else None
    try:
        plan = DlaPlan(actstore.open_store(path), level, target, None, 0, None)
        return pl.concat(list(plan.partials(ranges))).sort("example_id", "answer_idx", "component")
    finally:
        hd.KERNEL = saved


@pytest.mark.parametrize("level", ["head", "layer", "path"])
def test_kernel_numpy_and_read_ranges_give_the_same_bits(stores, level):
    path = stores[0]
    for target in ["correct", "diff"]:
        want = None
        for ranges in ([(0, 16), (16, 32), (32, 40)], [(0, 40)], [(0, 3), (3, 17), (17, 39), (39, 40)]):
            for kernel in ([True, False] if KERNEL is not None else [False]):
                got = plan_table(path, level, target, ranges, kernel)
                if want is None:
                    want = got
                assert got.drop("value").equals(want.drop("value")), (level, target, ranges, kernel)
                assert same_bits(got["value"].to_numpy(), want["value"].to_numpy()), (level, target, ranges, kernel)


def test_mlp_values_equal_float64_from_raw_arrays(stores):
    store = actstore.open_store(stores[0])
    out = store.outputs.sort("example_id", "answer_idx")
    ex, ap = out["example_id"].to_numpy(), out["answer_pos"].to_numpy()
    tok = out["correct_token"].to_numpy()
    w_u = store.param("unembed.W_U").astype(np.float64)
    scale = store.read("ln_final.hook_scale", 0, store.n_examples).astype(np.float64)[ex, ap, 0]
    head = dla(store, level="head").sort("example_id", "answer_idx")
    neuron = dla(store, level="neuron")
    for layer in range(2):
        post = store.read(f"blocks.{layer}.mlp.hook_post", 0, store.n_examples).astype(np.float64)[ex, ap]
        w_out = store.param(f"blocks.{layer}.mlp.W_out").astype(np.float64)
        b_out = store.param(f"blocks.{layer}.mlp.b_out").astype(np.float64)
        want = np.einsum("nm,mn->n", post @ w_out + b_out, w_u[:, tok]) / scale
        got = head.filter(pl.col("component") == f"mlp{layer}")["value"].to_numpy()
        summed = (neuron.filter(pl.col("component").str.starts_with(f"L{layer}N")
                                | (pl.col("component") == f"mlp_bias{layer}"))
                  .group_by("example_id", "answer_idx").agg(pl.col("value").sum())
                  .sort("example_id", "answer_idx")["value"].to_numpy())
        size = np.abs(want).max()
        assert got.shape == want.shape and size > 0
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * size)
        np.testing.assert_allclose(summed, got, rtol=0, atol=1e-6 * size)
    b_u = store.param("unembed.b_U").astype(np.float64)
    totals = head.group_by("example_id", "answer_idx").agg(pl.col("value").sum()).sort("example_id", "answer_idx")
    want_total = out["correct_logit"].to_numpy().astype(np.float64) - b_u[tok]
    np.testing.assert_allclose(totals["value"].to_numpy(), want_total, rtol=0, atol=3e-3)  # float16 store


def test_answer_only_hook_post_gives_the_same_bits(stores):
    full, answer = stores
    assert actstore.open_store(answer).hook_info("blocks.0.mlp.hook_post").positions == "answer"
    for level in ["head", "layer"]:
        for target in ["correct", "diff", 3]:
            want = dla(actstore.open_store(full), level=level, target=target)
            for kernel in ([True, False] if KERNEL is not None else [False]):
                hd.KERNEL = KERNEL if kernel else None
                try:
                    got = dla(actstore.open_store(answer), level=level, target=target)
                finally:
                    hd.KERNEL = KERNEL
                assert got.drop("value").equals(want.drop("value")), (level, target, kernel)
                assert same_bits(got["value"].to_numpy(), want["value"].to_numpy()), (level, target, kernel)
