"""Neuron charts over `actstore.query.neurons` tables: projection vs a numeric label.

Input rows: example_id, pos, layer, neuron, activation, projection (a neuron's output written
onto a direction, e.g. the brackets "unbalanced" direction). One panel per neuron (the most
variable ones by default) or, with neurons='sum', the whole layer's total per example, as in
the brackets seed's MLP attribution scatter.
"""

from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import polars as pl

from actstore.charts import style
from actstore.charts.tables import join_labels, require_columns
from actstore.errors import InvalidParameterError

MAX_POINTS = 4500     # points in one chart (all panels); more are sampled with a fixed seed
MAX_NOMINAL = 10      # a colour label with more distinct values is drawn as a continuous scale


def _pick_neurons(table: pl.DataFrame, neurons: Sequence[int] | str | None, top_k: int) -> pl.DataFrame:
    """Rows of the chosen neurons, with a `unit` column naming each panel."""
    if neurons == "sum":
        keys = ["example_id", "pos", "layer"]
        extra = [c for c in table.columns if c not in (*keys, "neuron", "activation", "projection")]
        out = table.group_by(keys, maintain_order=True).agg(pl.col("projection").sum(),
                                                             *[pl.col(c).first() for c in extra])
        return out.with_columns(unit=pl.format("L{} all neurons", pl.col("layer")))
    if isinstance(neurons, str):
        raise InvalidParameterError(f"neuron_scatter: neurons must be a list of ints, 'sum' or None, got {neurons!r}")
    if neurons is None:
        spread = table.group_by("layer", "neuron").agg(pl.col("projection").std().fill_null(0.0).alias("spread"))
        chosen = spread.sort("spread", "layer", "neuron", descending=[True, False, False]).head(top_k)
        out = table.join(chosen.select("layer", "neuron"), on=["layer", "neuron"], how="semi")
    else:
        wanted = [int(n) for n in neurons]
        out = table.filter(pl.col("neuron").is_in(wanted))
        missing = sorted(set(wanted) - set(out.get_column("neuron").unique().to_list()))
        if missing:
            raise InvalidParameterError(f"neuron_scatter: neurons {missing} are not in the table")
    return out.with_columns(unit=pl.format("L{}N{}", pl.col("layer"), pl.col("neuron")))


def neuron_scatter(
    neurons: pl.DataFrame,
    examples: pl.DataFrame,
    x: str,
    color: str | None = None,
    which: Sequence[int] | str | None = None,
    top_k: int = 6,
    direction: str = "the chosen direction",
) -> alt.FacetChart:
    """Projection of neuron outputs vs the numeric label `x`, one point per example, coloured by `color`.

    which: neuron ids, 'sum' (the layer's total) or None (the `top_k` neurons whose projection
    varies most). Over MAX_POINTS points are sampled (seed 0) so the chart stays small.
    """
    require_columns(neurons, ["example_id", "layer", "neuron", "projection"], "neuron_scatter")
    if "pos" not in neurons.columns:
        neurons = neurons.with_columns(pos=pl.lit(None, dtype=pl.Int64))
    labels = [x] + ([color] if color and color != x else [])
    require_columns(examples, ["example_id", *labels], "neuron_scatter (examples)")
    if not examples.schema[x].is_numeric():
        raise InvalidParameterError(
            f"neuron_scatter: x label {x!r} is {examples.schema[x]}, not numeric; pick a numeric label")
    table = _pick_neurons(neurons, which, top_k)
    table = join_labels(table, examples, labels, "neuron_scatter")
    if table.height > MAX_POINTS:
        table = table.sample(n=MAX_POINTS, seed=0, shuffle=False)
    units = sorted(table.select("layer", "unit").unique().iter_rows(), key=lambda r: (r[0], r[1]))
    unit_order = [u for _, u in units]
    table = table.select("example_id", "pos", "unit", "projection", *labels)
    tooltip = [alt.Tooltip("example_id:Q", title="example"), alt.Tooltip("unit:N", title="Neuron"),
               style.value_tooltip(x, x), style.value_tooltip("projection", "projection")]
    enc: dict = {
        "x": alt.X(f"{x}:Q", title=style.title_of(x)),
        "y": alt.Y("projection:Q", title=f"Output projected onto {direction}"),
        "tooltip": tooltip,
    }
    if color:
        dtype = examples.schema[color]
        nominal = not dtype.is_numeric() or examples.get_column(color).n_unique() <= MAX_NOMINAL
        enc["color"] = (alt.Color(f"{color}:N", title=style.title_of(color)) if nominal else
                        alt.Color(f"{color}:Q", title=style.title_of(color), scale=alt.Scale(scheme="viridis")))
        tooltip.append(alt.Tooltip(f"{color}:{'N' if nominal else 'Q'}", title=color))
    base = alt.Chart(table).mark_circle(size=18, opacity=0.6).encode(**enc).properties(width=260, height=200)
    return base.facet(facet=alt.Facet("unit:N", sort=unit_order, title=None), columns=3).properties(
        title=style.chart_title(f"Neuron output onto {direction} vs {x}", "one point per example"))


__all__ = ["neuron_scatter"]
