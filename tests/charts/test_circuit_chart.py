"""OV / QK circuit heatmaps from real weight products."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from chart_spec import chart_rows

from actstore.charts import circuit_heatmap
from actstore.errors import InvalidParameterError

VOCAB = [str(d) for d in range(10)] + ["+", "="]


def test_ov_circuit_cells_and_scale(run):
    ov = run.W_E @ run.W_V[0, 1] @ run.W_O[0, 1] @ run.W_U   # [source token, output token]
    chart = circuit_heatmap(ov, "OV circuit L0H1", row_labels=VOCAB, col_labels=VOCAB)
    rows = chart_rows(chart)
    assert len(rows) == 144
    cell = {(r["row"], r["col"]): r["value"] for r in rows}
    assert cell[("7", "=")] == pytest.approx(float(ov[7, 11]), rel=1e-6)
    spec = chart.to_dict()
    top = float(abs(ov).max())
    assert spec["encoding"]["color"]["scale"]["domain"] == pytest.approx([-top, top], rel=1e-6)
    assert spec["encoding"]["y"]["sort"] == VOCAB and spec["encoding"]["x"]["sort"] == VOCAB
    assert spec["title"]["text"] == "OV circuit L0H1"


def test_table_input_and_limits():
    table = pl.DataFrame({"row": ["q0", "q0"], "col": ["k0", "k1"], "value": [1.0, -2.0]})
    assert len(chart_rows(circuit_heatmap(table, "QK", row_title="Query", col_title="Key"))) == 2
    with pytest.raises(InvalidParameterError, match="fewer tokens"):
        circuit_heatmap(np.zeros((100, 100)), "too big")
    with pytest.raises(InvalidParameterError, match="2-D"):
        circuit_heatmap(np.zeros(5), "flat")
    with pytest.raises(InvalidParameterError, match="labels"):
        circuit_heatmap(np.zeros((2, 3)), "x", row_labels=["a"])
