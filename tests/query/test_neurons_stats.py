"""Streaming top-k per neuron and Pearson r with a label equal the same reductions of the full table."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from query_models import N_EXAMPLES
from hypothesis import given
from hypothesis import strategies as st

from actstore.errors import InvalidParameterError, UnknownColumnError
from actstore.query import neurons
from actstore.query.neuron_rows import NeuronRows, TopK
from actstore.query.neuron_stats import Comoments, neuron_correlation


def full_top(table: pl.DataFrame, k: int, by: str) -> pl.DataFrame:
    desc = not by.startswith("-")
    col = by.lstrip("-")
    return (table.sort([col, "example_id", "pos"], descending=[desc, False, False])
            .group_by("neuron", maintain_order=True).head(k).sort("neuron", maintain_order=True)
            .select(table.columns))


@pytest.mark.parametrize("rank_by", ["projection", "-activation"])
def test_top_k_equals_sorting_the_full_table(tiny_store, rank_by):
    """Over three chunks; '-activation' on a ReLU model is mostly ties at 0: the earliest rows win."""
    store = tiny_store("bidir")
    full = neurons(store, 1, direction="diff", pos=[1, 2])
    top = neurons(store, 1, direction="diff", pos=[1, 2], top_k=3, rank_by=rank_by)
    assert top.columns == [*full.columns, "rank"]
    assert top.height == 24 * 3 and top["rank"].to_list()[:3] == [1, 2, 3]
    want = full_top(full, 3, rank_by)
    assert top.drop("rank").equals(want)
    if rank_by == "-activation":
        assert (top["activation"] == 0).sum() > 24  # the tie-breaking was really exercised


@given(st.integers(1, 5), st.lists(st.integers(1, 7), min_size=1, max_size=5), st.integers(0, 2**31))
def test_top_k_merging_any_chunking(k, sizes, seed):
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    values = rng.integers(0, 4, size=(n, 3)).astype(np.float64)  # many ties
    best = TopK(k, "projection")
    start = 0
    for size in sizes:
        sl = slice(start, start + size)
        best.add(NeuronRows(np.arange(n)[sl], np.zeros(size, np.int64), values[sl].astype(np.float32), values[sl]))
        start += size
    got = best.frame(0)
    for neuron in range(3):
        order = sorted(range(n), key=lambda i: (-values[i, neuron], i))[:k]
        assert got.filter(pl.col("neuron") == neuron)["example_id"].to_list() == order


@given(st.lists(st.integers(1, 9), min_size=1, max_size=6), st.integers(0, 2**31))
def test_comoments_equal_corrcoef(sizes, seed):
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    y = rng.normal(size=n) + 1e3  # an offset raw sums would lose precision on
    x = np.stack([y * 2 + rng.normal(size=n), rng.normal(size=n) - 5e3], axis=1)
    m = Comoments(2)
    start = 0
    for size in sizes:
        m.add(x[start:start + size], y[start:start + size])
        start += size
    assert m.n == n
    if n > 2:
        want = [np.corrcoef(x[:, j], y)[0, 1] for j in range(2)]
        np.testing.assert_allclose(m.r(), want, rtol=1e-9, atol=1e-12)


def test_correlation_with_open_proportion(tiny_store):
    store = tiny_store("bidir")
    full = neurons(store, 0, through_head="2.0", pos=1).join(
        store.examples.select("example_id", "open_proportion"), on="example_id")
    for value in ("activation", "projection"):
        r = neuron_correlation(store, 0, "open_proportion", value=value, through_head="2.0", pos=1)
        assert r.columns == ["layer", "neuron", "r", "n"] and r["n"].unique().to_list() == [N_EXAMPLES]
        for neuron in (0, 5, 17):
            rows = full.filter(pl.col("neuron") == neuron)
            x, y = rows[value].to_numpy().astype(np.float64), rows["open_proportion"].to_numpy()
            want = np.corrcoef(x, y)[0, 1] if x.std() > 0 else np.nan
            np.testing.assert_allclose(r["r"][neuron], want, rtol=1e-6, atol=1e-9)
    assert (r["r"].abs().drop_nans() <= 1 + 1e-12).all()


def test_correlation_filtered_and_refused(tiny_store):
    store = tiny_store("bidir")
    kept = store.examples.filter(pl.col("balanced")).height
    r = neuron_correlation(store, 1, "n_brackets", where={"balanced": True})
    assert r["n"].unique().to_list() == [kept] and 0 < kept < N_EXAMPLES
    with pytest.raises(InvalidParameterError, match="label 'failure' is String, not numeric"):
        neuron_correlation(store, 1, "failure")
    with pytest.raises(UnknownColumnError, match="'open_prop' is not a label"):
        neuron_correlation(store, 1, "open_prop")
    with pytest.raises(InvalidParameterError, match="value must be one of activation, projection"):
        neuron_correlation(store, 1, "open_proportion", value="post")
