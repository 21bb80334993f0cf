"""Open a report in headless chromium and return what rendered (shared by the report tests)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from headless_chromium import CHROMIUM, Chromium

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

# per chart container: its id, render state, the number of Vega <svg class="marks"> / <canvas> and the
# number of drawn elements inside, and the drawing's on-screen size
_PROBE = """Array.from(document.querySelectorAll('div.chart')).map(function (d) {
  const svg = d.querySelector('svg.marks'), canvas = d.querySelector('canvas');
  const box = (svg || canvas) ? (svg || canvas).getBoundingClientRect() : {width: 0, height: 0};
  return {id: d.id, rendered: d.dataset.rendered || '', svgs: d.querySelectorAll('svg.marks').length,
          canvases: d.querySelectorAll('canvas').length,
          drawn: svg ? svg.querySelectorAll('path, rect, line, circle, text').length : 0,
          width: box.width, height: box.height};
})"""


@dataclass
class Rendered:
    seconds: float             # navigation until every chart settled
    charts: list[dict]         # one probe row per chart container
    errors: list[str]          # console errors, uncaught exceptions, log errors
    requests: list[str]        # every URL the page asked for
    sections: int              # <section> elements
    screenshot: Path


def need_chromium() -> None:
    """Skip the browser checks where chromium is absent, except in CI (ACTSTORE_REQUIRE_BROWSER=1)."""
    if not CHROMIUM.exists():
        if os.environ.get("ACTSTORE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} not installed and ACTSTORE_REQUIRE_BROWSER=1 (run .ci/install-browser)")
        pytest.skip(f"{CHROMIUM} not installed (run .ci/install-browser, as .ci/run does)")
    pytest.importorskip("websocket", reason="websocket-client not installed (pip install -e '.[dev]')")


def render(report: Path, name: str) -> Rendered:
    """Load `report` in headless chromium, wait for all charts, probe them and save a screenshot."""
    with Chromium() as browser:
        seconds = browser.open(report.resolve().as_uri(), "document.body && document.body.dataset.chartsDone",
                               timeout=120)
        charts = browser.evaluate(_PROBE)
        sections = browser.evaluate("document.querySelectorAll('section').length")
        shot = browser.screenshot(ARTIFACTS / f"{name}.png")
        return Rendered(seconds, charts, list(browser.errors), list(browser.requests), sections, shot)


def assert_all_rendered(r: Rendered, min_charts: int) -> None:
    assert r.errors == [], f"console errors: {r.errors}"
    assert [u for u in r.requests if not u.startswith(("file:", "data:", "blob:"))] == [], "page reached the network"
    assert len(r.charts) >= min_charts
    for c in r.charts:
        assert c["rendered"] == "1", f"{c['id']} did not render: {c}"
        assert c["svgs"] + c["canvases"] >= 1 and c["drawn"] > 10, f"{c['id']} is empty: {c}"
        assert c["width"] > 50 and c["height"] > 50, f"{c['id']} has no size: {c}"
    assert r.screenshot.stat().st_size > 10_000
