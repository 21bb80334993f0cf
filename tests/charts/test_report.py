"""`build_report` on a real store of every task: the right sections, and a real headless-chromium
load with no console errors, every chart drawn, no network, and a screenshot in test-artifacts/."""

from __future__ import annotations

import re

import pytest
from browser_check import assert_all_rendered, need_chromium, render
from stores import TASKS

from actstore.charts.report import build_report, store_summary

COMMON = ["Accuracy by label", "Direct logit attribution per head", "Direct logit attribution per component",
          "Average attention by token role", "Logit lens"]
EXTRA = {
    "addition": ["Carry vs no carry", "Attention from &#x27;=&#x27;, carry vs no carry"],
    "brackets": ["Attribution by failure type", *(f"MLP {i} neurons vs open_proportion" for i in range(3))],
    "ioi": ["END -&gt; IO / S attention", "Attribution by order"],
    "list_update": [],
    "days": [],
}


def test_store_summary(stores):
    store = stores("addition")
    s = store_summary(store)
    assert s["examples"] == "64 committed of 64"
    assert s["answers per example"] == 4
    assert s["task"] == "addition {'digits': 4, 'max_operand': 5000}"
    assert s["architecture"].startswith("n_layers 2, n_heads 3, d_model 24, d_head 8")
    assert "fold_ln" in s["weight processing"]
    assert s["hooks"].startswith("7: ")
    assert s["decomposition check"].startswith("max |sum of components - logits| = ")


# addition and ioi (one arithmetic task, one text task with roles) in the default run; the other three in the
# slow set, out of the default run's 10 minutes (each renders a whole report: 6-12 s here)
@pytest.mark.parametrize("task", [t if t in ("addition", "ioi") else pytest.param(t, marks=pytest.mark.slow)
                                  for t in TASKS])
def test_report_of_each_task_renders(stores, task, tmp_path):
    store = stores(task)
    path = build_report(store, tmp_path / f"report-{task}.html")
    page = path.read_text()
    titles = COMMON + EXTRA[task]
    for title in titles:
        assert f"<h2>{title}</h2>" in page, title
    assert re.findall(r"<p class='note'>([^<]*)</p>", page) == []   # every section has its chart
    assert page.count("window.vegaEmbed=") == 1
    need_chromium()
    r = render(path, f"report-{task}")
    assert r.sections == len(titles)
    assert_all_rendered(r, min_charts=len(titles))


def test_report_needs_no_model(stores, tmp_path):
    """Building a report imports neither transformer_lens nor torch (a fresh interpreter checks)."""
    import subprocess
    import sys

    store = stores("ioi")
    code = ("import sys; from actstore import open_store; from actstore.charts.report import build_report; "
            f"build_report(open_store({str(store.path)!r}), {str(tmp_path / 'r.html')!r}); "
            "print(sorted(m for m in ('torch', 'transformer_lens') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert (tmp_path / "r.html").stat().st_size > 500_000
