"""The report of each zoo model's store (slow): ingest 512 examples through the trained model,
build the report and load it in headless chromium. Skips where the zoo's weights are not installed."""

from __future__ import annotations

import re

import pytest
from browser_check import assert_all_rendered, need_chromium, render
from stores import TASKS

import actstore
from actstore.charts.report import build_report
from actstore.errors import ModelUnavailableError


MODEL_FOR = {"ioi": "zoo:lm", "days": "zoo:lm"}  # the other tasks have a zoo model of their own name


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_zoo_report(task, tmp_path):
    try:
        store = actstore.ingest(task, MODEL_FOR.get(task, f"zoo:{task}"), n=512, seed=1, out=tmp_path / task,
                                quiet=True)
    except ModelUnavailableError as e:
        pytest.skip(f"zoo weights for {task} are not installed ({e})")
    path = build_report(store, tmp_path / f"report-zoo-{task}.html")
    page = path.read_text()
    assert re.findall(r"<p class='note'>([^<]*)</p>", page) == []
    need_chromium()
    r = render(path, f"report-zoo-{task}")
    assert_all_rendered(r, min_charts=5)
