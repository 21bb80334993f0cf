"""The pure attention math: candidate keys, unit masses, entropy, and merging per-chunk moments."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actstore.errors import InvalidParameterError
from actstore.query.attention_stats import (
    GroupKeys, Moments, candidate_keys, row_entropy, selected_pairs, unit_masses)


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3), st.floats(0, 1)), min_size=1, max_size=60),
       st.integers(1, 6))
def test_merged_moments_equal_one_pass(rows, n_parts):
    """Splitting the units into any number of parts and merging gives the one-pass mean/std/n per group."""
    df = pl.DataFrame(rows, schema={"a": pl.Int64, "b": pl.Int64, "value": pl.Float64}, orient="row")
    df = df.with_columns(entropy=pl.col("value") * 2)
    keys = GroupKeys([3, 4])
    key = keys.encode([df["a"].to_numpy(), df["b"].to_numpy()])
    cut = np.linspace(0, df.height, n_parts + 1).astype(int)
    parts = [Moments.of(key[a:b], df["value"].to_numpy()[a:b], df["entropy"].to_numpy()[a:b])
             for a, b in zip(cut[:-1], cut[1:]) if b > a]
    got = Moments.merge(parts)
    want = df.group_by("a", "b").agg(mean=pl.col("value").mean(), std=pl.col("value").std(), n=pl.len(),
                                     entropy=pl.col("entropy").mean()).sort("a", "b")
    a, b = keys.decode(got.keys)
    assert a.tolist() == want["a"].to_list() and b.tolist() == want["b"].to_list()  # keys sort like the columns
    np.testing.assert_allclose(got.mean, want["mean"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.nan_to_num(got.std(), nan=-1), want["std"].fill_null(-1), rtol=1e-7, atol=1e-9)
    np.testing.assert_array_equal(got.n, want["n"])
    np.testing.assert_allclose(got.entropy(), want["entropy"], rtol=1e-9, atol=1e-12)


def test_group_keys_refuse_overflow():
    with pytest.raises(InvalidParameterError, match="too many possible groups"):
        GroupKeys([2 ** 31, 2 ** 31, 4], "attention by")


def test_candidates_masses_and_entropy_by_hand():
    # one example of length 3 in a width-4 store, one head; query rows at positions 0..3
    # [row, head, key]
    p = np.array([[1.0, 0, 0, 0], [0.25, 0.75, 0, 0], [0.5, 0.25, 0.25, 0], [0.9, 0.1, 0, 0]])[:, None]
    q_pos = np.arange(4)
    cand = candidate_keys(q_pos, np.full(4, 3), 4, causal=True)  # [row, key]
    assert cand.astype(int).tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 0]]
    assert candidate_keys(q_pos, np.full(4, 3), 4, causal=False).sum() == 12
    h1 = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75))
    h2 = -(0.5 * np.log(0.5) + 0.5 * np.log(0.25))
    np.testing.assert_allclose(row_entropy(p, cand)[:3, 0], [0, h1, h2])
    # selected_pairs on the [example, query, key] layout, then rows 1 and 2 (queries at positions 1, 2)
    q_sel = np.array([[False, True, True, False]])
    k_sel = np.array([[False, True, True, False]])  # keys 1 and 2
    pairs = selected_pairs(q_sel, k_sel, cand[None])[0][1:3]  # [row, key]
    assert pairs.astype(int).tolist() == [[0, 1, 0, 0], [0, 1, 1, 0]]
    mass, exists = unit_masses(p[1:3], pairs, "all")
    assert exists[:, 0].tolist() == [True, True]
    np.testing.assert_allclose(mass[:, 0, 0], [0.75, 0.5])
    roles = np.array([[0, 1, 1, -1]] * 2)  # keys 1 and 2 share role 1
    mass, exists = unit_masses(p[1:3], pairs, "role", key_roles=roles, n_roles=2)
    assert exists.tolist() == [[False, True, False], [False, True, False]]
    np.testing.assert_allclose(mass[1, 0], [0, 0.5, 0])
    mass, exists = unit_masses(p[1:3], pairs, "pos")
    assert exists[1].tolist() == [False, True, True, False]
    np.testing.assert_allclose(mass[1, 0], [0, 0.25, 0.25, 0])
