"""Neuron projection vs a numeric label: the chosen neurons and the plotted points."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from chart_spec import chart_rows

from actstore.charts import neuron_scatter
from actstore.errors import InvalidParameterError


def test_top_neurons_are_the_most_variable(run):
    chart = neuron_scatter(run.neurons, run.examples, x="a", color="any_carry", top_k=3, direction="W_U[:, 0]")
    rows = chart_rows(chart)
    p0 = run.answer_pos[:, 0]
    proj = run.post[np.arange(len(p0)), :, p0] * run.neuron_dir[None]   # [example, layer, d_mlp]
    spread = proj.std(axis=0, ddof=1).ravel()
    top = np.argsort(-spread, kind="stable")[:3]
    want = {f"L{i // proj.shape[2]}N{i % proj.shape[2]}" for i in top}
    assert {r["unit"] for r in rows} == want
    a = run.examples.get_column("a").to_numpy()
    for r in rows[:50]:
        layer, neuron = (int(v) for v in r["unit"][1:].split("N"))
        assert r["projection"] == pytest.approx(proj[r["example_id"], layer, neuron])
        assert r["a"] == a[r["example_id"]]
    spec = chart.to_dict()
    enc = spec["spec"]["encoding"]
    assert enc["x"]["field"] == "a" and enc["x"]["type"] == "quantitative"
    assert enc["color"]["field"] == "any_carry" and enc["color"]["type"] == "nominal"
    assert spec["spec"]["mark"]["type"] == "circle"
    assert "W_U[:, 0]" in spec["title"]["text"]


def test_layer_sum_and_explicit_neurons(run):
    rows = chart_rows(neuron_scatter(run.neurons, run.examples, x="sum", which="sum"))
    p0 = run.answer_pos[:, 0]
    total = (run.post[np.arange(len(p0)), :, p0] * run.neuron_dir[None]).sum(-1)   # [example, layer]
    assert len(rows) == total.size
    for r in rows:
        layer = int(r["unit"][1])
        assert r["projection"] == pytest.approx(total[r["example_id"], layer], abs=1e-5)  # float32 vs float64 sums
    rows = chart_rows(neuron_scatter(run.neurons.filter(pl.col("layer") == 1), run.examples, x="a", which=[3, 5]))
    assert {r["unit"] for r in rows} == {"L1N3", "L1N5"}


def test_sampling_and_errors(run, monkeypatch):
    import actstore.charts.neurons as mod

    monkeypatch.setattr(mod, "MAX_POINTS", 100)
    assert len(chart_rows(neuron_scatter(run.neurons, run.examples, x="a", top_k=6))) == 100
    with pytest.raises(InvalidParameterError, match="not numeric"):
        neuron_scatter(run.neurons, run.examples.with_columns(pl.col("a").cast(pl.String)), x="a")
    with pytest.raises(InvalidParameterError, match=r"\[999\]"):
        neuron_scatter(run.neurons, run.examples, x="a", which=[999])
