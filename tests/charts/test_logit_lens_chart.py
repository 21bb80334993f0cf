"""Logit lens lines: stages in residual order, means per answer or per label."""

from __future__ import annotations

import pytest
from chart_spec import chart_rows, find_key

from actstore.charts import logit_lens_lines
from actstore.charts.logit_lens import stage_order
from actstore.errors import InvalidParameterError


def test_stage_order_puts_final_last(run):
    assert stage_order(run.logit_lens) == ["L0 resid_pre", "L1 resid_pre", "final"]


def test_lines_per_answer_match_numpy(run):
    chart = logit_lens_lines(run.logit_lens)
    rows = chart_rows(chart)
    stages = stage_order(run.logit_lens)
    assert len(rows) == run.lens.shape[1] * run.lens.shape[2]
    for r in rows:
        a = int(r["line"].split()[-1])
        assert r["mean"] == pytest.approx(run.lens[:, a, stages.index(r["point"])].mean())
    spec = chart.to_dict()
    assert [layer["mark"]["type"] if isinstance(layer["mark"], dict) else layer["mark"] for layer in spec["layer"]] \
        == ["area", "line", "rule"]
    assert find_key(spec, "sort")[0] == stages
    assert spec["title"]["text"].startswith("Logit lens")


def test_lines_by_label(run):
    rows = chart_rows(logit_lens_lines(run.logit_lens, examples=run.examples, group_by="carry_1"))
    carry = run.examples.get_column("carry_1").to_numpy()
    final = [r for r in rows if r["point"] == "final" and r["line"] == "true"][0]
    assert final["mean"] == pytest.approx(run.lens[carry, :, -1].mean())
    with pytest.raises(InvalidParameterError, match="fewer values"):
        logit_lens_lines(run.logit_lens, examples=run.examples, group_by="sum")
