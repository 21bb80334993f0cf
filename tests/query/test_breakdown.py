"""breakdown: label splits of query tables, group sizes equal label counts, t intervals."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from query_models import N_EXAMPLES

from actstore.errors import InvalidParameterError, UnknownColumnError
from actstore.query import breakdown, dla, logit_lens
from actstore.query.breakdown import t975

# Student t 97.5% quantiles (standard tables, 3 decimals)
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 10: 2.228, 19: 2.093, 29: 2.045, 30: 2.042,
           60: 2.000, 120: 1.980}


def test_t_quantiles():
    for df, want in T_TABLE.items():
        assert abs(t975(df) - want) < 6e-4, df
    assert abs(t975(200) - t975(201)) < 1e-4  # the series and the expansion meet
    assert abs(t975(10**6) - 1.959966) < 1e-5
    with pytest.raises(InvalidParameterError):
        t975(0)


def test_carry_split_of_addition(tiny_store):
    """The seed-003 split: breakdown(dla, group_by='carry_2') over an addition store."""
    store = tiny_store("ln_mlp")
    table = dla(store, level="head")
    out = breakdown(table, group_by="carry_2", examples=store)
    assert out.columns == ["carry_2", "target", "answer_idx", "component", "layer", "head", "mean", "std", "n",
                           "ci_low", "ci_high"]
    counts = dict(store.examples.group_by("carry_2").len().iter_rows())
    n_comp = table.get_column("component").n_unique()
    assert out.height == len(counts) * store.n_answers * n_comp
    for label, n in counts.items():
        assert out.filter(pl.col("carry_2") == label).get_column("n").unique().to_list() == [n]
    assert out.get_column("carry_2").to_list()[0] is False  # labels sorted
    # one group by hand: numpy mean / std / t interval
    ids = store.examples.filter(pl.col("carry_2")).get_column("example_id")
    vals = table.filter(pl.col("example_id").is_in(ids.implode()), pl.col("component") == "L1H2",
                        pl.col("answer_idx") == 1).get_column("value").to_numpy()
    row = out.filter(pl.col("carry_2"), pl.col("component") == "L1H2", pl.col("answer_idx") == 1).row(0, named=True)
    assert row["n"] == vals.size == counts[True]
    assert math.isclose(row["mean"], vals.mean(), rel_tol=1e-12)
    assert math.isclose(row["std"], vals.std(ddof=1), rel_tol=1e-12)
    half = t975(vals.size - 1) * vals.std(ddof=1) / math.sqrt(vals.size)
    assert math.isclose(row["ci_high"] - row["mean"], half, rel_tol=1e-9)
    assert math.isclose(row["mean"] - row["ci_low"], half, rel_tol=1e-9)
    # components keep residual order inside a label
    first = out.filter(~pl.col("carry_2"), pl.col("answer_idx") == 0).get_column("component").to_list()
    assert first[:4] == ["embed", "pos_embed", "L0H0", "L0H1"]


def test_failure_types_of_brackets_and_several_labels(tiny_store):
    store = tiny_store("bidir")
    table = dla(store, level="layer", target="diff")
    out = breakdown(table, group_by=["failure", "starts_open"], examples=store.examples)
    counts = store.examples.group_by("failure", "starts_open").len()
    got = out.filter(pl.col("component") == "embed").select("failure", "starts_open", "n")
    joined = counts.join(got, on=["failure", "starts_open"], how="full", coalesce=True)
    assert joined.height == counts.height and (joined["len"] == joined["n"]).all()
    assert out.get_column("n").sum() == N_EXAMPLES * table.get_column("component").n_unique()


def test_single_example_groups_have_no_interval():
    table = pl.DataFrame({"example_id": [0, 1, 2], "component": ["a"] * 3, "value": [1.0, 2.0, 4.0]})
    labels = pl.DataFrame({"example_id": [0, 1, 2], "kind": ["x", "x", "y"]})
    out = breakdown(table, group_by="kind", examples=labels)
    x, y = out.row(0, named=True), out.row(1, named=True)
    assert (x["kind"], x["n"], x["mean"]) == ("x", 2, 1.5)
    assert math.isclose(x["ci_high"], 1.5 + 12.706204736 * math.sqrt(0.5) / math.sqrt(2), rel_tol=1e-6)
    assert (y["n"], y["mean"], y["std"], y["ci_low"]) == (1, 4.0, None, None)


def test_logit_lens_breakdown_keeps_stages(tiny_store):
    store = tiny_store("ln_mlp")
    table = logit_lens(store)
    out = breakdown(table, group_by="any_carry", examples=store)
    assert out.columns == ["any_carry", "target", "answer_idx", "layer", "stage", "mean", "std", "n", "ci_low",
                           "ci_high"]
    counts = dict(store.examples.group_by("any_carry").len().iter_rows())
    n_stages = 3 * 2 + 1
    assert out.height == len(counts) * store.n_answers * n_stages
    for label, n in counts.items():
        assert out.filter(pl.col("any_carry") == label).get_column("n").unique().to_list() == [n]
    # stages keep residual order inside a label and answer
    stages = out.filter(pl.col("any_carry"), pl.col("answer_idx") == 1).select("layer", "stage").rows()
    assert stages == [(0, "resid_pre"), (0, "resid_mid"), (1, "resid_pre"), (1, "resid_mid"), (2, "resid_pre"),
                      (2, "resid_mid"), (2, "resid_post")]
    # one group by hand: the final stage's logit on the correct answer over the examples with a carry
    ids = store.examples.filter(pl.col("any_carry")).get_column("example_id")
    vals = table.filter(pl.col("example_id").is_in(ids.implode()), pl.col("answer_idx") == 1,
                        pl.col("stage") == "resid_post").get_column("value").to_numpy()
    row = out.filter(pl.col("any_carry"), pl.col("answer_idx") == 1, pl.col("stage") == "resid_post").row(0, named=True)
    assert row["n"] == vals.size == counts[True]
    assert math.isclose(row["mean"], vals.mean(), rel_tol=1e-12)
    assert math.isclose(row["std"], vals.std(ddof=1), rel_tol=1e-12)


def test_errors(tiny_store):
    store = tiny_store("ln_mlp")
    table = dla(store, level="layer")
    with pytest.raises(UnknownColumnError, match=r"no label column 'carry_9' \(labels of these examples: .*carry_2"):
        breakdown(table, group_by="carry_9", examples=store)
    with pytest.raises(UnknownColumnError, match="pass examples="):
        breakdown(table, group_by="carry_2")
    with pytest.raises(UnknownColumnError, match="no value column 'logit'"):
        breakdown(table, group_by="carry_2", examples=store, value="logit")
    with pytest.raises(InvalidParameterError, match="not numeric"):
        breakdown(table, group_by="carry_2", examples=store, value="component")
    np.testing.assert_equal(breakdown(table, group_by="carry_2", examples=store, keys=["component"]).height,
                            2 * table.get_column("component").n_unique())
