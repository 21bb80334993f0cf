"""List update: the updated list recomputed in plain Python from the tokens of each example."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actstore.datasets import get_task
from actstore.datasets.list_update import ListUpdate
from actstore.errors import InvalidParameterError


def check(data, k: int, max_num: int) -> None:
    bos, nl = max_num, max_num + 1
    labels = data.labels.to_dicts()
    for i, row in enumerate(labels):
        toks = data.tokens[i].tolist()
        assert len(toks) == 2 * k + 5
        assert toks[0] == bos and toks[k + 1] == nl and toks[k + 4] == nl
        a, idx, elt, b = toks[1 : k + 1], toks[k + 2], toks[k + 3], toks[k + 5 :]
        assert 0 <= idx < k and all(0 <= x < max_num for x in a + [elt])
        want = list(a)
        want[idx] = elt
        assert b == want
        assert (row["idx"], row["elt"], row["changed"]) == (idx, elt, a[idx] != elt)
        assert [row[f"a{j}"] for j in range(k)] == a
        assert data.answer_tokens[i].tolist() == want
        assert [toks[p + 1] for p in data.answer_pos[i]] == want
        assert data.text[i] == " ".join(data.str_tokens[i])
        # the twin: the same list and idx, another element, and its own update as its b-list
        twin = data.corrupted_tokens[i].tolist()
        t_elt, t_b = twin[k + 3], twin[k + 5:]
        assert twin[: k + 3] == toks[: k + 3] and twin[k + 4] == nl
        assert t_elt != elt and 0 <= t_elt < max_num and row["twin_elt"] == t_elt
        t_want = list(a)
        t_want[idx] = t_elt
        assert t_b == t_want
        assert data.counter_tokens[i].tolist() == t_want
        # answers differ at idx only; tokens at elt and at b[idx] only
        assert [j for j in range(k) if t_want[j] != want[j]] == [idx]
        assert [p for p in range(len(toks)) if twin[p] != toks[p]] == [k + 3, k + 5 + idx]


def test_update_matches_python_on_5000_examples() -> None:
    data = ListUpdate().generate(5000, seed=11)
    check(data, 3, 50)
    assert data.roles[0].tolist() == ["BOS", "a0", "a1", "a2", "NL", "idx", "elt", "NL", "b0", "b1", "b2"]
    assert data.text[0].startswith("BOS ")
    # idx and elt vary per example (the seed drew one per batch)
    assert data.labels["idx"].n_unique() == 3 and data.labels["elt"].n_unique() == 50
    assert 0.9 < data.labels["changed"].mean() < 1.0
    assert data.labels["twin_elt"].n_unique() == 50  # the twin's element is drawn, not a fixed shift
    assert ((data.labels["twin_elt"] - data.labels["elt"]) % 50).n_unique() == 49


@given(k=st.integers(1, 8), max_num=st.integers(8, 300), seed=st.integers(0, 2**32))
def test_any_params(k: int, max_num: int, seed: int) -> None:
    check(ListUpdate(list_len=k, max_num=max_num).generate(30, seed), k, max_num)


def test_same_seed_same_data_other_seed_other_data() -> None:
    a, b, c = (get_task("list_update").generate(500, s) for s in (4, 4, 5))
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert a.labels.equals(b.labels)
    assert not np.array_equal(a.tokens, c.tokens)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"list_len": 0}, "list_update: list_len must be an integer in 1..32, got 0"),
        ({"list_len": 33}, "list_len must be an integer in 1..32"),
        ({"max_num": 1}, "list_update: max_num must be an integer in 3..100000"),
        ({"list_len": 10, "max_num": 9}, "max_num must be an integer in 10..100000"),
        ({"max_num": "50"}, "max_num"),
        ({"maxnum": 50}, "list_update: bad parameter"),
    ],
)
def test_bad_params_raise_one_clear_error(params: dict, message: str) -> None:
    with pytest.raises(InvalidParameterError, match=re.escape(message)):
        get_task("list_update", **params)
