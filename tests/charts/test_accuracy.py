"""Accuracy by label from outputs + examples, and its chart."""

from __future__ import annotations

import numpy as np
import pytest
from chart_spec import chart_rows

from actstore.charts import accuracy_bars, accuracy_table
from actstore.charts.accuracy import label_columns


def test_label_columns_skip_high_cardinality(run):
    # a, b, sum have too many values; twin_* describe the corrupted twin, not the example
    assert [c for c in run.examples.columns if c.startswith("twin_")]
    assert label_columns(run.examples) == ["carry_0", "carry_1", "carry_2", "any_carry"]


def test_accuracy_table_matches_numpy(run):
    table = accuracy_table(run.outputs, run.examples)
    correct = run.logits_correct                     # [example, answer]
    first = table.row(0, named=True)
    assert (first["label"], first["value"], first["examples"]) == ("(all)", "all", correct.shape[0])
    assert first["accuracy"] == pytest.approx(correct.mean())
    assert first["exact"] == pytest.approx(correct.all(axis=1).mean())
    row = table.filter((table["label"] == "answer") & (table["value"] == "answer 2")).row(0, named=True)
    assert row["accuracy"] == pytest.approx(correct[:, 2].mean())
    carry = run.examples.get_column("carry_1").to_numpy()
    row = table.filter((table["label"] == "carry_1") & (table["value"] == "true")).row(0, named=True)
    assert row["examples"] == carry.sum()
    assert row["accuracy"] == pytest.approx(correct[carry].mean())
    assert row["mean_loss"] == pytest.approx(run.outputs.filter(
        run.outputs["example_id"].is_in(np.nonzero(carry)[0].tolist()))["loss"].mean())
    assert "mean_logit_diff" not in table.columns  # outputs without logit_diff: no empty column


def test_accuracy_bars(run):
    table = accuracy_table(run.outputs, run.examples, group_by=["any_carry"])
    chart = accuracy_bars(table)
    rows = chart_rows(chart)
    assert [(r["label"], r["value"]) for r in rows] == [
        ("(all)", "all"), ("answer", "answer 0"), ("answer", "answer 1"), ("answer", "answer 2"),
        ("answer", "answer 3"), ("any_carry", "false"), ("any_carry", "true")]
    spec = chart.to_dict()
    assert spec["spec"]["encoding"]["y"]["scale"]["domain"] == [0, 1]
    assert spec["title"]["text"] == "Accuracy by label"
