"""Task defaults of the chart kinds, read from real stores of each task."""

from __future__ import annotations

import polars as pl
import pytest
from chart_spec import chart_rows
from no_counter import no_counter_task
from stores import tiny_model

import actstore
from actstore.charts import standard
from actstore.errors import InvalidParameterError


def test_default_targets_follow_counterfactuals(stores, tmp_path):
    assert standard.default_target(stores("addition")) == "diff"        # vs the corrupted twin's sum digits
    assert standard.default_target(stores("list_update")) == "diff"     # vs the twin's updated list
    assert standard.default_target(stores("ioi")) == "diff"             # IO vs S
    assert standard.default_target(stores("brackets")) == "diff"        # balanced vs unbalanced
    with no_counter_task() as task:                                     # a task without counterfactual tokens
        store = actstore.ingest(task, tiny_model("addition"), 16, 0, tmp_path / "bare", quiet=True)
    assert standard.default_target(store) == "correct"


def test_default_splits(stores):
    assert standard.default_split(stores("addition")) == ({0: "carry_0", 1: "carry_1", 2: "carry_2"},
                                                           "carry into this digit")
    assert standard.default_split(stores("brackets")) == ("failure", "failure")
    assert standard.default_split(stores("ioi")) == ("order", "order")
    with pytest.raises(InvalidParameterError, match="group_by"):
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


def test_streamed_role_means_equal_the_raw_rows(stores):
    """The report's aggregated attention query and the builders' own raw-row reduction agree."""
    from actstore.charts.attention import role_summary
    from actstore.query import attention

    store = stores("ioi")
    heads = [(0, 1), (1, 3)]
    agg = standard.attention_pattern_table(store, heads)
    raw = role_summary(attention(store, layers=[0, 1], heads=[1, 3]).filter(
        ((pl.col("layer") == 0) & (pl.col("head") == 1)) | ((pl.col("layer") == 1) & (pl.col("head") == 3))))
    agg = agg.with_columns(pl.col("q_role").fill_null("other"), pl.col("k_role").fill_null("other"))
    both = raw.join(agg, on=["layer", "head", "q_role", "k_role"], how="inner", suffix="_agg")
    assert both.height == agg.height > 20
    # the query counts a query row only where it can see a key of that role; the raw reduction counts
    # every query row of the role (unseen keys as 0): same total mass, more rows on the raw side
    n_raw, n_agg = both["n"].cast(pl.Int64), both["n_agg"]
    assert (n_raw >= n_agg).all() and (n_raw == n_agg).sum() > 20
    total_raw, total_agg = both["mean"] * n_raw, both["mean_agg"] * n_agg
    assert (total_raw - total_agg).abs().max() < 1e-4
    same = both.filter(n_raw == n_agg)
    assert (same["mean"] - same["mean_agg"]).abs().max() < 1e-6
    # cells the query leaves out are exactly those no query can see (0 in the raw reduction)
    assert raw.join(agg, on=["layer", "head", "q_role", "k_role"], how="anti")["mean"].abs().max() == 0
    by_position = (store.tokens.drop_nulls("role").group_by("role").agg(pl.col("pos").mean()).sort("pos")
                   .get_column("role").to_list())  # S1 and IO swap places by order: their mean positions decide
    assert set(by_position) == {"S1", "IO", "S2", "END"}
    assert standard.token_roles(store) == [*by_position, "other"]
