"""Shared look of every actstore chart: colour scales, tooltips, sizes, axis titles.

One place so that all charts agree: signed quantities (attributions, projections, circuit
entries) use a diverging red-blue scale centred at 0; unsigned ones (probabilities, accuracy)
a sequential scale starting at 0.
"""

from __future__ import annotations

from typing import Any

import altair as alt
import numpy as np

# sizes in pixels of one facet cell / one plot
CELL = 22                 # one rect of a heatmap
PLOT_WIDTH = 420
PLOT_HEIGHT = 260
VALUE_FORMAT = ".4g"      # numbers in tooltips

# human names of the query tables' columns, used as axis and legend titles
TITLES: dict[str, str] = {
    "layer": "Layer",
    "head": "Head",
    "component": "Component",
    "answer_idx": "Answer",
    "answer_pos": "Answer position",
    "q_role": "Query token role",
    "k_role": "Key token role",
    "q_pos": "Query position",
    "k_pos": "Key position",
    "stage": "Residual stream stage",
    "neuron": "Neuron",
    "projection": "Projection",
    "activation": "Activation",
    "accuracy": "Accuracy",
    "prob": "Attention probability",
}


def title_of(column: str) -> str:
    """Axis/legend title for a column: the known name, else the column with underscores as spaces."""
    return TITLES.get(column, column.replace("_", " "))


def diverging(field: str, title: str, values: Any = None) -> alt.Color:
    """Colour for a signed value: red below 0, white at 0, blue above.

    With `values` (the plotted column) the domain is symmetric, [-max|v|, max|v|], so equal
    colours mean equal magnitudes; with domainMid alone a small negative cell would be drawn
    as dark as the largest positive one.
    """
    scale = alt.Scale(scheme="redblue", domainMid=0)
    if values is not None:
        top = float(np.nanmax(np.abs(np.asarray(values, dtype=np.float64)))) if len(values) else 0.0
        if np.isfinite(top) and top > 0:
            scale = alt.Scale(scheme="redblue", domain=[-top, top])
    return alt.Color(f"{field}:Q", title=title, scale=scale)


def sequential(field: str, title: str) -> alt.Color:
    """Colour for a non-negative value (probability, accuracy): light at 0, dark at the maximum."""
    return alt.Color(f"{field}:Q", title=title, scale=alt.Scale(scheme="blues", domainMin=0))


def value_tooltip(field: str, title: str) -> alt.Tooltip:
    return alt.Tooltip(f"{field}:Q", title=title, format=VALUE_FORMAT)


def chart_title(text: str, subtitle: str | None = None) -> alt.TitleParams:
    return alt.TitleParams(text=text, subtitle=subtitle or alt.Undefined, anchor="start")
