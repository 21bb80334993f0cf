"""Reading back what a chart embeds: its data rows and any key of its Vega-Lite spec."""

from __future__ import annotations


def chart_rows(chart) -> list[dict]:
    """The inline data rows of a chart spec (the builders embed exactly one dataset)."""
    spec = chart.to_dict()
    datasets = spec.get("datasets", {})
    assert len(datasets) == 1, f"expected one dataset, got {list(datasets)}"
    return next(iter(datasets.values()))


def find_key(spec: object, key: str) -> list:
    """Every value stored under `key` anywhere in a nested spec."""
    out = []
    if isinstance(spec, dict):
        for k, v in spec.items():
            if k == key:
                out.append(v)
            out.extend(find_key(v, key))
    elif isinstance(spec, list):
        for v in spec:
            out.extend(find_key(v, key))
    return out
