"""Task defaults of the chart kinds, read from real stores of each task."""

from __future__ import annotations

import polars as pl
import pytest
from chart_spec import chart_rows

from actstore.charts import standard
from actstore.errors import InvalidParameterError


def test_default_targets_follow_counterfactuals(stores):
    assert standard.default_target(stores("addition")) == "correct"     # no counterfactual token
    assert standard.default_target(stores("list_update")) == "correct"
    assert standard.default_target(stores("ioi")) == "diff"             # IO vs S
    assert standard.default_target(stores("brackets")) == "diff"        # balanced vs unbalanced


def test_default_splits(stores):
    assert standard.default_split(stores("addition")) == ({0: "carry_0", 1: "carry_1", 2: "carry_2"},
                                                           "carry into this digit")
    assert standard.default_split(stores("brackets")) == ("failure", "failure")
    assert standard.default_split(stores("ioi")) == ("order", "order")
    with pytest.raises(InvalidParameterError, match="--by"):
        standard.default_split(stores("list_update"))


def test_default_query_roles(stores):
    assert standard.default_query_role(stores("ioi")) == "END"
    assert standard.default_query_role(stores("addition")) == "="   # the first answer is read at '='
    assert standard.default_query_role(stores("brackets")) == "start"


def test_default_x_and_vocab(stores):
    assert standard.default_x(stores("brackets")) == "open_proportion"
    vocab = standard.vocab_labels(stores("addition"))
    assert vocab == {i: s for i, s in enumerate([str(d) for d in range(10)] + ["+", "="])}


def test_top_heads_ranks_by_mean_magnitude():
    dla = pl.DataFrame({
        "component": ["L0H0", "L0H0", "L0H1", "L0H1", "L1H0", "L1H0", "mlp0"],
        "layer": [0, 0, 0, 0, 1, 1, 0], "head": [0, 0, 1, 1, 0, 0, None],
        "value": [1.0, -1.0, -3.0, -1.0, 0.5, 0.5, 100.0],
    })
    assert standard.top_heads(dla, 2) == [(0, 1), (1, 0)]   # |-2| and |0.5| beat |0|; MLPs are not heads


def test_accuracy_kind_on_a_store(stores):
    store = stores("brackets")
    rows = chart_rows(standard.make_chart(store, "accuracy"))
    labels = {r["label"] for r in rows}
    assert {"(all)", "balanced", "failure", "starts_open"} <= labels
    overall = [r for r in rows if r["label"] == "(all)"][0]
    assert overall["accuracy"] == pytest.approx(store.outputs.get_column("correct").mean())
    with pytest.raises(InvalidParameterError, match="kinds: dla-heads"):
        standard.make_chart(store, "pie")
