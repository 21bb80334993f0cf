"""IOI: roles checked by decoding the tokens at their positions, labels re-read from the text,
the ABC corruption lined up with the clean set, and the one-token name filter on a trained BPE."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actstore.datasets import get_task
from actstore.datasets.ioi import IOI, NAMES, OBJECTS, PLACES, TEMPLATES
from actstore.datasets.wordtok import word_tokenizer
from actstore.errors import InvalidParameterError


def template_regex(template: str) -> re.Pattern:
    """The template as a regex with named groups for the slots."""
    pattern = re.escape(template)
    for slot in ("A", "B", "S", "PLACE", "OBJECT"):
        pattern = pattern.replace(re.escape(f"[{slot}]"), f"(?P<{slot}>[A-Za-z]+)")
    return re.compile(pattern)


REGEXES = [template_regex(t) for t in TEMPLATES]


def check(data, tokenizer, corrupted: bool = False) -> None:
    decode = lambda t: tokenizer.decode([int(t)], clean_up_tokenization_spaces=False)  # noqa: E731
    bos = tokenizer.bos_token_id
    for i, row in enumerate(data.labels.iter_rows(named=True)):
        text, n = data.text[i], int(data.lengths[i])
        m = REGEXES[row["template"]].fullmatch(text)
        assert m, (row["template"], text)
        a, b, s2 = m["A"], m["B"], m["S"]
        assert (m["PLACE"], m["OBJECT"]) == (row["place"], row["object"])
        assert (row["name1"], row["name2"], row["name3"]) == (a, b, s2)
        if corrupted:
            assert len({a, b, s2, row["io"], row["s"]}) == 5
        else:
            # ABBA: IO first; BABA: S first; the third name is always S
            io, s = (a, b) if row["order"] == "ABBA" else (b, a)
            assert s2 == s and io != s
            assert (row["io"], row["s"]) == (io, s)
        # tokens: BOS then the tokenizer's own tokens of the text; padding after
        assert data.tokens[i, 0] == bos
        assert data.tokens[i, 1:n].tolist() == tokenizer(text, add_special_tokens=False)["input_ids"]
        assert (data.tokens[i, n:] == data.pad_id).all()
        assert "".join(data.str_tokens[i][1:]) == text
        # roles sit on the name tokens, in slot order by the prompt's order
        roles = data.roles[i].tolist()
        pos = {r: roles.index(r) for r in ("S1", "IO", "S2", "END")}
        assert sorted(r for r in roles if r) == ["END", "IO", "S1", "S2"]
        first, second = ("IO", "S1") if row["order"] == "ABBA" else ("S1", "IO")
        assert decode(data.tokens[i, pos[first]]) == " " + a
        assert decode(data.tokens[i, pos[second]]) == " " + b
        assert decode(data.tokens[i, pos["S2"]]) == " " + s2
        assert pos[first] < pos[second] < pos["S2"] < pos["END"] == n - 1
        stored = [row["s1_pos"], row["io_pos"], row["s2_pos"], row["end_pos"]]
        assert stored == [pos[r] for r in ("S1", "IO", "S2", "END")]
        assert data.answer_pos[i].tolist() == [n - 1]
        assert decode(data.answer_tokens[i, 0]) == " " + row["io"]
        assert decode(data.counter_tokens[i, 0]) == " " + row["s"]
        # the twin: the same prompt token for token but for the three name slots
        twin = data.corrupted_tokens[i]
        differ = np.flatnonzero(twin != data.tokens[i]).tolist()
        assert differ == sorted(pos[r] for r in ("S1", "IO", "S2"))
        twin_names = [decode(twin[pos[r]]).removeprefix(" ") for r in (first, second, "S2")]
        assert twin_names == [row["twin_name1"], row["twin_name2"], row["twin_name3"]]
        if corrupted:  # the twin of an ABC prompt is its clean prompt: IO and S in the prompt's order
            assert twin_names == ([row["io"], row["s"], row["s"]] if row["order"] == "ABBA"
                                  else [row["s"], row["io"], row["s"]])
        else:  # ABC: three distinct names, neither IO nor S
            assert len(set(twin_names) | {row["io"], row["s"]}) == 5
        assert (twin[n:] == data.pad_id).all()


@pytest.fixture(scope="module")
def clean():
    return IOI().generate(3000, seed=1)


def test_roles_and_labels_from_the_text_on_3000_examples(clean) -> None:
    check(clean, word_tokenizer())
    labels = clean.labels
    assert labels["template"].n_unique() == len(TEMPLATES) >= 15
    assert set(labels["order"]) == {"ABBA", "BABA"}
    assert 0.45 < (labels["order"] == "ABBA").mean() < 0.55
    assert labels["io"].n_unique() == len(NAMES) >= 40
    assert labels["place"].n_unique() == len(PLACES) >= 40
    assert labels["object"].n_unique() == len(OBJECTS) >= 40
    assert not labels["corrupted"].any()


def test_abc_corruption_lines_up_with_the_clean_set(clean) -> None:
    abc = IOI(corrupt="abc").generate(3000, seed=1)
    check(abc, word_tokenizer(), corrupted=True)
    same = ["io", "s", "template", "order", "place", "object", "s1_pos", "io_pos", "s2_pos", "end_pos"]
    assert abc.labels.select(same).equals(clean.labels.select(same))
    np.testing.assert_array_equal(abc.answer_tokens, clean.answer_tokens)
    np.testing.assert_array_equal(abc.counter_tokens, clean.counter_tokens)
    np.testing.assert_array_equal(abc.lengths, clean.lengths)
    np.testing.assert_array_equal(abc.roles, clean.roles)
    # only the three name tokens differ
    differ = abc.tokens != clean.tokens
    assert (differ.sum(axis=1) == 3).all()
    assert np.isin(abc.roles[differ], ["S1", "IO", "S2"]).all()
    assert abc.labels["corrupted"].all()
    # each set holds the other as its twins
    np.testing.assert_array_equal(clean.corrupted_tokens, abc.tokens)
    np.testing.assert_array_equal(abc.corrupted_tokens, clean.tokens)
    twin_names = ["twin_name1", "twin_name2", "twin_name3"]
    assert clean.labels.select(twin_names).rename(dict(zip(twin_names, ["name1", "name2", "name3"]))).equals(
        abc.labels.select("name1", "name2", "name3"))


@pytest.mark.parametrize("order", ["ABBA", "BABA"])
def test_order_param(order: str) -> None:
    data = IOI(order=order).generate(200, 3)
    assert set(data.labels["order"]) == {order}
    check(data, word_tokenizer())


@given(seed=st.integers(0, 2**32), n=st.integers(1, 40))
def test_any_seed(seed: int, n: int) -> None:
    data = IOI().generate(n, seed)
    assert len(data) == n
    check(data, word_tokenizer())


def test_trained_bpe_drops_multi_token_names(bpe) -> None:
    whole = NAMES[:12]
    tok = bpe(whole)
    assert len(tok(" Zebediah", add_special_tokens=False)["input_ids"]) > 1
    multi = [nm for nm in NAMES if len(tok(" " + nm, add_special_tokens=False)["input_ids"]) > 1]
    assert len(multi) >= 30  # the filter has work to do
    assert IOI().usable_names(tok) == whole
    data = IOI().generate(1000, 2, tokenizer=tok)
    used = set(data.labels["io"]) | set(data.labels["s"])
    assert used == set(whole)
    check(data, tok)
    # places and objects may be several tokens: prompts then differ in length
    assert data.lengths.min() < data.lengths.max()
    abc = IOI(corrupt="abc").generate(1000, 2, tokenizer=tok)
    check(abc, tok, corrupted=True)
    np.testing.assert_array_equal(abc.lengths, data.lengths)
    np.testing.assert_array_equal(data.corrupted_tokens, abc.tokens)


def test_too_few_one_token_names_is_a_clear_error(bpe) -> None:
    tok = bpe(NAMES[:6])
    with pytest.raises(InvalidParameterError, match=r"ioi: only 6 of the \d+ names are one token"):
        IOI().generate(10, 0, tokenizer=tok)


def test_same_seed_same_data_other_seed_other_data() -> None:
    a, b, c = (get_task("ioi").generate(200, s) for s in (9, 9, 10))
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert a.labels.equals(b.labels) and a.text == b.text
    assert a.text != c.text


@pytest.mark.parametrize(
    "params, message",
    [
        ({"order": "ABAB"}, "ioi: order must be one of both, ABBA, BABA, got 'ABAB'"),
        ({"corrupt": "xyz"}, "ioi: corrupt must be one of none, abc, got 'xyz'"),
        ({"corrupt": True}, "ioi: corrupt must be one of"),
        ({"names": 5}, "ioi: bad parameter"),
    ],
)
def test_bad_params_raise_one_clear_error(params: dict, message: str) -> None:
    with pytest.raises(InvalidParameterError, match=re.escape(message)):
        get_task("ioi", **params)



def test_a_tokenizer_kept_between_calls_gives_the_same_data_and_follows_its_changes(bpe) -> None:
    """ioi keeps its tokenized names per tokenizer between generate calls (prompt_tokenizer(shared=True)): the
    same examples as a fresh one; a token added to the tokenizer, or a new pad id, makes the next call start anew."""
    from actstore.datasets import templated

    tok = bpe(list(NAMES[:12]))
    first = IOI().generate(16, 3, tokenizer=tok)
    kept = templated.prompt_tokenizer(tok, "ioi", shared=True)
    assert templated.prompt_tokenizer(tok, "ioi", shared=True) is kept
    assert templated.prompt_tokenizer(tok, "ioi") is not kept  # user prompts: never kept
    templated._SHARED.clear()  # as a fresh process starts
    again = IOI().generate(16, 3, tokenizer=tok)
    assert np.array_equal(first.tokens, again.tokens) and first.text == again.text
    assert np.array_equal(first.answer_tokens, again.answer_tokens)
    kept = templated.prompt_tokenizer(tok, "ioi", shared=True)
    tok.add_tokens(["<extra>"])
    assert templated.prompt_tokenizer(tok, "ioi", shared=True) is not kept
    tok.pad_token = "<extra>"
    data = IOI().generate(16, 3, tokenizer=tok)
    assert data.pad_id == tok.pad_token_id != first.pad_id
    padded = data.tokens[np.arange(data.tokens.shape[1])[None, :] >= data.lengths[:, None]]
    assert padded.size and (padded == tok.pad_token_id).all()
