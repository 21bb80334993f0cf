"""Charts of the weight-algebra tables (`actstore.query.weights`, `actstore.query.fourier`; weights only).

    matrix_heatmap(table, title)      any tidy matrix table (matrix_table: row axis, column axis, value)
                                      as a heatmap, rows and columns in the table's order
    singular_value_bars(table, title) svd_table(..., vectors=False): one bar per singular value
    fourier_heatmap(table, title)     weight_fourier(...): Fourier component x the other axis (seed 003's
                                      W_U over the digits in the Fourier basis)

The builders take tables; `chart_weights`, `chart_weight_svd` and `chart_weight_fourier` (the
`actstore chart` kinds `weights`, `weight-svd`, `weight-fourier`) take a store and a matrix spec.
Every value is signed except singular values, so heatmaps use the diverging scale centred at 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import altair as alt
import polars as pl

from actstore.charts import style
from actstore.charts.circuits import MAX_CELLS
from actstore.charts.tables import require_columns
from actstore.errors import InvalidParameterError
from actstore.query.cosines import DIM_AXES
from actstore.query.fourier import weight_fourier
from actstore.query.weights import matrix_table, parse_spec, spec_axes, svd_table

TOKEN_AXES = ("token", "output", "q_token", "k_token")
MAX_TOKENS = 70  # token axes of a bigger vocabulary keep the tokens the task uses (as the circuit charts)

AXIS_TITLES = {"in_dim": "Input dim (d_model)", "out_dim": "Output dim (d_model)", "q_dim": "Query dim (d_model)",
               "k_dim": "Key dim (d_model)", "dim": "d_model dim", "token": "Token", "output": "Output token",
               "q_token": "Query token", "k_token": "Key token", "pos": "Position", "q_pos": "Query position",
               "k_pos": "Key position", "neuron": "Neuron", "d_head": "d_head dim", "fourier": "Fourier component"}


def _axis_title(axis: str) -> str:
    return AXIS_TITLES.get(axis, style.title_of(axis))


def _labelled(table: pl.DataFrame, column: str, labels: Mapping[int, str] | None) -> pl.DataFrame:
    """`column` as strings: token ids -> their strings where `labels` names every one uniquely, else the ids."""
    ids = table.get_column(column)
    if labels is not None and column in TOKEN_AXES and ids.dtype.is_integer():
        uniq = ids.unique(maintain_order=True).to_list()
        names = [labels.get(int(i)) for i in uniq]
        if all(n is not None for n in names) and len(set(names)) == len(names):
            return table.with_columns(ids.replace_strict(uniq, names, return_dtype=pl.String).alias(column))
    return table.with_columns(ids.cast(pl.String).alias(column))


def _heatmap(table: pl.DataFrame, row: str, col: str, title: str, value_title: str,
             row_order: Sequence[str], col_order: Sequence[str], subtitle: str | None = None) -> alt.Chart:
    if table.height > MAX_CELLS:
        raise InvalidParameterError(f"{title}: {table.height} cells (max {MAX_CELLS}); restrict the rows or columns "
                                    "(rows= / cols= / ids=) first")
    cell = max(4, min(style.CELL, 700 // max(len(row_order), len(col_order), 1)))
    return alt.Chart(table).mark_rect().encode(
        x=alt.X(f"{col}:N", sort=list(col_order), title=_axis_title(col)),
        y=alt.Y(f"{row}:N", sort=list(row_order), title=_axis_title(row)),
        color=style.diverging("value", value_title, table.get_column("value")),
        tooltip=[alt.Tooltip(f"{row}:N", title=_axis_title(row)), alt.Tooltip(f"{col}:N", title=_axis_title(col)),
                 style.value_tooltip("value", value_title)],
    ).properties(width=cell * len(col_order), height=cell * len(row_order),
                 title=style.chart_title(title, subtitle))


def matrix_heatmap(table: pl.DataFrame, title: str, labels: Mapping[int, str] | None = None,
                   value_title: str = "Weight product") -> alt.Chart:
    """Heatmap of a tidy matrix table (its first two columns are the row and column axes, then value),
    rows and columns in order of first appearance (as `query.weights.to_matrix`); `labels` names token ids."""
    if not isinstance(table, pl.DataFrame) or table.width < 3:
        raise InvalidParameterError("matrix_heatmap: expected a table row axis, column axis, value "
                                    "(actstore.query.weights.matrix_table)")
    row, col = table.columns[:2]
    require_columns(table, [row, col, "value"], "matrix_heatmap")
    data = _labelled(_labelled(table.select(row, col, pl.col("value").cast(pl.Float64)), row, labels), col, labels)
    rows = data.get_column(row).unique(maintain_order=True).to_list()
    cols = data.get_column(col).unique(maintain_order=True).to_list()
    return _heatmap(data, row, col, title, value_title, rows, cols)


def singular_value_bars(table: pl.DataFrame, title: str) -> alt.Chart:
    """One bar per singular value (svd_table(..., vectors=False): component, singular_value), largest first."""
    require_columns(table, ["component", "singular_value"], "singular_value_bars")
    data = table.select("component", pl.col("singular_value").cast(pl.Float64)).unique("component",
                                                                                     maintain_order=True)
    n = data.height
    return alt.Chart(data).mark_bar().encode(
        x=alt.X("component:O", title="Component (largest first)"),
        y=alt.Y("singular_value:Q", title="Singular value", scale=alt.Scale(domainMin=0)),
        tooltip=[alt.Tooltip("component:O", title="Component"),
                 style.value_tooltip("singular_value", "Singular value")],
    ).properties(width=max(style.PLOT_WIDTH // 2, min(style.PLOT_WIDTH * 2, 14 * n)), height=style.PLOT_HEIGHT,
                 title=style.chart_title(title))


def fourier_heatmap(table: pl.DataFrame, title: str, value_title: str = "Fourier coefficient") -> alt.Chart:
    """Heatmap of a Fourier table (fourier_table / weight_fourier: other axis, component, fourier, frequency,
    value): Fourier components (const, cos 1, sin 1, ...) as rows, the other axis's ids as columns."""
    require_columns(table, ["component", "fourier", "value"], "fourier_heatmap")
    other = [c for c in table.columns if c not in ("component", "fourier", "frequency", "value")]
    if len(other) != 1:
        raise InvalidParameterError(f"fourier_heatmap: expected one axis besides the Fourier columns, got {other}")
    col = other[0]
    data = _labelled(table.select(col, "component", "fourier", pl.col("value").cast(pl.Float64)), col, None)
    rows = table.sort("component", maintain_order=True).get_column("fourier").unique(maintain_order=True).to_list()
    cols = data.get_column(col).unique(maintain_order=True).to_list()
    key = "frequency" if "frequency" in table.columns else "fourier"
    power = table.group_by(key).agg((pl.col("value") ** 2).sum().alias("p"))
    total = float(power.get_column("p").sum())
    subtitle = None
    if total > 0:
        top = power.sort(["p", key], descending=[True, False]).row(0)
        subtitle = f"largest {key}: {top[0]} ({100 * float(top[1]) / total:.0f}% of the power)"
    return _heatmap(data.drop("component"), "fourier", col, title, value_title, rows, cols, subtitle)


# --- store -> chart (the `actstore chart` kinds; standard.py lists them) ---------------------------

def _spec(matrix: str | None, layer: int | None, head: int | None, default: str) -> str:
    if matrix is not None:
        if layer is not None or head is not None:
            raise InvalidParameterError("give a matrix spec or layer and head, not both")
        return matrix
    if layer is None and head is None:
        return default
    if layer is None or head is None:
        raise InvalidParameterError("give both layer and head (the full OV circuit W_E@OV:L.H@W_U of that head)")
    return f"W_E@OV:{layer}.{head}@W_U"


def _task_tokens(store: Any) -> tuple[list[int], dict[int, str]]:
    from actstore.charts.standard import _circuit_tokens, vocab_labels  # noqa: PLC0415 (standard imports us)

    return _circuit_tokens(store)[0], vocab_labels(store)


def _restricted(store: Any, spec: str) -> tuple[Any, Any, dict[int, str]]:
    """(rows, cols, token labels): a token axis longer than MAX_TOKENS keeps the tokens the task uses."""
    axes = spec_axes(parse_spec(spec, store.arch))
    ids, labels = _task_tokens(store)
    sizes = {"token": store.arch.d_vocab, "q_token": store.arch.d_vocab, "k_token": store.arch.d_vocab,
             "output": store.arch.d_vocab_out}
    picks = [ids if a in TOKEN_AXES and sizes.get(a, 0) > MAX_TOKENS else None for a in axes]
    return picks[0], picks[1], labels


def chart_weights(store: Any, matrix: str | None = None, layer: int | None = None, head: int | None = None,
                  **_: Any) -> alt.Chart:
    """Heatmap of the matrix a spec names (default: W_U; layer and head: that head's full OV circuit)."""
    spec = _spec(matrix, layer, head, "W_U")
    rows, cols, labels = _restricted(store, spec)
    return matrix_heatmap(matrix_table(store, spec, rows=rows, cols=cols), spec, labels=labels)


def chart_weight_svd(store: Any, matrix: str | None = None, layer: int | None = None, head: int | None = None,
                     top: int | None = None, **_: Any) -> alt.Chart:
    """Singular values of the matrix a spec names (default: W_U; layer and head: that head's full OV circuit)."""
    spec = _spec(matrix, layer, head, "W_U")
    rows, cols, _labels = _restricted(store, spec)
    table = svd_table(store, spec, k=top, rows=rows, cols=cols, vectors=False)
    return singular_value_bars(table, f"Singular values of {spec}")


def _digit_ids(store: Any) -> list[int] | None:
    """Token ids of '0', '1', ... in digit order while the task has them all from 0 up (at least 3), else None."""
    _, labels = _task_tokens(store)
    by_digit = {s.strip(): t for t, s in labels.items() if s.strip().isdigit() and len(s.strip()) == 1}
    digits = []
    for d in range(10):
        if str(d) not in by_digit:
            break
        digits.append(by_digit[str(d)])
    return digits if len(digits) >= 3 else None


def chart_weight_fourier(store: Any, matrix: str | None = None, **_: Any) -> alt.Chart:
    """A weight (default W_U) along its token / position axis in the Fourier basis; token axes run over the
    digit tokens 0, 1, ... where the task has them (seed 003), else over every token."""
    spec = matrix or "W_U"
    free = [a for a in spec_axes(parse_spec(spec, store.arch)) if a not in DIM_AXES]
    ids = _digit_ids(store) if len(free) == 1 and free[0] in TOKEN_AXES else None
    table = weight_fourier(store, spec, ids=ids)
    return fourier_heatmap(table, f"{spec} in the Fourier basis" + (" over the digits" if ids else ""))


__all__ = ["chart_weight_fourier", "chart_weight_svd", "chart_weights", "fourier_heatmap", "matrix_heatmap",
           "singular_value_bars"]
