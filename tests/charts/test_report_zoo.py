"""The report of each zoo model's store (slow): ingest 512 examples through the trained model,
build the report and load it in headless chromium. Skips for models the zoo does not ship yet."""

from __future__ import annotations

import re

import pytest
from browser_check import assert_all_rendered, need_chromium, render
from stores import TASKS

import actstore
from actstore.charts.report import build_report
from actstore.errors import ModelUnavailableError, UnknownModelError


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_zoo_report(task, tmp_path):
    try:
        store = actstore.ingest(task, f"zoo:{task}", n=512, seed=1, out=tmp_path / task, quiet=True)
    except (ModuleNotFoundError, UnknownModelError, ModelUnavailableError) as e:
        pytest.skip(f"no zoo model for {task} here ({e})")
    path = build_report(store, tmp_path / f"report-zoo-{task}.html")
    page = path.read_text()
    assert re.findall(r"<p class='note'>([^<]*)</p>", page) == []
    need_chromium()
    r = render(path, f"report-zoo-{task}")
    assert_all_rendered(r, min_charts=5)
