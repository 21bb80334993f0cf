"""OV / QK circuit heatmaps over matrices from `actstore.query` circuits (weights only).

An OV circuit [source token, output token] says what a head writes to the logits when it
attends to a token; a QK circuit [query, key] how much a query token/position attends to a key.
Both are signed, so the colour scale diverges at 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import numpy as np
import polars as pl

from actstore.charts import style
from actstore.charts.tables import require_columns
from actstore.errors import InvalidParameterError

MAX_CELLS = 4900  # e.g. 70 x 70 tokens; restrict the tokens of a bigger circuit first


def matrix_table(matrix: np.ndarray, row_labels: Sequence[str] | None = None,
                 col_labels: Sequence[str] | None = None) -> pl.DataFrame:
    """A 2-D array [row, col] as long rows: row, col, value (labels default to the indices)."""
    m = np.asarray(matrix)
    if m.ndim != 2:
        raise InvalidParameterError(f"circuit_heatmap: expected a 2-D matrix [row, col], got shape {m.shape}")
    rows = [str(r) for r in (row_labels if row_labels is not None else range(m.shape[0]))]
    cols = [str(c) for c in (col_labels if col_labels is not None else range(m.shape[1]))]
    if len(rows) != m.shape[0] or len(cols) != m.shape[1]:
        raise InvalidParameterError(
            f"circuit_heatmap: {len(rows)} row / {len(cols)} column labels for a matrix of shape {m.shape}")
    return pl.DataFrame({
        "row": np.repeat(np.array(rows, dtype=object), m.shape[1]).tolist(),
        "col": np.tile(np.array(cols, dtype=object), m.shape[0]).tolist(),
        "value": m.astype(np.float64).ravel(),
    })


def circuit_heatmap(
    circuit: np.ndarray | pl.DataFrame,
    title: str,
    row_title: str = "Source token",
    col_title: str = "Output token",
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    value_title: str = "Circuit value",
) -> alt.Chart:
    """Heatmap of a circuit matrix (or a row/col/value table), rows and columns in given order."""
    if isinstance(circuit, pl.DataFrame):
        require_columns(circuit, ["row", "col", "value"], "circuit_heatmap")
        table = circuit.with_columns(pl.col("row").cast(pl.String), pl.col("col").cast(pl.String))
    else:
        table = matrix_table(circuit, row_labels, col_labels)
    if table.height > MAX_CELLS:
        raise InvalidParameterError(
            f"circuit_heatmap: {table.height} cells (max {MAX_CELLS}); restrict the circuit to fewer tokens")
    rows = table.get_column("row").unique(maintain_order=True).to_list()
    cols = table.get_column("col").unique(maintain_order=True).to_list()
    cell = max(6, min(style.CELL, 700 // max(len(rows), len(cols), 1)))
    return alt.Chart(table).mark_rect().encode(
        x=alt.X("col:N", sort=cols, title=col_title),
        y=alt.Y("row:N", sort=rows, title=row_title),
        color=style.diverging("value", value_title, table.get_column("value")),
        tooltip=[alt.Tooltip("row:N", title=row_title), alt.Tooltip("col:N", title=col_title),
                 style.value_tooltip("value", value_title)],
    ).properties(width=cell * len(cols), height=cell * len(rows), title=style.chart_title(title))


__all__ = ["circuit_heatmap", "matrix_table"]
