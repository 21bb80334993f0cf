"""DLA heatmap and component bars: the numbers they draw match numpy on a real model's cache."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from chart_spec import chart_rows, find_key

from actstore.charts import component_bars, component_bars_by, dla_heatmap
from actstore.charts.tables import component_order, summarise
from actstore.errors import InvalidParameterError, UnknownColumnError


def test_heatmap_cells_are_head_means_per_answer(run):
    chart = dla_heatmap(run.dla)
    spec = chart.to_dict()
    rows = chart_rows(chart)
    n_answers, n_layers, n_heads = run.head_dla.shape[1:]
    assert len(rows) == n_answers * n_layers * n_heads  # one cell per (answer, layer, head), no raw rows
    for r in rows:
        a = int(r["answer"].split()[-1])
        want = run.head_dla[:, a, r["layer"], r["head"]].mean()
        assert r["mean"] == pytest.approx(want, rel=1e-9, abs=1e-12)
        assert r["ci_low"] < r["mean"] < r["ci_high"]
        assert r["n"] == run.head_dla.shape[0]
    inner = spec["spec"]
    assert inner["mark"]["type"] == "rect"
    assert inner["encoding"]["x"]["field"] == "head" and inner["encoding"]["y"]["field"] == "layer"
    colour = inner["encoding"]["color"]
    top = max(abs(r["mean"]) for r in rows)  # symmetric domain: equal colours, equal magnitudes
    assert colour["scale"]["scheme"] == "redblue"
    assert colour["scale"]["domain"] == pytest.approx([-top, top], rel=1e-12)
    assert {t["field"] for t in inner["encoding"]["tooltip"]} >= {"component", "mean", "n"}
    assert spec["facet"]["column"]["field"] == "answer"
    assert "per attention head" in spec["title"]["text"]


def test_heatmap_single_answer_is_not_faceted(run):
    one = run.dla.filter(pl.col("answer_idx") == 2)
    spec = dla_heatmap(one).to_dict()
    assert "facet" not in spec and spec["mark"]["type"] == "rect"


def test_component_bars_order_values_and_top(run):
    chart = component_bars(run.dla)
    rows = chart_rows(chart)
    spec = chart.to_dict()
    sort = find_key(spec, "sort")[0]
    assert sort == component_order(run.dla.get_column("component").unique().to_list())
    assert sort[:4] == ["L0H0", "L0H1", "L0H2", "mlp0"]  # residual order: heads before the layer's MLP
    by_key = {(r["answer"], r["component"]): r for r in rows}
    assert by_key[("answer 1", "mlp1")]["mean"] == pytest.approx(run.mlp_dla[:, 1, 1].mean())
    assert by_key[("answer 3", "L1H2")]["mean"] == pytest.approx(run.head_dla[:, 3, 1, 2].mean())
    marks = [layer["mark"]["type"] for layer in spec["layer"]]
    assert marks == ["bar", "errorbar"]

    top2 = chart_rows(component_bars(run.dla, top=2))
    sizes = summarise(run.dla.with_columns(answer=pl.col("answer_idx")), ["answer", "component"]) \
        .group_by("component").agg(pl.col("mean").abs().max()).sort("mean", descending=True)
    assert {r["component"] for r in top2} == set(sizes.get_column("component").head(2).to_list())


def test_single_answer_bars_use_a_diverging_scale(run):
    chart = component_bars(run.dla.filter(pl.col("answer_idx") == 0))
    scale = chart.to_dict()["layer"][0]["encoding"]["color"]["scale"]
    top = max(abs(r["mean"]) for r in chart_rows(chart) if "mean" in r)
    assert scale["scheme"] == "redblue" and scale["domain"] == pytest.approx([-top, top], rel=1e-12)


def test_carry_split_per_digit_matches_numpy(run):
    mapping = {0: "carry_0", 1: "carry_1", 2: "carry_2"}
    chart = component_bars_by(run.dla, run.examples, mapping, label_title="carry into this digit")
    rows = chart_rows(chart)
    carries = {i: run.examples.get_column(f"carry_{i}").to_numpy() for i in range(3)}
    for r in rows:
        a = int(r["answer"].split()[-1])
        if a == 3:
            assert r["split"] == "all"
            mask = np.ones(len(run.examples), dtype=bool)
        else:
            assert r["split"] in ("yes", "no")
            mask = carries[a] if r["split"] == "yes" else ~carries[a]
        comp = r["component"]
        values = run.mlp_dla[:, a, int(comp[3:])] if comp.startswith("mlp") else \
            run.head_dla[:, a, int(comp[1]), int(comp[3])]
        assert r["n"] == mask.sum()
        assert r["mean"] == pytest.approx(values[mask].mean())
    spec = chart.to_dict()
    assert spec["facet"]["field"] == "answer"
    assert "split by carry into this digit" in spec["title"]["text"]


def test_split_by_one_boolean_label(run):
    rows = chart_rows(component_bars_by(run.dla.filter(pl.col("answer_idx") == 0), run.examples, "any_carry"))
    assert {r["split"] for r in rows} == {"any_carry", "not any_carry"}


def test_errors_name_the_problem(run):
    with pytest.raises(UnknownColumnError, match="'component'"):
        dla_heatmap(run.dla.drop("component"))
    two = pl.concat([run.dla, run.dla.with_columns(target=pl.lit("diff"))])
    with pytest.raises(InvalidParameterError, match="target="):
        component_bars(two)
    assert len(chart_rows(component_bars(two, target="diff"))) > 0
    with pytest.raises(UnknownColumnError, match="no_such_label"):
        component_bars_by(run.dla, run.examples, "no_such_label")
    with pytest.raises(InvalidParameterError, match="level='head'"):
        dla_heatmap(run.dla.filter(pl.col("head").is_null()))


def test_split_by_a_label_with_too_many_values(run):
    with pytest.raises(InvalidParameterError, match="label 'sum' has .* values, too many"):
        component_bars_by(run.dla, run.examples, "sum")
