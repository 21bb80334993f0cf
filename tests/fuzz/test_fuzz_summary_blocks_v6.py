"""summary.blocked_stats against grouping every row (GroupStats.of of with_labels), on random tables laid out
in blocks of one example each: keys with nulls, strings and booleans, labels with nulls, examples repeated and
out of order (never twice in a row: that reads as one block), one-row and one-example blocks, NaN and inf
values: the same keys, counts, means and m2, bit for bit."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from actstore.query.summary import GroupStats, blocked_stats, with_labels


@pytest.mark.parametrize("seed", range(40))
def test_random_block_tables_give_the_bits_of_grouping_every_row(seed):
    rng = np.random.default_rng(seed)
    step, examples, n_labels = int(rng.integers(1, 6)), int(rng.integers(1, 7)), 8
    ids = rng.integers(0, n_labels, examples) if seed % 3 else np.arange(examples)
    ids = ids[np.r_[True, ids[1:] != ids[:-1]]]  # an example's rows are one block (the same id twice in a row: one)
    block = pl.DataFrame({
        "component": pl.Series(rng.choice(["embed", "L0H0", "L0H1", None], step).tolist(), dtype=pl.String),
        "head": pl.Series(rng.choice([0, 1, -1], step)).replace(-1, None),
        "answer_idx": rng.integers(0, 2, step),
        "flag": rng.random(step) < 0.5})
    table = pl.concat([pl.DataFrame({"example_id": [int(e)] * step}).hstack(block) for e in ids])
    values = rng.standard_normal(table.height) * 10.0 ** rng.integers(-3, 4)
    if seed % 5 == 0:
        values[rng.integers(0, table.height)] = np.nan if seed % 2 else np.inf
    table = table.with_columns(value=pl.Series(values))
    labels = pl.DataFrame({"carry": pl.Series(rng.choice([0, 1, 2], n_labels)).replace(2, None).cast(pl.Boolean),
                           "word": rng.choice(["a", "b"], n_labels).tolist()})
    pool = ["carry", "word", "component", "head", "answer_idx", "flag"]
    columns = [str(c) for c in rng.permutation(pool)[:int(rng.integers(1, len(pool) + 1))]]
    whole = GroupStats.of(with_labels(table, labels), columns, "value")
    got = blocked_stats(table, labels, columns, "value")
    assert got is not None
    assert_frame_equal(got.keys, whole.keys, check_exact=True)
    for f in ("n", "mean", "m2"):
        np.testing.assert_array_equal(getattr(got, f), getattr(whole, f), err_msg=f)
