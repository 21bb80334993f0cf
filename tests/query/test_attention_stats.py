"""The pure attention math: candidate keys, unit masses, entropy, and merging per-chunk moments."""

from __future__ import annotations

import numpy as np
import polars as pl
from hypothesis import given
from hypothesis import strategies as st

from actstore.query.attention_stats import (
    candidate_keys, merge_moments, partial_moments, row_entropy, selected_pairs, unit_masses)


@given(st.lists(st.tuples(st.integers(0, 2), st.floats(0, 1)), min_size=1, max_size=60), st.integers(1, 6))
def test_merged_moments_equal_one_pass(rows, n_parts):
    """Splitting the units into any number of parts and merging gives the one-pass mean/std/n."""
    df = pl.DataFrame({"g": [r[0] for r in rows], "value": [r[1] for r in rows]},
                      schema={"g": pl.Int64, "value": pl.Float64})
    df = df.with_columns(entropy=pl.col("value") * 2)
    cut = np.linspace(0, df.height, n_parts + 1).astype(int)
    parts = [partial_moments(df.slice(a, b - a), ["g"]) for a, b in zip(cut[:-1], cut[1:]) if b > a]
    got = merge_moments(pl.concat(parts), ["g"]).sort("g")
    want = df.group_by("g").agg(mean=pl.col("value").mean(), std=pl.col("value").std(), n=pl.len(),
                                entropy=pl.col("entropy").mean()).sort("g")
    np.testing.assert_allclose(got["mean"], want["mean"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got["std"].fill_null(-1), want["std"].fill_null(-1), rtol=1e-7, atol=1e-9)
    np.testing.assert_array_equal(got["n"], want["n"])
    np.testing.assert_allclose(got["entropy"], want["entropy"], rtol=1e-9, atol=1e-12)


def test_merge_without_groups():
    df = pl.DataFrame({"value": [0.1, 0.5, 0.9, 0.3], "entropy": [1.0, 2.0, 3.0, 4.0]})
    got = merge_moments(pl.concat([partial_moments(df.head(1), []), partial_moments(df.tail(3), [])]), [])
    assert got.columns == ["mean", "std", "n", "entropy"]
    np.testing.assert_allclose(got.row(0), (0.45, np.std([0.1, 0.5, 0.9, 0.3], ddof=1), 4, 2.5))


def test_candidates_masses_and_entropy_by_hand():
    # one example of length 3 in a width-4 store, one head; query entries at positions 0..3
    p = np.array([[[[1.0, 0, 0, 0], [0.25, 0.75, 0, 0], [0.5, 0.25, 0.25, 0], [0.9, 0.1, 0, 0]]]])
    q_pos = np.arange(4)[None]
    cand = candidate_keys(q_pos, np.array([3]), 4, causal=True)
    assert cand[0].astype(int).tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 0]]
    np.testing.assert_allclose(row_entropy(p, cand)[0, 0, :3],
                               [0, -(0.25 * np.log(0.25) + 0.75 * np.log(0.75)), -(0.5 * np.log(0.5) + 0.5 * np.log(0.25))])
    q_sel = np.array([[False, True, True, False]])
    k_sel = np.array([[False, True, True, False]])  # keys 1 and 2
    pairs = selected_pairs(q_sel, k_sel, cand)
    mass, exists = unit_masses(p, pairs, "all")
    assert exists[0, :, 0].tolist() == [False, True, True, False]
    np.testing.assert_allclose(mass[0, 0, 1:3, 0], [0.75, 0.5])
    roles = np.array([[0, 1, 1, -1]])  # keys 1 and 2 share role 1
    mass, exists = unit_masses(p, pairs, "role", key_roles=roles, n_roles=2)
    assert exists[0, 1].tolist() == [False, True, False] and exists[0, 2].tolist() == [False, True, False]
    np.testing.assert_allclose(mass[0, 0, 2], [0, 0.5, 0])
    mass, exists = unit_masses(p, pairs, "pos")
    assert exists[0, 2].tolist() == [False, True, True, False]
