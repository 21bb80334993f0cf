"""chunks.at_answers: a hook's values at each example's answer positions, for every position layout."""

from __future__ import annotations

import numpy as np
import pytest

from actstore.query.chunks import at_answers

Z_DIMS = ("example", "pos", "head", "d_head")
PATTERN_DIMS = ("example", "head", "query_pos", "key_pos")


@pytest.mark.parametrize("positions", [
    [[2, 3, 4]] * 5,                                        # the same contiguous run in every example
    [[1, 4, 5]] * 5,                                        # the same positions, not contiguous
    [[0, 1, 2], [3, 4, 5], [1, 3, 5], [5, 5, 0], [2, 0, 4]],  # each example its own
])
@pytest.mark.parametrize("dims", [Z_DIMS, PATTERN_DIMS])
def test_at_answers_picks_each_examples_positions(dims: tuple[str, ...], positions: list[list[int]]) -> None:
    pos = np.array(positions, dtype=np.int64)  # [example, answer]
    array = np.random.default_rng(0).normal(size=(5, 6, 7, 6) if dims == Z_DIMS else (5, 3, 6, 6)).astype(np.float16)
    axis = dims.index("pos" if "pos" in dims else "query_pos")
    got = at_answers(array, dims, pos)
    want = np.stack([np.take(array[e], pos[e], axis=axis - 1) for e in range(5)])
    np.testing.assert_array_equal(got, want)
    assert not np.shares_memory(got, array)  # a copy: the chunk it came from can be freed


def test_at_answers_leaves_answer_arrays_alone() -> None:
    array = np.ones((4, 2, 3), dtype=np.float16)
    assert at_answers(array, ("example", "answer", "d_mlp"), np.zeros((4, 2), dtype=np.int64)) is array
