"""Write a chart to .html (Vega inlined, works with no network), .png or .svg (vl-convert, offline).

Files are written to a temporary name beside the target and renamed, so a crash never leaves
a half-written chart under the real name.
"""

from __future__ import annotations

import os
from pathlib import Path

import altair as alt

from actstore.errors import InvalidParameterError

FORMATS = {".html": "html", ".png": "png", ".svg": "svg"}


def chart_format(path: str | os.PathLike) -> str:
    """The export format of `path` from its extension; InvalidParameterError if unsupported."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise InvalidParameterError(
            f"cannot write a chart to {str(path)!r}: extension must be one of {', '.join(FORMATS)}")
    return FORMATS[suffix]


def save_chart(chart: alt.TopLevelMixin, path: str | os.PathLike, scale: float = 2.0) -> Path:
    """Save `chart` to `path` (.html/.png/.svg) atomically; `scale` multiplies PNG resolution."""
    out = Path(path)
    fmt = chart_format(out)
    if not out.parent.exists():
        raise InvalidParameterError(f"output directory {str(out.parent)!r} does not exist")
    tmp = out.with_name(f".{out.name}.tmp{out.suffix}")
    try:
        if fmt == "html":
            chart.save(tmp, format="html", inline=True)
        elif fmt == "png":
            chart.save(tmp, format="png", scale_factor=scale)
        else:
            chart.save(tmp, format="svg")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


__all__ = ["FORMATS", "chart_format", "save_chart"]
