"""The report page itself: one inlined Vega bundle, escaped specs and tables, and real rendering
of every builder's chart in headless chromium (console clean, every chart drawn, no network)."""

from __future__ import annotations

import polars as pl
import pytest
from browser_check import assert_all_rendered, need_chromium, render

from actstore.charts import (
    accuracy_bars,
    accuracy_table,
    attention_heatmap,
    attention_role_bars,
    circuit_heatmap,
    component_bars,
    component_bars_by,
    dla_heatmap,
    logit_lens_lines,
    neuron_scatter,
)
from actstore.charts.page import Section, render_report, write_report
from actstore.errors import InvalidParameterError


def _sections(run) -> list[Section]:
    acc = accuracy_table(run.outputs, run.examples)
    ov = run.W_E @ run.W_V[1, 0] @ run.W_O[1, 0] @ run.W_U
    return [
        Section("Accuracy", "by label", chart=accuracy_bars(acc), table=acc),
        Section("Heads", "DLA per head", chart=dla_heatmap(run.dla)),
        Section("Components", "DLA per component", chart=component_bars(run.dla)),
        Section("Carry", "split", chart=component_bars_by(run.dla, run.examples, {0: "carry_0", 1: "carry_1"})),
        Section("Attention", "by role", chart=attention_heatmap(run.attention)),
        Section("Attention from =", "by carry", chart=attention_role_bars(run.attention, "=", examples=run.examples,
                                                                          group_by="any_carry")),
        Section("Logit lens", "lines", chart=logit_lens_lines(run.logit_lens)),
        Section("Neurons", "scatter", chart=neuron_scatter(run.neurons, run.examples, x="a", color="any_carry")),
        Section("OV", "circuit", chart=circuit_heatmap(ov, "OV L1H0")),
        Section("Missing", "a section whose query could not run", note="store has no blocks.0.attn.hook_pattern"),
    ]


def test_page_structure(run):
    page = render_report("T <&> title", {"store": "/tmp/<x>", "examples": 60},
                         [Section("A </script> title", "cap", table=pl.DataFrame({"x": [1.5], "accuracy": [0.25]})),
                          Section("B", "c", chart=dla_heatmap(run.dla)),
                          Section("C", "d", chart=dla_heatmap(run.dla), note="not available: reason")])
    assert page.count("window.vegaEmbed=") == 1            # the JS bundle is inlined exactly once
    assert page.count("data-spec=") == 1                    # the noted section draws no chart
    assert page.count("<script") == 3                       # bundle, one spec, loader, and nothing else
    assert "A &lt;/script&gt; title" in page and "/tmp/&lt;x&gt;" in page and "T &lt;&amp;&gt; title" in page
    assert "25.00%" in page                                 # accuracy as a percentage
    assert "not available: reason" in page
    assert "http://" not in page.split("</head>")[1] and "<script src" not in page


def test_write_report_rejects_bad_paths(tmp_path):
    with pytest.raises(InvalidParameterError, match=r"\.html"):
        write_report(tmp_path / "r.png", "t", {}, [])
    with pytest.raises(InvalidParameterError, match="does not exist"):
        write_report(tmp_path / "no" / "r.html", "t", {}, [])


def test_every_builder_renders_in_chromium(run, tmp_path):
    need_chromium()
    path = write_report(tmp_path / "page.html", "All chart builders", {"examples": 60}, _sections(run))
    r = render(path, "report-builders")
    assert r.sections == 10
    assert_all_rendered(r, min_charts=9)
