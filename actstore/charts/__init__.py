"""Altair charts of the query tables, and the one-page HTML report of a store.

Builders are pure functions `table (+ options) -> alt.Chart` over the tidy tables of
`actstore.query`; they aggregate before charting, so a chart never embeds more than a few
thousand rows. `actstore.charts.standard` maps a store and a chart kind to (query, builder);
`actstore.charts.report` assembles a store's standard charts into one offline HTML page.
"""

from __future__ import annotations

from actstore.charts.accuracy import accuracy_bars, accuracy_table
from actstore.charts.attention import attention_heatmap, attention_role_bars
from actstore.charts.circuits import circuit_heatmap
from actstore.charts.dla import component_bars, component_bars_by, dla_heatmap
from actstore.charts.export import save_chart
from actstore.charts.logit_lens import logit_lens_lines
from actstore.charts.neurons import neuron_scatter

__all__ = [
    "accuracy_bars",
    "accuracy_table",
    "attention_heatmap",
    "attention_role_bars",
    "circuit_heatmap",
    "component_bars",
    "component_bars_by",
    "dla_heatmap",
    "logit_lens_lines",
    "neuron_scatter",
    "save_chart",
]
