"""The report page: one self-contained HTML file of sections (title, caption, chart and/or table).

The Vega, Vega-Lite and vega-embed JavaScript (vl-convert's bundle, ~900 KB) is inlined once in
the page head; each chart is a JSON spec in its own <script type="application/json"> and one
loader embeds them all as SVG, so the page opens with no network. Each chart container gets
`data-rendered="1"` (or "error") when done and <body> gets `data-charts-done` when all are, which
is what the browser test waits for.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import altair as alt
import polars as pl
import vl_convert as vlc

from actstore import __version__
from actstore.errors import InvalidParameterError
from actstore.outputs import atomic_output, check_output_path

EMBED_OPTIONS = {"renderer": "svg", "actions": {"export": True, "source": False, "compiled": False, "editor": False}}
MAX_TABLE_ROWS = 200


@dataclass(frozen=True)
class Section:
    """One block of the report: a title, a one-line caption, and a chart and/or a table.

    `note` replaces the content when the section could not be built (e.g. a hook the store lacks).
    `more`: further charts after the first, in order; a string among them is a note shown in place of
    a chart that could not be built (one intervention sweep of several).
    """

    title: str
    caption: str
    chart: alt.TopLevelMixin | None = None
    table: pl.DataFrame | None = None
    note: str | None = None
    more: tuple[alt.TopLevelMixin | str, ...] = ()


def _vl_version() -> str:
    """Vega-Lite version of the installed Altair as vl-convert names it ('6.4')."""
    major, minor = alt.SCHEMA_VERSION.lstrip("v").split(".")[:2]
    return f"{major}.{minor}"


def _finite(obj: object) -> object:
    """`obj` with NaN / infinite floats as None (JSON has no NaN; JSON.parse would reject it)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _script_json(obj: object) -> str:
    """JSON safe inside a <script> element (no '</' or '<!--' can close or comment it)."""
    return json.dumps(_finite(obj), separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return "" if value is None else str(value)


def html_table(table: pl.DataFrame, percent: Sequence[str] = ()) -> str:
    """A DataFrame as an HTML table (at most MAX_TABLE_ROWS rows); `percent` columns as 12.3%."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    rows = []
    for row in table.head(MAX_TABLE_ROWS).iter_rows():
        cells = []
        for col, v in zip(table.columns, row):
            text = f"{v:.2%}" if col in percent and isinstance(v, float) else _fmt(v)
            num = isinstance(v, (int, float)) and not isinstance(v, bool)
            cells.append(f'<td class="{"num" if num else ""}">{html.escape(text)}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    more = ("" if table.height <= MAX_TABLE_ROWS
            else f"<p class='caption'>first {MAX_TABLE_ROWS} of {table.height} rows</p>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{more}"


def summary_table(summary: Mapping[str, object]) -> str:
    """Two-column key/value table of the store summary."""
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
                   for k, v in summary.items())
    return f"<table class='summary'><tbody>{rows}</tbody></table>"


_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2rem auto; max-width: 1500px;
       padding: 0 1rem; color: #222; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { font-size: 1.2rem; margin: 2rem 0 .2rem; }
.caption { color: #555; margin: 0 0 .8rem; } .note { color: #a33; font-style: italic; }
table { border-collapse: collapse; font-size: .85rem; margin-bottom: 1rem; }
th, td { border: 1px solid #ddd; padding: .2rem .5rem; text-align: left; } td.num { text-align: right; }
thead th { background: #f3f3f3; } table.summary th { background: #f8f8f8; font-weight: 600; }
section { border-top: 1px solid #eee; } .chart { overflow-x: auto; }
nav ul { columns: 2; font-size: .9rem; }
footer { color: #888; font-size: .8rem; margin-top: 3rem; }
"""

_LOADER = """
(function () {
  const boxes = Array.from(document.querySelectorAll('div.chart[data-spec]'));
  const options = %s;
  Promise.allSettled(boxes.map(function (box) {
    const spec = JSON.parse(document.getElementById(box.dataset.spec).textContent);
    return vegaEmbed(box, spec, options).then(function () { box.dataset.rendered = '1'; })
      .catch(function (err) {
        console.error('chart ' + box.id + ' failed:', err);
        box.dataset.rendered = 'error';
        box.textContent = 'This chart failed to render: ' + err;
      });
  })).then(function () { document.body.dataset.chartsDone = String(boxes.length); });
})();
"""


def render_report(title: str, summary: Mapping[str, object], sections: Sequence[Section]) -> str:
    """The full HTML page: header, summary table, table of contents, then each section."""
    toc: list[str] = []
    body: list[str] = []
    specs: list[str] = []
    for i, s in enumerate(sections):
        anchor = f"s{i}"
        toc.append(f"<li><a href='#{anchor}'>{html.escape(s.title)}</a></li>")
        parts = [f"<section id='{anchor}'><h2>{html.escape(s.title)}</h2>"
                 f"<p class='caption'>{html.escape(s.caption)}</p>"]
        if s.note:
            parts.append(f"<p class='note'>{html.escape(s.note)}</p>")
        if s.table is not None:
            parts.append(html_table(s.table, percent=("accuracy", "exact")))
        for chart in ([] if s.note else [c for c in (s.chart, *s.more) if c is not None]):
            if isinstance(chart, str):
                parts.append(f"<p class='note'>{html.escape(chart)}</p>")
                continue
            n = len(specs)
            specs.append(f"<script type='application/json' id='spec-{n}'>{_script_json(chart.to_dict())}</script>")
            parts.append(f"<div class='chart' id='chart-{n}' data-spec='spec-{n}'></div>")
        parts.append("</section>")
        body.append("".join(parts))
    bundle = vlc.javascript_bundle(vl_version=_vl_version())  # type: ignore[call-arg]  # the stub omits snippet's default
    return "\n".join([
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style>",
        f"<script>{bundle}</script>",
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Store</h2>",
        summary_table(summary),
        f"<nav><ul>{''.join(toc)}</ul></nav>",
        *body,
        *specs,
        f"<script>{_LOADER % json.dumps(EMBED_OPTIONS)}</script>",
        f"<footer>actstore {html.escape(__version__)}; charts by Vega-Lite {html.escape(_vl_version())}, "
        "embedded for offline viewing</footer>",
        "</body></html>",
    ])


def write_report(path: str | os.PathLike, title: str, summary: Mapping[str, object],
                 sections: Sequence[Section]) -> Path:
    """Render the report and write it atomically to `path` (.html)."""
    out = check_report_path(path)
    text = render_report(title, summary, sections)
    with atomic_output(out) as f:
        f.write(text.encode("utf-8"))
    return out


def check_report_path(path: str | os.PathLike) -> Path:
    """`path` as a Path if a report can be written there (an .html file in an existing directory)."""
    out = check_output_path(path)
    if out.suffix.lower() not in (".html", ".htm"):
        raise InvalidParameterError(f"report output {os.fspath(path)!r} must end in .html")
    return out


__all__ = ["Section", "check_report_path", "html_table", "render_report", "write_report"]
