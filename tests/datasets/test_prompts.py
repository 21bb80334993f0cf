"""The prompts task: a file of IOI prompts written from the ioi task gives back the ioi task's own
tokens, answers, twins and roles; CSV and JSONL agree; labels are typed columns; every bad file
is one error line naming the file line and the example."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from actstore.datasets import get_task, task_names
from actstore.datasets.prompts import Prompts, _tokenize
from actstore.datasets.wordtok import word_tokenizer
from actstore.errors import InvalidParameterError

N_IOI = 12


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer()


@pytest.fixture(scope="module")
def ioi(tok):
    return get_task("ioi").generate(N_IOI, 7, tokenizer=tok)


def ioi_rows(ioi, tok) -> list[dict]:
    """The ioi examples as prompt rows: roles by substring occurrence in even rows, by token position in odd ones."""
    rows = []
    for i in range(len(ioi)):
        n = int(ioi.lengths[i])
        lab = ioi.labels.row(i, named=True)
        pos = {r: int(np.flatnonzero(ioi.roles[i] == r)[0]) for r in ("S1", "IO", "S2")}
        if i % 2 == 0:
            roles = {"IO": " " + lab["io"], "S1": " " + lab["s"], "S2": [" " + lab["s"], 2]}
        else:
            roles = {r: p for r, p in pos.items()}
        rows.append({"text": ioi.text[i], "answer": " " + lab["io"], "counter": " " + lab["s"],
                     "corrupted": tok.decode(ioi.corrupted_tokens[i, 1:n].tolist()), "roles": roles,
                     "order": lab["order"], "template": lab["template"], "abba": lab["order"] == "ABBA",
                     "weight": 0.5 + i})
    return rows


def write_jsonl(path: Path, rows: list[dict], blank_after: int | None = None) -> Path:
    lines = [json.dumps(r) for r in rows]
    if blank_after is not None:
        lines.insert(blank_after, "   ")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    frame = pl.DataFrame({c: [json.dumps(r[c]) if c == "roles" else r.get(c) for r in rows] for c in cols})
    frame.write_csv(path)
    return path


def test_ioi_prompts_from_a_file_are_the_ioi_task(tmp_path, ioi, tok) -> None:
    path = write_jsonl(tmp_path / "ioi.jsonl", ioi_rows(ioi, tok), blank_after=3)
    data = get_task("prompts", file=str(path)).generate(N_IOI, 0, tokenizer=tok)
    for name in ("tokens", "lengths", "answer_pos", "answer_tokens", "counter_tokens", "corrupted_tokens", "roles"):
        np.testing.assert_array_equal(getattr(data, name), getattr(ioi, name), err_msg=name)
    assert data.text == ioi.text and data.str_tokens == ioi.str_tokens and data.pad_id == ioi.pad_id
    assert data.labels.columns == ["order", "template", "abba", "weight", "answer", "counter"]
    assert data.labels.schema == {"order": pl.String, "template": pl.Int64, "abba": pl.Boolean,
                                  "weight": pl.Float64, "answer": pl.String, "counter": pl.String}
    assert data.labels["order"].to_list() == ioi.labels["order"].to_list()
    assert data.labels["template"].to_list() == ioi.labels["template"].to_list()
    assert data.labels["answer"].to_list() == [" " + s for s in ioi.labels["io"]]
    assert data.params == {"file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                           "corrupt": "none"}
    frame = data.to_frame()
    assert frame["example_id"].to_list() == list(range(N_IOI)) and frame["abba"].dtype == pl.Boolean


def test_csv_gives_the_same_examples(tmp_path, ioi, tok) -> None:
    rows = ioi_rows(ioi, tok)
    a = get_task("prompts", file=str(write_jsonl(tmp_path / "p.jsonl", rows))).generate(N_IOI, 0, tokenizer=tok)
    b = get_task("prompts", file=str(write_csv(tmp_path / "p.csv", rows))).generate(N_IOI, 0, tokenizer=tok)
    for name in ("tokens", "answer_tokens", "counter_tokens", "corrupted_tokens", "roles"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.labels.equals(b.labels)  # CSV cells typed: int, bool, float, string


def test_n_takes_the_first_rows_in_file_order_and_the_seed_does_not_reorder(tmp_path, ioi, tok) -> None:
    task = get_task("prompts", file=str(write_jsonl(tmp_path / "p.jsonl", ioi_rows(ioi, tok))))
    whole, first = task.generate(N_IOI, 0, tokenizer=tok), task.generate(5, 3, tokenizer=tok)
    np.testing.assert_array_equal(first.tokens, whole.tokens[:5])  # padded to the file's longest prompt either way
    np.testing.assert_array_equal(first.corrupted_tokens, whole.corrupted_tokens[:5])
    assert first.tokens.shape[1] == int(whole.lengths.max())
    middle = task.generate_range(4, 9, 0, tokenizer=tok)
    np.testing.assert_array_equal(middle.tokens, whole.tokens[4:9])
    assert middle.labels.equals(whole.labels[4:9]) and middle.text == whole.text[4:9]
    assert first.labels.equals(whole.labels.head(5)) and first.text == whole.text[:5]
    with pytest.raises(InvalidParameterError, match=r"p.jsonl holds 12 prompts; n=13 asks for more"):
        task.generate(13, 0, tokenizer=tok)


def test_corrupt_writes_the_twins_as_the_examples(tmp_path, ioi, tok) -> None:
    path = str(write_jsonl(tmp_path / "p.jsonl", ioi_rows(ioi, tok)))
    clean = get_task("prompts", file=path).generate(N_IOI, 0, tokenizer=tok)
    twins = get_task("prompts", file=path, corrupt="corrupted").generate(N_IOI, 0, tokenizer=tok)
    np.testing.assert_array_equal(twins.tokens, clean.corrupted_tokens)
    np.testing.assert_array_equal(twins.corrupted_tokens, clean.tokens)
    np.testing.assert_array_equal(twins.answer_tokens, clean.answer_tokens)
    np.testing.assert_array_equal(twins.roles, clean.roles)
    assert twins.text == [r["corrupted"] for r in ioi_rows(ioi, tok)]
    assert twins.params["corrupt"] == "corrupted" and twins.params["sha256"] == clean.params["sha256"]
    plain = tmp_path / "plain.jsonl"
    plain.write_text('{"text": "When John went to the park", "answer": " John"}\n')
    with pytest.raises(InvalidParameterError, match="corrupt=corrupted needs a 'corrupted' column"):
        get_task("prompts", file=str(plain), corrupt="corrupted").generate(1, 0, tokenizer=tok)


def test_roles_land_on_their_tokens(tmp_path, tok) -> None:
    text = "When John and Mary went to the park, John gave the ball to"
    rows = [
        {"text": text, "answer": " Mary", "roles": {"S2": [" John", 2], "IO": "Mary", "PLACE": -7}},
        {"text": text, "answer": " Mary", "roles": {"last": -1, "first": 1, "bos": 0}},
        {"text": text, "answer": " Mary", "roles": {"END": 3}},
        {"text": text, "answer": " Mary"},
    ]
    data = get_task("prompts", file=str(write_jsonl(tmp_path / "r.jsonl", rows))).generate(4, 0, tokenizer=tok)
    at = [{r: (p, data.str_tokens[i][p]) for p, r in enumerate(data.roles[i]) if r} for i in range(4)]
    assert at[0] == {"IO": (4, " Mary"), "PLACE": (8, " park"), "S2": (10, " John"), "END": (14, " to")}
    assert at[1] == {"bos": (0, "<|bos|>"), "first": (1, "When"), "last": (14, " to")}  # no END: 'last' is there
    assert at[2] == {"END": (3, " and")}  # an END of the file's own: not added again
    assert at[3] == {"END": (14, " to")}


def test_the_task_is_rebuilt_from_its_params_without_the_file(tmp_path, tok) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"text": "When John went to the park", "answer": " John"}\n')
    params = get_task("prompts", file=str(path)).generate(1, 0, tokenizer=tok).params
    path.unlink()
    task = get_task("prompts", **params)  # what a store's report does: no file needed
    assert task.params == params and task.vocab is None
    assert [a.query_role for a in task.report.attention] == ["END"]
    path.write_text('{"text": "When Mary went to the park", "answer": " Mary"}\n')  # another file, same name
    with pytest.raises(InvalidParameterError, match="the file changed since the store was made"):
        task.generate(1, 0, tokenizer=tok)
    assert "prompts" in task_names() and isinstance(get_task("prompts", file="x.csv"), Prompts)
    digits = "0123456789" * 6 + "0123"  # `--param sha256=<digits>` arrives as an int
    assert get_task("prompts", file="x.csv", sha256=int(digits)).sha256 == digits


@pytest.mark.parametrize("params, says", [
    ({}, "pass the prompt file, --param file=PATH"),
    ({"file": "prompts.txt"}, "must end in .jsonl or .csv"),
    ({"file": "p.jsonl", "sha256": "abc"}, "sha256 must be 64 lowercase hex digits"),
    ({"file": "p.jsonl", "corrupt": "abc"}, "corrupt must be one of none, corrupted"),
    ({"file": "p.jsonl", "colour": "red"}, "prompts: bad parameter"),
])
def test_bad_parameters(params, says) -> None:
    with pytest.raises(InvalidParameterError, match=says):
        get_task("prompts", **params)


OK = {"text": "When John and Mary went to the park, John gave the ball to", "answer": " Mary"}


GOOD_OPTIONAL = {"counter": " John", "corrupted": "When Mary and John went to the park, Mary gave the ball to",
                 "split": "train"}


def row(**changes):
    return {**OK, **changes}


# (rows of the file, the text its error must hold); the bad row is always the file's third line, example 2
BAD_JSONL = [
    ([row(answer=" Mary John")], "answer ' Mary John' is 2 tokens for this tokenizer (' Mary', ' John'), not one"),
    ([row(answer="Mary")], "answer 'Mary' is not in the tokenizer's vocabulary"),
    ([row(counter=" the ball")], "counter ' the ball' is 2 tokens"),
    ([row(text="When Zed went to the park")], "' Zed' in the text is not in the tokenizer's vocabulary"),
    ([row(tags=["a", "b"])], "column 'tags' holds a list; label columns take a string, a number, true/false"),
    ([row(meta={"a": 1})], "column 'meta' holds an object"),
    ([row(group="x")], "column 'group' holds a string, but"),
    ([row(text=None)], "no 'text' (every prompt needs text and answer)"),
    ([row(split=None)], "column 'split' (the store's split of each example) must be a non-empty string in every"),
    ([{"answer": " Mary"}], "no 'text'"),
    ([row(answer=7)], "'answer' must be a string, got the number 7"),
    ([row(text="")], "'text' is empty"),
    ([row(corrupted="When John and Mary went to the park, John gave the ball")],
     "the corrupted text is 13 tokens, the text 14; a twin must line up"),
    ([row(roles={"IO": " Kate"})], "role 'IO': ' Kate' is not in the text"),
    ([row(roles={"S2": [" John", 3]})], "role 'S2': ' John' is not in the text 3 times"),
    ([row(roles={"X": "John and"})], "role 'X': 'John and' covers 2 tokens (' John', ' and')"),
    ([row(roles={"A": 2, "B": " John"})], "roles 'A' and 'B' both fall on token 2"),
    ([row(roles={"A": 15})], "role 'A' at token 15, but the prompt has 15 tokens"),
    ([row(roles={"A": 1.5})], "role 'A' must be a substring of the text, [substring, occurrence >= 1] or a token"),
    ([row(roles=[" John"])], "column 'roles' must be an object"),
    (["[1, 2]"], "a JSON object per line expected, got a list"),
    (['{"text": "When'], "not valid JSON"),
]


def write_bad(path: Path, bad: list) -> Path:
    first = [{**OK, "group": 1}, {**OK, "group": 2}]  # labels the bad rows may clash with
    for r in first:  # the optional columns the bad row has, valid (every row has them or none)
        r.update({k: v for k, v in GOOD_OPTIONAL.items() if any(isinstance(b, dict) and k in b for b in bad)})
    lines = [json.dumps(r) for r in first] + [b if isinstance(b, str) else json.dumps(b) for b in bad]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("bad, says", BAD_JSONL, ids=[s[:40] for _, s in BAD_JSONL])
def test_each_bad_row_is_one_line_naming_it(tmp_path, tok, bad, says) -> None:
    path = write_bad(tmp_path / "p.jsonl", bad)
    with pytest.raises(InvalidParameterError) as e:
        get_task("prompts", file=str(path)).generate(1, 0, tokenizer=tok)  # n=1: every row is checked anyway
    message = str(e.value)
    assert "\n" not in message and message.startswith("prompts: "), message
    assert says in message, message
    assert message.startswith(f"prompts: {path} line 3 (example 2): "), message


@pytest.mark.parametrize("content, says", [
    ("text,answer,group\nWhen John went to the park, John\n", "line 2 (example 0): 2 fields, but the header names 3"),
    ("text,group\nWhen John went to the park,1\n", "the header (the first row) has no 'answer' column"),
    ('text,answer,roles\nWhen John went to the park, John,{"IO": \n', "column 'roles' must hold a JSON object"),
    ("text,answer,answer\nWhen John went to the park, John, John\n", "the header names column 'answer' twice"),
    ("text,answer,tokens\nWhen John went to the park, John,1\n", "column 'tokens' is a name the store's examples"),
    ('text,answer,counter\nWhen John went to the park, John,\n"When Mary,\nwent", Mary, John\n', None),
    ("", "holds no prompts"),
])
def test_bad_csv(tmp_path, tok, content, says) -> None:
    path = tmp_path / "p.csv"
    path.write_text(content)
    task = get_task("prompts", file=str(path))
    if says is None:  # the counter is missing on line 2 only; the quoted newline makes example 1 start on line 3
        with pytest.raises(InvalidParameterError, match=r"p.csv line 2 \(example 0\): no 'counter', though other"):
            task.generate(1, 0, tokenizer=tok)
        return
    with pytest.raises(InvalidParameterError, match=says.replace("(", r"\(").replace(")", r"\)")) as e:
        task.generate(1, 0, tokenizer=tok)
    assert "\n" not in str(e.value)


def test_unreadable_files_and_no_tokenizer(tmp_path, tok) -> None:
    with pytest.raises(InvalidParameterError, match="cannot read file"):
        get_task("prompts", file=str(tmp_path / "absent.jsonl")).generate(1, 0, tokenizer=tok)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(json.dumps(OK).encode() + b'\n{"text": "caf\xe9", "answer": " Mary"}\n')
    with pytest.raises(InvalidParameterError, match=r"latin.jsonl line 2: not UTF-8 text"):
        get_task("prompts", file=str(latin)).generate(1, 0, tokenizer=tok)
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(OK) + "\n")
    with pytest.raises(InvalidParameterError, match="no tokenizer to read the text with: this model reads token ids"):
        get_task("prompts", file=str(good)).generate(1, 0)


def test_byte_level_bpe_and_a_slow_tokenizer_agree_with_the_fast_offsets(tmp_path, bpe) -> None:
    """GPT-2-style byte-level BPE: no unknown token, a name is one token only with its leading space;
    the spans of a tokenizer without offsets (decoded prefixes) equal the fast tokenizer's offsets."""
    tk = bpe(["John", "Mary"])
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(row(roles={"IO": "Mary", "S2": [" John", 2]})) + "\n")
    data = get_task("prompts", file=str(path)).generate(1, 0, tokenizer=tk)
    assert data.tokens[0, 1:].tolist() == tk(OK["text"], add_special_tokens=False)["input_ids"]
    assert data.tokens[0, 0] == tk.bos_token_id and data.answer_tokens[0, 0] == tk.encode(" Mary")[0]
    roles = {r: data.str_tokens[0][p] for p, r in enumerate(data.roles[0]) if r}
    assert roles == {"IO": " Mary", "S2": " John", "END": " to"}
    path.write_text(json.dumps(row(answer="Mary")) + "\n")
    with pytest.raises(InvalidParameterError, match=r"answer 'Mary' is \d+ tokens"):
        get_task("prompts", file=str(path)).generate(1, 0, tokenizer=tk)

    class Slow:  # the word tokenizer without offsets
        is_fast = False
        encode, decode = tk.encode, tk.decode

    for text in (OK["text"], "When John, Mary"):
        assert _tokenize(Slow(), text) == _tokenize(tk, text)
