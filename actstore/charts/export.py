"""Write a chart to .html (Vega inlined, works with no network), .png or .svg (vl-convert, offline).

Charts are rendered in memory and written through actstore.outputs.atomic_output, so a crash,
a full disk or a read-only directory never leaves a half-written chart under the real name.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import altair as alt

from actstore.errors import InvalidParameterError
from actstore.outputs import atomic_output, check_output_path

FORMATS = {".html": "html", ".png": "png", ".svg": "svg"}


def chart_format(path: str | os.PathLike) -> str:
    """The export format of `path` from its extension; InvalidParameterError if unsupported."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise InvalidParameterError(
            f"cannot write a chart to {str(path)!r}: extension must be one of {', '.join(FORMATS)}")
    return FORMATS[suffix]


def save_chart(chart: alt.TopLevelMixin, path: str | os.PathLike, scale: float = 2.0) -> Path:
    """Save `chart` to `path` (.html/.png/.svg) atomically; `scale` multiplies PNG resolution.

    The chart is rendered in memory first, so a rendering error writes nothing; a full disk or a
    read-only directory is one OutputWriteError and leaves no partial file.
    """
    fmt = chart_format(path)
    out = check_output_path(path)
    with atomic_output(out) as f:
        f.write(render_chart(chart, fmt, scale))
    return out


def render_chart(chart: alt.TopLevelMixin, fmt: str, scale: float = 2.0) -> bytes:
    """The bytes of `chart` as html (Vega inlined), png or svg."""
    buf: io.BytesIO | io.StringIO = io.BytesIO() if fmt == "png" else io.StringIO()
    if fmt == "html":
        chart.save(buf, format="html", inline=True)
    elif fmt == "png":
        chart.save(buf, format="png", scale_factor=scale)
    else:
        chart.save(buf, format="svg")
    data = buf.getvalue()
    return data.encode("utf-8") if isinstance(data, str) else data


__all__ = ["FORMATS", "chart_format", "render_chart", "save_chart"]
