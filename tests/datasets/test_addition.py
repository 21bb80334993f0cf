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


def flipping_changes(a: str, b: str, column: int, limit: int) -> list[tuple[int, str]]:
    """Every change of digit `column` of a or b (as (operand, new operand string)) that flips the carry
    into digit column - 1, keeps the operand below `limit`: by brute force with column addition."""
    out = []
    for operand, x in enumerate((a, b)):
        for v in "0123456789":
            if v == x[column]:
                continue
            y = x[:column] + v + x[column + 1:]
            if int(y) >= limit:
                continue
            pair = (y, b) if operand == 0 else (a, y)
            if column_carries(*pair)[column - 1] != column_carries(a, b)[column - 1]:
                out.append((operand, y))
    return out


def check_twin(data, digits: int, max_operand: int) -> None:
    """The twin, re-read from its tokens: one digit of one operand changed, the sum its own, carry_0 flipped
    where some change of column 1 can flip it (in range where possible); counter tokens are its sum digits."""
    n, width = data.tokens.shape
    twin = data.corrupted_tokens
    assert twin.shape == (n, width) and (data.lengths == width).all()
    for i, row in enumerate(data.labels.iter_rows(named=True)):
        a, b, c = (data.text[i][k * (digits + 1):(k + 1) * (digits + 1) - 1] for k in range(3))
        t = "".join(Addition().vocab[x] for x in twin[i])
        m = re.fullmatch(rf"(\d{{{digits}}})\+(\d{{{digits}}})=(\d{{{digits}}})", t)
        assert m, t
        ta, tb, tc = m.groups()
        assert int(tc) == int(ta) + int(tb)  # the twin's sum digits are its own sum
        assert (row["twin_a"], row["twin_b"], row["twin_sum"]) == (int(ta), int(tb), int(tc))
        changed = [(k, j) for k, (x, y) in enumerate(((a, ta), (b, tb))) for j in range(digits) if x[j] != y[j]]
        assert len(changed) == 1, (a, b, ta, tb)  # exactly one digit of one operand
        operand, digit = changed[0]
        assert (row["twin_operand"], row["twin_digit"]) == ("ab"[operand], digit)
        assert digit == min(1, digits - 1)  # column 1 (its carry-out is carry_0); the only digit when digits = 1
        assert int(ta) + int(tb) < 10**digits
        # the twin differs from the clean tokens in the changed digit and the sum digits that change
        diff_pos = np.flatnonzero(twin[i] != data.tokens[i]).tolist()
        sum_diff = [j for j in range(digits) if c[j] != tc[j]]
        assert diff_pos == [operand * (digits + 1) + digit] + [2 * digits + 2 + j for j in sum_diff]
        assert [row[f"twin_differs_{j}"] for j in range(digits)] == [c[j] != tc[j] for j in range(digits)]
        assert data.counter_tokens[i].tolist() == [int(ch) for ch in tc]
        new = ta if operand == 0 else tb
        if digits == 1:
            assert not row["twin_carry_flipped"]
            assert int(new) < max_operand or max_operand == 1  # a = b = 0 and max_operand 1: no other digit fits
            continue
        flipped = column_carries(a, b)[0] != column_carries(ta, tb)[0]
        assert row["twin_carry_flipped"] == flipped
        # carry_0 flips unless no change of a1 or b1 can flip it; in range unless no in-range change flips it
        possible = flipping_changes(a, b, 1, 10**digits // 2)
        assert flipped == bool(possible)
        assert bool(possible) == (not ({a[1], b[1]} == {"9"} and column_carries(a, b)[1]
                                       or {a[1], b[1]} == {"0"} and not column_carries(a, b)[1]))
        if flipping_changes(a, b, 1, max_operand):
            assert int(new) < max_operand and (operand, new) in flipping_changes(a, b, 1, max_operand)


def test_labels_match_column_addition_on_5000_examples() -> None:
    data = Addition().generate(5000, seed=3)
    check(data, 4, 5000)
    assert data.roles[0].tolist() == ["a0", "a1", "a2", "a3", "+", "b0", "b1", "b2", "b3", "=", "c0", "c1", "c2", "c3"]
    check_twin(data, 4, 5000)
    # carries are common enough to split on (the seed's carry vs non-carry analysis)
    assert 0.2 < data.labels["carry_2"].mean() < 0.6
    assert data.labels["any_carry"].mean() > 0.5


@given(digits=st.integers(1, 6), seed=st.integers(0, 2**32), data=st.data())
def test_any_digit_count(digits: int, seed: int, data) -> None:
    limit = 10**digits // 2
    max_operand = data.draw(st.integers(1, limit))
    generated = Addition(digits=digits, max_operand=max_operand).generate(40, seed)
    check(generated, digits, max_operand)
    check_twin(generated, digits, max_operand)


def test_twin_flips_carry_0_and_draws_its_change() -> None:
    data = Addition().generate(5000, seed=3)
    labels = data.labels
    # carry_0 flips except where a1 = b1 = 9 with a carry into column 1, or a1 = b1 = 0 without (about 1%)
    assert 0.98 < labels["twin_carry_flipped"].mean() < 1.0
    twin_carry_0 = (labels["twin_a"] % 1000 + labels["twin_b"] % 1000) >= 1000
    assert ((twin_carry_0 != labels["carry_0"]) == labels["twin_carry_flipped"]).all()
    assert 0.45 < (labels["twin_operand"] == "a").mean() < 0.55  # both operands are changed
    assert ((labels["twin_a"] // 100) % 10).n_unique() == 10
    # the counterfactual differs from the answer at c0 (where carry_0 flips) and c1 (always), never at c2, c3
    differs = data.counter_tokens != data.answer_tokens
    np.testing.assert_array_equal(differs[:, 0], labels["twin_carry_flipped"].to_numpy())
    assert differs[:, 1].all() and not differs[:, 2:].any()
    # a max_operand that an a1/b1 change can exceed: operands stay in range where a flip in range exists
    small = Addition(max_operand=1234).generate(2000, seed=5)
    check_twin(small, 4, 1234)
    assert (small.labels["twin_a"] >= 1234).any() or (small.labels["twin_b"] >= 1234).any()


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
