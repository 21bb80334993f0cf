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


@pytest.mark.parametrize("positions", ["run", "same", "own"])
@pytest.mark.parametrize("dims", [Z_DIMS, PATTERN_DIMS, ("example", "answer", "d_mlp")])
def test_at_answers_cast_gives_the_gathered_values(dims: tuple[str, ...], positions: str) -> None:
    """at_answers(..., float32) is the gather then numpy's cast, bit for bit (inf, NaN and subnormals
    included), over several of the cast's blocks, the last one short."""
    rng = np.random.default_rng(1)
    n = 2 * (1 << 17) // 24 + 37
    shape = {Z_DIMS: (n, 9, 2, 4), PATTERN_DIMS: (n, 2, 9, 4)}.get(dims, (n, 3, 8))
    array = np.clip(rng.normal(scale=30000, size=shape), -65504, 65504).astype(np.float16)
    array.reshape(-1)[::97] = np.array([np.inf, -np.inf, np.nan, 6e-8, -0.0, 65504], dtype=np.float16)[
        np.arange(array.reshape(-1)[::97].size) % 6]
    width = array.shape[dims.index("answer")] if "answer" in dims else 9
    pos = {"run": np.tile([4, 5, 6], (n, 1)), "same": np.tile([1, 6, 8], (n, 1)),
           "own": rng.integers(0, width, size=(n, 3))}[positions]
    pos = pos[:, :width] if "answer" in dims else pos
    whole = at_answers(array, dims, pos)
    got = at_answers(array, dims, pos, np.float32)
    assert got.dtype == np.float32 and got.flags.c_contiguous and not np.shares_memory(got, array)
    np.testing.assert_array_equal(got.view(np.uint32), whole.astype(np.float32).view(np.uint32))


def test_at_answers_never_reuses_another_arrays_positions() -> None:
    """The positions of the last read-only answer array are kept (chunks._shared_positions): a different array,
    or a writable one changed in place, is looked at anew."""
    array = np.arange(2 * 6 * 2, dtype=np.float32).reshape(2, 6, 2)
    dims = ("example", "pos", "one")
    same = np.array([[1, 2], [1, 2]])
    same.setflags(write=False)
    np.testing.assert_array_equal(at_answers(array, dims, same), array[:, 1:3])
    differ = np.array([[1, 2], [4, 5]])
    differ.setflags(write=False)
    np.testing.assert_array_equal(at_answers(array, dims, differ), np.stack([array[0, 1:3], array[1, 4:6]]))
    np.testing.assert_array_equal(at_answers(array, dims, same), array[:, 1:3])
    writable = np.array([[1, 2], [1, 2]])
    np.testing.assert_array_equal(at_answers(array, dims, writable), array[:, 1:3])
    writable[1] = [4, 5]
    np.testing.assert_array_equal(at_answers(array, dims, writable), np.stack([array[0, 1:3], array[1, 4:6]]))
    view = writable[:]
    view.setflags(write=False)  # a read-only view of memory that can still change
    np.testing.assert_array_equal(at_answers(array, dims, view), np.stack([array[0, 1:3], array[1, 4:6]]))
    writable[1] = [1, 2]
    np.testing.assert_array_equal(at_answers(array, dims, view), array[:, 1:3])
