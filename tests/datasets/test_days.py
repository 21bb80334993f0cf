"""Days: answers recomputed with the calendar module from the words of each prompt."""

from __future__ import annotations

import calendar
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actstore.datasets import get_task
from actstore.datasets.days import DAYS, MONTHS, TEMPLATES, Days
from actstore.datasets.wordtok import word_tokenizer
from actstore.errors import InvalidParameterError

WEEK = list(calendar.day_name)  # Monday first
YEAR = list(calendar.month_name)[1:]
WORD = re.compile("|".join(WEEK + YEAR))


def expected_answer(text: str) -> str:
    """The item the prompt asks for, from its named day/month and its closing words."""
    (named,) = WORD.findall(text)
    items = WEEK if named in WEEK else YEAR
    backwards = text.endswith(("yesterday was", "last month was"))
    return items[(items.index(named) + (-1 if backwards else 1)) % len(items)]


def check(data, tokenizer, corrupted: bool = False) -> None:
    decode = lambda t: tokenizer.decode([int(t)], clean_up_tokenization_spaces=False)  # noqa: E731
    for i, row in enumerate(data.labels.iter_rows(named=True)):
        text, n = data.text[i], int(data.lengths[i])
        (named,) = WORD.findall(text)
        assert row["subject"] == named
        assert row["kind"] == ("day" if named in WEEK else "month")
        items = WEEK if row["kind"] == "day" else YEAR
        assert row["index"] == items.index(row["today"])
        assert TEMPLATES[row["template"]][1].replace("[X]", named) == text
        if corrupted:
            # the clean answer stands in the opposite relation to the corrupted subject
            assert expected_answer(text) != row["answer"]
            clean_text = TEMPLATES[row["template"]][1].replace("[X]", row["today"])
            assert expected_answer(clean_text) == row["answer"]
            step = row["offset"]
            assert items[(items.index(named) - step) % len(items)] == row["answer"]
        else:
            assert named == row["today"]
            assert expected_answer(text) == row["answer"]
        assert data.tokens[i, 0] == tokenizer.bos_token_id
        assert data.tokens[i, 1:n].tolist() == tokenizer(text, add_special_tokens=False)["input_ids"]
        roles = data.roles[i].tolist()
        assert decode(data.tokens[i, roles.index("SUBJECT")]) == " " + named
        assert roles.index("END") == n - 1 == row["end_pos"] == data.answer_pos[i, 0]
        assert roles.index("SUBJECT") == row["subject_pos"]
        assert decode(data.answer_tokens[i, 0]) == " " + row["answer"]
        assert decode(data.counter_tokens[i, 0]) == " " + named  # today (or the corrupted day)
        # the twin: the same prompt with another SUBJECT token
        twin = data.corrupted_tokens[i]
        assert np.flatnonzero(twin != data.tokens[i]).tolist() == [row["subject_pos"]]
        assert decode(twin[row["subject_pos"]]) == " " + row["twin_subject"]
        twin_text = TEMPLATES[row["template"]][1].replace("[X]", row["twin_subject"])
        if corrupted:  # the twin of a corrupted prompt is the clean prompt
            assert row["twin_subject"] == row["today"] and expected_answer(twin_text) == row["answer"]
        else:  # the previous-day corruption: the clean answer is one step back from the twin's subject
            assert items[(items.index(row["twin_subject"]) - row["offset"]) % len(items)] == row["answer"]
            assert expected_answer(twin_text) != row["answer"]


@pytest.fixture(scope="module")
def clean():
    return Days().generate(3000, seed=4)


def test_answers_match_the_calendar_on_3000_examples(clean) -> None:
    check(clean, word_tokenizer())
    labels = clean.labels
    assert labels["template"].n_unique() == len(TEMPLATES)
    assert set(labels.filter(labels["kind"] == "day")["today"]) == set(DAYS)
    assert set(labels.filter(labels["kind"] == "month")["today"]) == set(MONTHS)
    assert 0.45 < (labels["kind"] == "day").mean() < 0.55
    assert DAYS == WEEK and MONTHS == YEAR


def test_seed_prompt_is_produced() -> None:
    texts = set(Days(kind="day").generate(500, 0).text)
    assert "Today it is Sunday, tomorrow it is" in texts


def test_previous_corruption_lines_up_with_the_clean_set(clean) -> None:
    bad = Days(corrupt="previous").generate(3000, seed=4)
    check(bad, word_tokenizer(), corrupted=True)
    same = ["kind", "today", "answer", "template", "index", "offset", "subject_pos", "end_pos"]
    assert bad.labels.select(same).equals(clean.labels.select(same))
    np.testing.assert_array_equal(bad.answer_tokens, clean.answer_tokens)
    np.testing.assert_array_equal(bad.roles, clean.roles)
    differ = bad.tokens != clean.tokens
    assert (differ.sum(axis=1) == 1).all()
    assert (bad.roles[differ] == "SUBJECT").all()
    # seed 001: "Today it is Sunday, tomorrow it is" -> corrupted "Today it is Tuesday, ..." (answer Monday)
    i = next(k for k, t in enumerate(clean.text) if t == "Today it is Sunday, tomorrow it is")
    assert bad.text[i] == "Today it is Tuesday, tomorrow it is"
    assert bad.labels["answer"][i] == "Monday"
    # each set holds the other as its twins
    np.testing.assert_array_equal(clean.corrupted_tokens, bad.tokens)
    np.testing.assert_array_equal(bad.corrupted_tokens, clean.tokens)
    assert clean.labels["twin_subject"].equals(bad.labels["subject"], check_names=False)


@pytest.mark.parametrize("kind", ["day", "month"])
def test_kind_param(kind: str) -> None:
    data = Days(kind=kind).generate(300, 1)
    assert set(data.labels["kind"]) == {kind}
    check(data, word_tokenizer())


@given(seed=st.integers(0, 2**32), n=st.integers(1, 40), corrupt=st.sampled_from(["none", "previous"]))
def test_any_seed(seed: int, n: int, corrupt: str) -> None:
    check(Days(corrupt=corrupt).generate(n, seed), word_tokenizer(), corrupted=corrupt == "previous")


def test_trained_bpe_days_only(bpe) -> None:
    tok = bpe(DAYS)  # days become whole tokens, months do not
    assert len(tok(" September", add_special_tokens=False)["input_ids"]) > 1
    data = Days(kind="day").generate(500, 0, tokenizer=tok)
    check(data, tok)
    with pytest.raises(InvalidParameterError, match=r"days: .*September.* not one token .*kind='day'"):
        Days().generate(10, 0, tokenizer=tok)


def test_same_seed_same_data_other_seed_other_data() -> None:
    a, b, c = (get_task("days").generate(200, s) for s in (2, 2, 3))
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert a.labels.equals(b.labels)
    assert a.text != c.text


@pytest.mark.parametrize(
    "params, message",
    [
        ({"kind": "week"}, "days: kind must be one of both, day, month, got 'week'"),
        ({"corrupt": "next"}, "days: corrupt must be one of none, previous, got 'next'"),
        ({"today": "Monday"}, "days: bad parameter"),
    ],
)
def test_bad_params_raise_one_clear_error(params: dict, message: str) -> None:
    with pytest.raises(InvalidParameterError, match=re.escape(message)):
        get_task("days", **params)
