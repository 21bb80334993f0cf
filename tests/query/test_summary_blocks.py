"""summary.blocked_stats: a read-out table's per-chunk statistics from one block's keys and one label row
per example, the same bits as grouping every row (GroupStats.of), and None for tables not laid out so."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from actstore.query.dla import dla_plan
from actstore.query.executor import Job
from actstore.query.logit_lens import lens_plan
from actstore.query.summary import GroupSpec, GroupStats, SummaryPlan, blocked_stats, with_labels


def identical(a: GroupStats | None, b: GroupStats) -> None:
    assert a is not None
    assert_frame_equal(a.keys, b.keys, check_exact=True)
    for f in ("n", "mean", "m2"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f


@pytest.fixture(scope="module")
def store(tiny_store):
    return tiny_store("ln_mlp")  # addition: carry labels; 40 examples in chunks of 16, 16, 8


@pytest.mark.parametrize("plan, params", [(dla_plan, {"level": "head"}), (dla_plan, {"level": "neuron"}),
                                          (lens_plan, {})])
@pytest.mark.parametrize("by", [("carry_2",), ("carry_0", "carry_1"), ()])
def test_read_out_chunks_give_the_bits_of_grouping_every_row(store, plan, params, by):
    summary = SummaryPlan(store, Job(plan, params), GroupSpec(by=by))
    frames = list(summary.inner.partials(summary.ranges()))
    assert len(frames) == 3
    for frame in frames:
        whole = GroupStats.of(with_labels(frame, summary.labels), summary.columns, "value")
        assert whole.keys.height > 1
        identical(blocked_stats(frame, summary.labels, summary.columns, "value"), whole)


def test_keys_with_nulls_strings_and_groups_first_seen_late():
    # 3 examples x 4 rows; the label puts examples 0 and 2 together, example 1 apart
    items = pl.DataFrame({"component": ["embed", "L0H0", "L0H1", "embed"], "head": [None, 0, 1, None],
                          "answer_idx": [0, 0, 0, 1]})
    table = pl.concat([pl.DataFrame({"example_id": [e] * 4}).hstack(items) for e in (4, 5, 6)])
    table = table.with_columns(value=pl.Series(np.arange(12, dtype=np.float64) ** 1.5))
    labels = pl.DataFrame({"carry": [None, None, None, None, True, False, True], "word": ["a"] * 7})
    for columns in (["carry", "component", "head", "answer_idx"], ["component", "carry"], ["word", "head"]):
        whole = GroupStats.of(with_labels(table, labels), columns, "value")
        identical(blocked_stats(table, labels, columns, "value"), whole)


def test_tables_not_in_blocks_are_left_to_the_row_by_row_grouping():
    table = pl.DataFrame({"example_id": [0, 0, 1, 1], "answer_idx": [0, 1, 0, 1], "value": [1.0, 2.0, 3.0, 4.0]})
    labels = pl.DataFrame({"carry": [True, False]})
    assert blocked_stats(table, labels, ["carry", "answer_idx"], "value") is not None
    swapped = table.with_columns(answer_idx=pl.Series([0, 1, 1, 0]))  # blocks whose keys differ
    interleaved = table.with_columns(example_id=pl.Series([0, 1, 0, 1]))  # rows of an example apart
    ragged = table.slice(0, 3)  # a last block shorter than the first
    null_value = table.with_columns(value=pl.Series([1.0, None, 3.0, 4.0]))
    float_key = table.with_columns(pl.col("answer_idx").cast(pl.Float64))
    no_ids = table.drop("example_id")
    outside = table.with_columns(example_id=pl.Series([0, 0, 7, 7]))  # an id the labels do not hold
    for bad in (swapped, interleaved, ragged, null_value, float_key, outside):
        assert blocked_stats(bad, labels, ["carry", "answer_idx"], "value") is None
    assert blocked_stats(no_ids, None, ["answer_idx"], "value") is None
    assert blocked_stats(table.clear(), labels, ["carry"], "value") is None
    assert blocked_stats(table, labels, [], "value") is None  # one group of every row: no blocks to use
