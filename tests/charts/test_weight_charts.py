"""Charts of the weight-algebra tables: each chart embeds exactly the query table's values."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from chart_spec import chart_rows, find_key

from actstore.charts import weights as cw
from actstore.charts.standard import make_chart, vocab_labels
from actstore.errors import InvalidParameterError
from actstore.query.fourier import weight_fourier
from actstore.query.weights import matrix_table, svd_table, to_matrix


@pytest.fixture(scope="module")
def store(stores):
    return stores("addition")


@pytest.mark.parametrize("spec", ["W_E@OV:1.0@W_U", "W_pos@K:0.0>1.0@W_E", "QK:0.1", "W_U"])
def test_matrix_heatmap_embeds_the_table(store, spec):
    table = matrix_table(store, spec)
    chart = make_chart(store, "weights", matrix=spec)
    rows = chart_rows(chart)
    row, col = table.columns[:2]
    assert [r["value"] for r in rows] == table.get_column("value").to_list()
    # the chart's cells pivot back into the query's matrix, rows and columns in the same order
    data = pl.DataFrame(rows).select(row, col, "value")
    np.testing.assert_array_equal(to_matrix(data), to_matrix(table))
    spec_dict = chart.to_dict()
    assert spec_dict["mark"]["type"] == "rect" and spec_dict["title"]["text"] == spec
    top = float(table.get_column("value").abs().max())
    assert find_key(spec_dict, "domain") == [[-top, top]]


def test_token_axes_are_labelled_by_their_strings(store):
    chart = make_chart(store, "weights", layer=1, head=2)
    table = matrix_table(store, "W_E@OV:1.2@W_U")
    labels = vocab_labels(store)
    rows = chart_rows(chart)
    assert [r["token"] for r in rows] == [labels[t] for t in table.get_column("token")]
    assert chart.to_dict()["encoding"]["y"]["sort"][:3] == [labels[t] for t in table["token"].unique(
        maintain_order=True).to_list()[:3]]


def test_singular_value_bars(store):
    table = svd_table(store, "W_E@OV:1.0@W_U", k=4, vectors=False)
    chart = make_chart(store, "weight-svd", matrix="W_E@OV:1.0@W_U", top=4)
    rows = chart_rows(chart)
    assert [r["component"] for r in rows] == [0, 1, 2, 3]
    np.testing.assert_array_equal([r["singular_value"] for r in rows], table.get_column("singular_value").to_numpy())
    full = svd_table(store, "W_U", vectors=False)
    default = chart_rows(make_chart(store, "weight-svd"))
    assert [r["singular_value"] for r in default] == full["singular_value"].to_list()


def test_fourier_heatmap_over_the_digits(store):
    table = weight_fourier(store, "W_U", ids=range(10))
    chart = make_chart(store, "weight-fourier")
    rows = chart_rows(chart)
    assert [r["value"] for r in rows] == table.get_column("value").to_list()
    assert [r["fourier"] for r in rows] == table.get_column("fourier").to_list()
    assert [r["dim"] for r in rows] == [str(d) for d in table.get_column("dim")]
    spec = chart.to_dict()
    assert spec["encoding"]["y"]["sort"][:4] == ["const", "cos 1", "sin 1", "cos 2"]
    assert "over the digits" in spec["title"]["text"] and "% of the power" in spec["title"]["subtitle"]
    pos = chart_rows(make_chart(store, "weight-fourier", matrix="W_pos"))  # positions: every one, no digits
    assert len(pos) == store.arch.n_ctx * store.arch.d_model


def test_builders_refuse_bad_input(store):
    with pytest.raises(InvalidParameterError, match="not both"):
        make_chart(store, "weights", matrix="W_U", layer=1, head=0)
    with pytest.raises(InvalidParameterError, match="both layer and head"):
        make_chart(store, "weights", layer=1)
    with pytest.raises(InvalidParameterError, match="expected one axis"):
        cw.fourier_heatmap(pl.DataFrame({"a": [0], "b": [0], "component": [0], "fourier": ["const"],
                                         "value": [1.0]}), "x")
    big = pl.DataFrame({"r": np.repeat(np.arange(80), 80), "c": np.tile(np.arange(80), 80), "value": 1.0})
    with pytest.raises(InvalidParameterError, match="6400 cells"):
        cw.matrix_heatmap(big, "big")
