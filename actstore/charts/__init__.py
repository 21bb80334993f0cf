"""Altair charts of the query tables, and the one-page HTML report of a store.

Builders are pure functions `table (+ options) -> alt.Chart` over the tidy tables of
`actstore.query`; they aggregate before charting, so a chart never embeds more than a few
thousand rows. `actstore.charts.standard` maps a store and a chart kind to (query, builder);
`actstore.charts.report` assembles a store's standard charts into one offline HTML page.

Names are imported on first use (PEP 562), so `import actstore.charts.kinds` (the CLI's help)
does not load Altair.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "accuracy_bars": "accuracy",
    "accuracy_table": "accuracy",
    "attention_heatmap": "attention",
    "attention_role_bars": "attention",
    "circuit_heatmap": "circuits",
    "component_bars": "dla",
    "component_bars_by": "dla",
    "dla_heatmap": "dla",
    "effect_bars": "interventions",
    "head_heatmap": "interventions",
    "atp_scatter": "interventions",
    "position_heatmap": "interventions",
    "sweep_chart": "interventions",
    "logit_lens_lines": "logit_lens",
    "neuron_scatter": "neurons",
    "save_chart": "export",
    "build_report": "report",
    "make_chart": "standard",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"actstore.charts.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'actstore.charts' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
