"""The pure table functions over sweep rows: labels named like sweep columns, role-keyed agreement,
the summary's score of means. Synthetic rows, checked against hand computation."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from actstore.query.interventions import agreement, effects, summary
from actstore.store.sweeps import ROW_SCHEMA


def rows(**cols) -> pl.DataFrame:
    n = len(cols["value"])
    base = {"sweep": ["s"] * n, "kind": ["patch"] * n, "hook": ["z"] * n, "layer": [0] * n, "head": [0] * n,
            "pos": [None] * n, "role": [None] * n, "example_id": list(range(n)), "answer_idx": [0] * n,
            "metric": ["logit_diff"] * n, "clean": [0.0] * n, "corrupted": [0.0] * n}
    return pl.DataFrame({**base, **cols}).cast(ROW_SCHEMA)  # type: ignore[arg-type]


def test_a_label_named_like_a_sweep_column_is_grouped_as_label():
    r = rows(value=[1.0, 2.0, 3.0, 5.0])
    ex = pl.DataFrame({"example_id": [0, 1, 2, 3], "kind": ["day", "day", "month", "month"]})
    got = effects(r, group_by="kind", examples=ex).sort("kind_label")
    assert got["kind_label"].to_list() == ["day", "month"] and got["kind"].to_list() == ["patch", "patch"]
    assert got["mean"].to_list() == [1.5, 4.0] and got["n"].to_list() == [2, 2]


def test_agreement_keys_role_addressed_targets_by_role():
    # END sits at position 3 in two examples and 5 in the others: one target per head, not per position
    pos, role = [3, 3, 5, 5] * 2, ["END"] * 8
    head = [0] * 4 + [1] * 4
    exact = rows(value=[1.0, 2.0, 3.0, 4.0, 9.0, 8.0, 7.0, 6.0], pos=pos, role=role, head=head,
                 example_id=[0, 1, 2, 3] * 2)
    atp = exact.with_columns(pl.col("value") * 2 + 1)
    a = agreement(atp, exact)
    assert a["n_targets"] == 2 and a["spearman"] == pytest.approx(1.0) and a["pearson"] == pytest.approx(1.0)
    swapped = exact.with_columns(pl.when(pl.col("head") == 0).then(10.0).otherwise(0.0).alias("value"))
    assert agreement(swapped, exact)["spearman"] == pytest.approx(-1.0)


def test_summary_scores_the_means():
    r = rows(value=[1.0, 3.0], clean=[4.0, 6.0], corrupted=[0.0, 2.0])
    s = summary(r).row(0, named=True)
    value, clean, corr = 2.0, 5.0, 1.0
    assert s["value"] == value and s["clean"] == clean and s["corrupted"] == corr
    assert s["score"] == pytest.approx((value - corr) / (clean - corr)) and s["n"] == 2
    half = float(np.std([1.0, 3.0], ddof=1) / np.sqrt(2) * 12.706204736174707)
    assert s["ci_high"] - s["value"] == pytest.approx(half)
