"""Chart export: offline HTML with Vega inlined, PNG and SVG through vl-convert, atomic writes."""

from __future__ import annotations

import pytest

from actstore.charts import dla_heatmap, save_chart
from actstore.errors import InvalidParameterError


def test_png_svg_html(run, tmp_path):
    chart = dla_heatmap(run.dla)
    png = save_chart(chart, tmp_path / "heads.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = save_chart(chart, tmp_path / "heads.svg").read_text()
    assert svg.lstrip().startswith("<svg") and "<path" in svg and "per attention head" in svg
    html = save_chart(chart, tmp_path / "heads.html").read_text()
    assert "vegaEmbed" in html and len(html) > 500_000          # the Vega bundle is inlined...
    assert "cdn.jsdelivr" not in html and "<script src=" not in html  # ...and nothing loads from a CDN
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heads.html", "heads.png", "heads.svg"]  # no tmp files


def test_bad_extension_and_directory(run, tmp_path):
    chart = dla_heatmap(run.dla)
    with pytest.raises(InvalidParameterError, match=r"\.html, \.png, \.svg"):
        save_chart(chart, tmp_path / "heads.pdf")
    with pytest.raises(InvalidParameterError, match="does not exist"):
        save_chart(chart, tmp_path / "missing" / "heads.png")
