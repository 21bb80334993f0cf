"""Addition: digits, answers and carry labels recomputed with Python ints and schoolbook column addition."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actstore.datasets import get_task
from actstore.datasets.addition import Addition
from actstore.errors import InvalidParameterError


def column_carries(a: str, b: str) -> list[bool]:
    """carries[i]: digit i (0 = most significant) receives a carry, by adding columns right to left."""
    carry, into = 0, [False] * len(a)
    for i in range(len(a) - 1, -1, -1):
        into[i] = carry == 1
        carry = (int(a[i]) + int(b[i]) + carry) // 10
    return into


def check(data, digits: int, max_operand: int) -> None:
    n = len(data)
    assert data.tokens.shape == (n, 3 * digits + 2)
    labels = data.labels.to_dicts()
    for i, row in enumerate(labels):
        text = data.text[i]
        m = re.fullmatch(rf"(\d{{{digits}}})\+(\d{{{digits}}})=(\d{{{digits}}})", text)
        assert m, text
        a, b, c = m.groups()
        assert 0 <= int(a) < max_operand and 0 <= int(b) < max_operand
        assert int(c) == int(a) + int(b)
        assert (row["a"], row["b"], row["sum"]) == (int(a), int(b), int(c))
        carries = column_carries(a, b)
        assert [row[f"carry_{k}"] for k in range(digits - 1)] == carries[: digits - 1]
        assert not carries[digits - 1]  # the last digit has no lower digit to carry from
        assert row["any_carry"] == any(carries)
        assert data.answer_tokens[i].tolist() == [int(ch) for ch in c]
        # each answer is read one position before its digit
        assert [data.tokens[i, p + 1] for p in data.answer_pos[i]] == [int(ch) for ch in c]
        assert data.str_tokens[i] == list(text)


def test_labels_match_column_addition_on_5000_examples() -> None:
    data = Addition().generate(5000, seed=3)
    check(data, 4, 5000)
    assert data.roles[0].tolist() == ["a0", "a1", "a2", "a3", "+", "b0", "b1", "b2", "b3", "=", "c0", "c1", "c2", "c3"]
    assert data.counter_tokens is None
    # carries are common enough to split on (the seed's carry vs non-carry analysis)
    assert 0.2 < data.labels["carry_2"].mean() < 0.6
    assert data.labels["any_carry"].mean() > 0.5


@given(digits=st.integers(1, 6), seed=st.integers(0, 2**32), data=st.data())
def test_any_digit_count(digits: int, seed: int, data) -> None:
    limit = 10**digits // 2
    max_operand = data.draw(st.integers(1, limit))
    check(Addition(digits=digits, max_operand=max_operand).generate(40, seed), digits, max_operand)


def test_same_seed_same_data_other_seed_other_data() -> None:
    a, b, c = (get_task("addition").generate(500, s) for s in (1, 1, 2))
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert a.labels.equals(b.labels)
    assert not np.array_equal(a.tokens, c.tokens)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"digits": 0}, "addition: digits must be an integer in 1..9, got 0"),
        ({"digits": 10}, "digits must be an integer in 1..9"),
        ({"digits": 2.0}, "digits must be an integer"),
        ({"max_operand": 5001}, "addition: max_operand must be an integer in 1..5000"),
        ({"digits": 2, "max_operand": 51}, "max_operand must be an integer in 1..50"),
        ({"max_operand": 0}, "max_operand"),
        ({"carry": True}, "addition: bad parameter"),
    ],
)
def test_bad_params_raise_one_clear_error(params: dict, message: str) -> None:
    with pytest.raises(InvalidParameterError, match=re.escape(message)):
        get_task("addition", **params)


@pytest.mark.parametrize("task", ["addition", "list_update", "brackets", "ioi", "days"])
@pytest.mark.parametrize("n, seed, message", [(0, 0, "n must be a positive integer"),
                                              (5, -1, "seed must be a non-negative integer"),
                                              (2.5, 0, "n must be"), (5, "1", "seed must be")])  # fmt: skip
def test_bad_n_or_seed_raise_for_every_task(task: str, n, seed, message: str) -> None:
    with pytest.raises(InvalidParameterError, match=message):
        get_task(task).generate(n, seed)
