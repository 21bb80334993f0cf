"""Generation in blocks: example i depends on (params, seed, i) alone, on every task.

The first k examples of n are those of n = k (k below, at and across block boundaries), any range
made alone is the slice of the whole, and the labels and twins of a range are those of the whole
(each task's own tests check that the labels match the examples).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from actstore.datasets import TASKS, get_task
from actstore.datasets.base import BLOCK, TaskData, generate_range
from actstore.errors import InvalidParameterError

N = 2 * BLOCK + 300  # three blocks, the last partial


def same(a: TaskData, b: TaskData) -> None:
    for name in ("tokens", "lengths", "answer_pos", "answer_tokens", "counter_tokens", "corrupted_tokens", "roles"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.text == b.text and a.str_tokens == b.str_tokens
    assert a.labels.equals(b.labels)
    assert (a.pad_id, a.params, a.seed) == (b.pad_id, b.params, b.seed)


@pytest.fixture(scope="module", params=sorted(TASKS))
def whole(request) -> TaskData:
    return get_task(request.param).generate(N, seed=5)


@pytest.mark.parametrize("k", [1, 7, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK + 17])
def test_first_k_of_n_are_n_equals_k(whole: TaskData, k: int) -> None:
    same(get_task(whole.task).generate(k, seed=5), whole.slice(0, k))


@pytest.mark.parametrize("start, stop", [(0, 1), (3, 40), (BLOCK - 5, BLOCK + 5), (BLOCK, 2 * BLOCK),
                                         (700, N), (2 * BLOCK + 1, N)])
def test_a_range_made_alone_is_the_slice_of_the_whole(whole: TaskData, start: int, stop: int) -> None:
    same(get_task(whole.task).generate_range(start, stop, seed=5), whole.slice(start, stop))


def test_every_example_is_padded_to_the_task_width(whole: TaskData) -> None:
    """The width never depends on n: a short range is as wide as the whole."""
    assert get_task(whole.task).generate(1, seed=5).tokens.shape[1] == whole.tokens.shape[1]
    assert whole.tokens.shape[1] >= int(whole.lengths.max())


def test_other_seed_other_blocks(whole: TaskData) -> None:
    other = get_task(whole.task).generate_range(BLOCK, BLOCK + 200, seed=6)
    assert not np.array_equal(other.tokens, whole.tokens[BLOCK:BLOCK + 200])
    # blocks differ from one another (block b is not block 0 again)
    assert not np.array_equal(whole.tokens[:200], whole.tokens[BLOCK:BLOCK + 200])


def test_generate_range_of_a_task_with_only_generate() -> None:
    """A registered task that has no generate_range is sliced from generate(stop)."""
    inner = get_task("addition")

    class OnlyGenerate:
        def generate(self, n: int, seed: int, tokenizer: object = None) -> TaskData:
            return inner.generate(n, seed, tokenizer)

    same(generate_range(OnlyGenerate(), 10, 30, 2), inner.generate(30, 2).slice(10, 30))


def test_generate_range_of_a_subclass_that_overrides_generate() -> None:
    """A subclass of a block task that edits generate's examples gets its own examples from ranges too."""
    from actstore.datasets.addition import Addition

    class Shifted(Addition):
        def generate(self, n: int, seed: int, tokenizer: object = None) -> TaskData:
            data = super().generate(n, seed, tokenizer)
            return TaskData(**{**data.__dict__, "answer_tokens": 9 - data.answer_tokens})

    got = generate_range(Shifted(), 5, 9, 1)
    np.testing.assert_array_equal(got.answer_tokens, 9 - get_task("addition").generate(9, 1).answer_tokens[5:9])


@pytest.mark.parametrize("start, stop, message", [(-1, 5, "start must be a non-negative integer"),
                                                   (5, 5, "stop must be an integer above start=5"),
                                                   (0, 2_000_001, "n must be at most")])
def test_bad_ranges_are_refused(start: int, stop: int, message: str) -> None:
    with pytest.raises(InvalidParameterError, match=message):
        get_task("addition").generate_range(start, stop, 0)


def test_prompts_ranges_slice_the_file(tmp_path) -> None:
    tok = pytest.importorskip("actstore.datasets.wordtok").word_tokenizer()
    ioi = get_task("ioi").generate(5, 0, tokenizer=tok)
    rows = [{"text": text, "answer": " " + io} for text, io in zip(ioi.text, ioi.labels["io"])]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = get_task("prompts", file=str(path))
    whole = task.generate(5, 0, tokenizer=tok)
    same(task.generate_range(2, 4, 0, tokenizer=tok), whole.slice(2, 4))
    same(task.generate(3, 0, tokenizer=tok), whole.slice(0, 3))
