"""Attention by token role: heatmap cells and bars equal numpy averages of the real pattern."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from chart_spec import chart_rows, find_key

from actstore.charts import attention_heatmap, attention_role_bars
from actstore.charts.attention import role_order, role_summary
from actstore.errors import InvalidParameterError


def test_roles_are_ordered_by_position(run):
    assert role_order(run.attention) == run.roles  # addition: every position has its own role


def test_role_summary_counts_unseen_keys_as_zero(run):
    summary = role_summary(run.attention.filter((pl.col("layer") == 0) & (pl.col("head") == 0)))
    n_examples, n_pos = run.pattern.shape[0], run.pattern.shape[-1]
    assert summary.height == n_pos * n_pos  # every (query role, key role), attended or not
    assert set(summary.get_column("n").to_list()) == {n_examples}
    sums = summary.group_by("q_role").agg(pl.col("mean").sum()).get_column("mean").to_numpy()
    np.testing.assert_allclose(sums, 1.0, atol=1e-5)
    pos = {r: i for i, r in enumerate(run.roles)}
    for r in summary.iter_rows(named=True):   # std over examples, zeros included (ddof=1)
        want = run.pattern[:, 0, 0, pos[r["q_role"]], pos[r["k_role"]]]
        assert r["std"] == pytest.approx(want.std(ddof=1), abs=1e-6)
        assert r["ci_high"] - r["ci_low"] == pytest.approx(2 * 1.959964 * want.std(ddof=1) / np.sqrt(n_examples),
                                                           abs=1e-6)


def test_heatmap_cells_match_pattern_means(run):
    chart = attention_heatmap(run.attention)
    rows = chart_rows(chart)
    pos = {r: i for i, r in enumerate(run.roles)}
    n_layers, n_heads, n_pos = run.pattern.shape[1], run.pattern.shape[2], run.pattern.shape[3]
    assert len(rows) == n_layers * n_heads * n_pos * n_pos
    for r in rows:
        want = run.pattern[:, r["layer"], r["head"], pos[r["q_role"]], pos[r["k_role"]]].mean()
        assert r["mean"] == pytest.approx(want, abs=1e-6)
    row_sums = pl.DataFrame(rows).group_by("head_label", "q_role").agg(pl.col("mean").sum()).get_column("mean")
    np.testing.assert_allclose(row_sums.to_numpy(), 1.0, atol=1e-5)
    spec = chart.to_dict()
    enc = spec["spec"]["encoding"]
    assert enc["x"]["field"] == "k_role" and enc["y"]["field"] == "q_role"
    assert enc["x"]["sort"] == run.roles
    assert enc["color"]["scale"]["domainMin"] == 0
    assert spec["facet"]["field"] == "head_label"
    assert spec["title"]["text"] == "Average attention pattern by token role"


def test_heatmap_head_selection_and_limit(run):
    rows = chart_rows(attention_heatmap(run.attention, heads=[(1, 2)]))
    assert {r["head_label"] for r in rows} == {"L1H2"}
    with pytest.raises(InvalidParameterError, match="heads="):
        attention_heatmap(run.attention, heads=[(7, 7)])


def test_role_bars_from_equals_split_by_carry(run):
    chart = attention_role_bars(run.attention, query_role="=", key_roles=["a0", "b0", "a3", "b3"],
                                examples=run.examples, group_by="any_carry")
    rows = chart_rows(chart)
    pos = {r: i for i, r in enumerate(run.roles)}
    carry = run.examples.get_column("any_carry").to_numpy()
    q = pos["="]
    assert {r["k_role"] for r in rows} == {"a0", "b0", "a3", "b3"}
    for r in rows:
        mask = carry if r["split"] == "true" else ~carry
        want = run.pattern[mask, r["layer"], r["head"], q, pos[r["k_role"]]]
        assert r["mean"] == pytest.approx(want.mean(), abs=1e-6)
        assert r["n"] == mask.sum()
    spec = chart.to_dict()
    assert spec["facet"]["row"]["field"] == "split"
    assert find_key(spec, "xOffset")[0]["field"] == "k_role"
    assert "Attention from =" in spec["title"]["text"]


def test_role_bars_errors(run):
    with pytest.raises(InvalidParameterError, match="'END'"):
        attention_role_bars(run.attention, query_role="END")
    with pytest.raises(InvalidParameterError, match="examples="):
        attention_role_bars(run.attention, query_role="=", group_by="any_carry")
    with pytest.raises(InvalidParameterError, match=r"\['IO'\]"):
        attention_role_bars(run.attention, query_role="=", key_roles=["IO"])
