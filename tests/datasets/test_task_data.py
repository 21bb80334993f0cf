"""TaskData.slice / to_frame, pad_ragged, and the task registry, on every task."""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl
import pytest

from actstore.datasets import TASKS, Task, TaskData, get_task
from actstore.datasets.base import pad_ragged
from actstore.errors import InvalidParameterError, UnknownTaskError


@pytest.fixture(scope="module", params=sorted(TASKS))
def data(request):
    return get_task(request.param).generate(50, seed=12)


def test_every_task_follows_the_protocol(data) -> None:
    task = get_task(data.task)
    assert isinstance(task, Task)
    n = len(data)
    assert n == 50 and data.tokens.dtype == np.int64 and data.tokens.ndim == 2
    assert data.lengths.shape == (n,) and data.lengths.max() <= data.tokens.shape[1]
    assert data.answer_pos.shape == data.answer_tokens.shape == (n, data.n_answers)
    assert (data.answer_pos < data.lengths[:, None]).all() and (data.answer_pos >= 0).all()
    assert data.counter_tokens is None or data.counter_tokens.shape == data.answer_tokens.shape
    assert data.roles.shape == data.tokens.shape
    assert [len(s) for s in data.str_tokens] == data.lengths.tolist()
    assert len(data.text) == data.labels.height == n
    for row, length in zip(data.tokens, data.lengths):
        assert (row[length:] == data.pad_id).all()
    if task.vocab is not None:
        assert data.tokens.max() < len(task.vocab)
        assert [[task.vocab[t] for t in row[:k]] for row, k in zip(data.tokens, data.lengths)] == data.str_tokens
    assert data.params == task.params
    # every example has its corrupted twin: same shape and padding, different real tokens
    twin = data.corrupted_tokens
    assert twin is not None and twin.dtype == np.int64 and twin.shape == data.tokens.shape
    real = np.arange(twin.shape[1])[None, :] < data.lengths[:, None]
    assert (twin[~real] == data.pad_id).all()
    assert ((twin != data.tokens) & real).any(axis=1).all()
    if task.vocab is not None:
        assert 0 <= twin.min() and twin.max() < len(task.vocab)


def test_slice_keeps_rows_aligned(data) -> None:
    part = data.slice(10, 25)
    assert len(part) == 15
    np.testing.assert_array_equal(part.tokens, data.tokens[10:25])
    np.testing.assert_array_equal(part.answer_tokens, data.answer_tokens[10:25])
    np.testing.assert_array_equal(part.corrupted_tokens, data.corrupted_tokens[10:25])
    assert part.text == data.text[10:25] and part.str_tokens == data.str_tokens[10:25]
    assert part.labels.equals(data.labels[10:25])
    assert (part.task, part.seed, part.params, part.pad_id) == (data.task, data.seed, data.params, data.pad_id)
    assert part.to_frame().drop("example_id").equals(data.to_frame()[10:25].drop("example_id"))


def test_to_frame_one_row_per_example(data) -> None:
    frame = data.to_frame()
    assert frame.height == len(data)
    assert frame["text"].to_list() == data.text
    assert frame["length"].to_list() == data.lengths.tolist()
    assert frame["answer_positions"].to_list() == data.answer_pos.tolist()
    assert frame["answer_tokens"].to_list() == data.answer_tokens.tolist()
    if data.counter_tokens is None:
        assert frame["counter_tokens"].null_count() == len(data)
    else:
        assert frame["counter_tokens"].to_list() == data.counter_tokens.tolist()
    assert frame["corrupted_tokens"].to_list() == [row[:k].tolist() for row, k in
                                                   zip(data.corrupted_tokens, data.lengths)]
    assert frame.columns[:8] == ["example_id", "text", "tokens", "length", "answer_positions", "answer_tokens",
                                 "counter_tokens", "corrupted_tokens"]
    assert frame.schema["corrupted_tokens"] == pl.List(pl.Int64)
    for col in data.labels.columns:
        assert frame[col].equals(data.labels[col]), col
    assert frame.schema["tokens"] == pl.List(pl.Int64)


def test_to_frame_without_a_twin_has_a_null_column(data) -> None:
    frame = data.slice(0, 5).to_frame()
    bare = TaskData(task=data.task, params=data.params, seed=data.seed, tokens=data.tokens[:5],
                    lengths=data.lengths[:5], answer_pos=data.answer_pos[:5], answer_tokens=data.answer_tokens[:5],
                    counter_tokens=None, roles=data.roles[:5], str_tokens=data.str_tokens[:5], text=data.text[:5],
                    labels=data.labels[:5], pad_id=data.pad_id)
    assert bare.corrupted_tokens is None and bare.slice(1, 3).corrupted_tokens is None
    got = bare.to_frame()
    assert got["corrupted_tokens"].null_count() == 5 and got.schema["corrupted_tokens"] == pl.List(pl.Int64)
    assert got.drop("corrupted_tokens", "counter_tokens").equals(frame.drop("corrupted_tokens", "counter_tokens"))


# sha256 (first 16 hex digits) of tokens, lengths, answer_pos, answer_tokens and corrupted_tokens of 500 examples,
# seed 21, as made in blocks (store format 3; format 2 drew all n examples from one generator). A change here
# changes every store's examples: bump store.manifest.FORMAT_VERSION and re-pin deliberately.
DIGESTS = {
    ("addition", ()): "1583338d398ff54b",
    ("list_update", ()): "8aff415f4c329537",
    ("brackets", ()): "d5029326f735af14",
    ("ioi", ()): "14a54df823f41b5f",
    ("ioi", (("corrupt", "abc"),)): "bd53b2405a48ec35",
    ("days", ()): "5b90eae4907afa2c",
    ("days", (("corrupt", "previous"),)): "5a5a3ed97928eb93",
}


@pytest.mark.parametrize("name, params", list(DIGESTS))
def test_generated_examples_are_pinned(name: str, params: tuple) -> None:
    data = get_task(name, **dict(params)).generate(500, 21)
    h = hashlib.sha256()
    for a in (data.tokens, data.lengths, data.answer_pos, data.answer_tokens, data.corrupted_tokens):
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
    assert h.hexdigest()[:16] == DIGESTS[name, params]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_twins_are_deterministic(name: str) -> None:
    a, b, c = (get_task(name).generate(300, s) for s in (8, 8, 9))
    np.testing.assert_array_equal(a.corrupted_tokens, b.corrupted_tokens)
    assert a.labels.equals(b.labels)
    assert not np.array_equal(a.corrupted_tokens, c.corrupted_tokens)


def test_pad_ragged() -> None:
    tokens, lengths = pad_ragged([[5, 6, 7], [8], [9, 9]], pad_id=-1)
    np.testing.assert_array_equal(tokens, [[5, 6, 7], [8, -1, -1], [9, 9, -1]])
    np.testing.assert_array_equal(lengths, [3, 1, 2])


def test_unknown_task_suggests_the_close_name() -> None:
    with pytest.raises(UnknownTaskError, match="unknown task 'addtion'; did you mean 'addition'"):
        get_task("addtion")
    with pytest.raises(UnknownTaskError, match="tasks: addition, list_update, brackets, ioi, days"):
        get_task("zzz")


@pytest.mark.parametrize("task", sorted(TASKS))
def test_unknown_param_names_the_task(task: str) -> None:
    with pytest.raises(InvalidParameterError, match=f"^{task}: bad parameter"):
        get_task(task, no_such_param=1)
