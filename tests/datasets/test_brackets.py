"""Brackets: labels against an independent algorithm (cancel '()' pairs), layout, mix of failures."""

from __future__ import annotations

import re

import numpy as np
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actstore.datasets import get_task
from actstore.datasets.base import BLOCK
from actstore.datasets.brackets import Brackets, bracket_labels
from actstore.errors import InvalidParameterError


def reduce_pairs(s: str) -> tuple[int, int]:
    """Cancel adjacent '()' until none remain: what is left is ')' * a + '(' * b.

    a > 0 exactly when some prefix has more closes than opens; a != b when the counts differ.
    """
    while "()" in s:
        s = s.replace("()", "")
    m = re.fullmatch(r"(\)*)(\(*)", s)
    assert m is not None
    return len(m.group(1)), len(m.group(2))


def expected_labels(s: str) -> dict:
    a, b = reduce_pairs(s)
    total, negative = a != b, a > 0
    return {
        "balanced": not (total or negative),
        "failure": {(False, False): "none", (True, False): "total_elevation",
                    (False, True): "negative_elevation", (True, True): "both"}[(total, negative)],
        "open_proportion": s.count("(") / len(s),
        "starts_open": s.startswith("("),
        "n_brackets": len(s),
        "length": len(s) + 2,
    }  # fmt: skip


@pytest.fixture(scope="module")
def data():
    return Brackets().generate(4000, seed=7)


def test_labels_match_pair_cancelling_on_4000_examples(data) -> None:
    got = data.labels.to_dicts()
    for s, row in zip(data.text, got):
        want = expected_labels(s)
        assert row["open_proportion"] == pytest.approx(want.pop("open_proportion"))
        assert {k: row[k] for k in want} == want, s


def test_tokens_roles_and_answers_follow_the_string(data) -> None:
    assert data.tokens.shape == (4000, 42)
    assert data.pad_id == 1
    vocab = Brackets().vocab
    assert vocab == ["[start]", "[pad]", "[end]", "(", ")"]
    for i, s in enumerate(data.text):
        n = len(s) + 2
        assert data.lengths[i] == n
        assert [vocab[t] for t in data.tokens[i, :n]] == ["[start]", *s, "[end]"]
        assert (data.tokens[i, n:] == 1).all()
        assert data.str_tokens[i] == ["[start]", *s, "[end]"]
        roles = ["start", *("open" if c == "(" else "close" for c in s), "end"] + [""] * (42 - n)
        assert data.roles[i].tolist() == roles
    balanced = data.labels["balanced"].to_numpy()
    np.testing.assert_array_equal(data.answer_pos, np.zeros((4000, 1)))
    np.testing.assert_array_equal(data.answer_tokens[:, 0], balanced.astype(int))
    np.testing.assert_array_equal(data.counter_tokens[:, 0], 1 - balanced.astype(int))


def test_half_balanced_and_every_failure_type_common(data) -> None:
    labels = data.labels
    # exactly half of each whole block of 1024 (shuffled within the block), about half of the partial last one
    assert labels["balanced"][:3 * BLOCK].sum() == 3 * BLOCK // 2
    assert abs(labels["balanced"].sum() - 2000) < 40
    unbalanced = labels.filter(~pl.col("balanced"))
    shares = dict(unbalanced.group_by("failure").len().iter_rows())
    assert set(shares) == {"total_elevation", "negative_elevation", "both"}
    for failure, count in shares.items():
        assert count / len(unbalanced) >= 0.15, (failure, count)
    # near misses: plenty of unbalanced strings with equal counts or starting with '('
    assert (unbalanced["open_proportion"] == 0.5).mean() > 0.25
    assert unbalanced["starts_open"].mean() > 0.5
    # lengths cover the whole range
    assert labels["n_brackets"].min() <= 2 and labels["n_brackets"].max() == 40


@given(max_len=st.integers(1, 30).map(lambda k: 2 * k), seed=st.integers(0, 2**32), n=st.integers(1, 60))
def test_any_params_give_consistent_examples(max_len: int, seed: int, n: int) -> None:
    data = Brackets(max_len=max_len).generate(n, seed)
    assert data.tokens.shape == (n, max_len + 2)
    assert all(1 <= len(s) <= max_len and set(s) <= {"(", ")"} for s in data.text)
    assert 0 <= data.labels["balanced"].sum() <= n  # half of each whole block: see the test above
    for s, row in zip(data.text, data.labels.iter_rows(named=True)):
        assert row["balanced"] == expected_labels(s)["balanced"]
    check_twins(data)


def flip(s: str, i: int) -> str:
    return s[:i] + (")" if s[i] == "(" else "(") + s[i + 1:]


def check_twins(data) -> None:
    """Each twin is its string with one bracket flipped; the flip changes the balanced label wherever some
    flip can (pair cancelling over every flip decides which can)."""
    vocab = Brackets().vocab
    assert data.corrupted_tokens.shape == data.tokens.shape
    for i, (s, row) in enumerate(zip(data.text, data.labels.iter_rows(named=True))):
        n = len(s) + 2
        twin = data.corrupted_tokens[i]
        assert (twin[n:] == 1).all() and twin[0] == 0 and twin[n - 1] == 2  # [start] .. [end] then [pad]
        differ = np.flatnonzero(twin != data.tokens[i]).tolist()
        assert len(differ) == 1 and 1 <= differ[0] <= len(s) and differ[0] == row["twin_pos"]
        t = "".join(vocab[x] for x in twin[1 : n - 1])
        assert t == flip(s, differ[0] - 1)
        assert row["twin_balanced"] == expected_labels(t)["balanced"]
        can_change = [j for j in range(len(s)) if expected_labels(flip(s, j))["balanced"] != row["balanced"]]
        assert (row["twin_balanced"] != row["balanced"]) == bool(can_change)
        if row["balanced"]:
            assert not row["twin_balanced"]  # a flip always unbalances a balanced string


def test_twin_flips_one_bracket(data) -> None:
    check_twins(data)
    labels = data.labels
    # every balanced twin is unbalanced; a good share of unbalanced strings have a balancing flip
    flipped = labels["twin_balanced"] != labels["balanced"]
    assert flipped.filter(labels["balanced"]).all()
    assert 0.2 < flipped.filter(~labels["balanced"]).mean() < 0.6
    assert labels["twin_pos"].n_unique() >= 30  # the flipped bracket is drawn, not always the first


def test_balanced_fraction_param() -> None:
    assert Brackets(balanced_fraction=0.0).generate(200, 1).labels["balanced"].sum() == 0
    assert Brackets(balanced_fraction=1.0).generate(200, 1).labels["balanced"].sum() == 200
    assert Brackets(balanced_fraction=0.25).generate(2 * BLOCK, 1).labels["balanced"].sum() == BLOCK // 2


def test_bracket_labels_on_hand_picked_strings() -> None:
    labels = bracket_labels(["()", ")(", "((", "())", "(()())", "("]).to_dicts()
    assert [r["failure"] for r in labels] == [
        "none", "negative_elevation", "total_elevation", "both", "none", "total_elevation"
    ]  # fmt: skip
    assert [r["open_proportion"] for r in labels] == [0.5, 0.5, 1.0, 1 / 3, 0.5, 1.0]


def test_same_seed_same_data_other_seed_other_data() -> None:
    a, b, c = (get_task("brackets").generate(300, s) for s in (5, 5, 6))
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert a.labels.equals(b.labels)
    assert not np.array_equal(a.tokens, c.tokens)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"max_len": 3}, "brackets: max_len must be an even integer in 2..200, got 3"),
        ({"max_len": 0}, "max_len must be an even integer"),
        ({"max_len": 202}, "max_len must be an even integer"),
        ({"max_len": "40"}, "max_len must be an even integer"),
        ({"max_len": True}, "max_len must be an even integer"),
        ({"balanced_fraction": 1.5}, "brackets: balanced_fraction must be a number in 0..1"),
        ({"balanced_fraction": "half"}, "balanced_fraction"),
        ({"length": 4}, "brackets: bad parameter"),
    ],
)
def test_bad_params_raise_one_clear_error(params: dict, message: str) -> None:
    with pytest.raises(InvalidParameterError, match=re.escape(message)):
        get_task("brackets", **params)
