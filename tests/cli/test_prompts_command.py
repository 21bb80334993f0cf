"""Your own prompts through the command line: `actstore ingest --task prompts --param file=...` on zoo:lm
gives the examples, tokens and outputs of a direct TransformerLens run of the same texts; the store
is queried, charted and compared without the file; bad files are one line, exit 2, no store."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

import actstore
from actstore import query
from actstore.cli import main
from actstore.datasets.wordtok import word_tokenizer
from actstore.models.zoo import weight_paths

pytestmark = pytest.mark.skipif(any(not p.exists() for p in weight_paths("lm")),
                                reason="zoo:lm's trained weights are not installed")

# IOI-like prompts in the zoo word tokenizer's vocabulary; the twin swaps the three names for others
PROMPTS = [
    ("When John and Mary went to the store, John gave the drink to", " Mary", " John", "BABA",
     "When Alice and Kate went to the store, Carl gave the drink to"),
    ("When Mary and John went to the park, John gave the ball to", " Mary", " John", "ABBA",
     "When Alice and Kate went to the park, Carl gave the ball to"),
    ("After Tom and Amy went to the shops, Tom gave the book to", " Amy", " Tom", "BABA",
     "After Sam and Lisa went to the shops, Paul gave the book to"),
    ("While Sarah and Paul were working at the bank, Sarah gave the card to", " Paul", " Sarah", "BABA",
     "While Emily and Jack were working at the bank, Mark gave the card to"),
    ("When Ryan and Grace met at the cafe, Grace offered the cookie to", " Ryan", " Grace", "ABBA",
     "When Henry and Rose met at the cafe, Simon offered the cookie to"),
]
N = len(PROMPTS)
TOK = word_tokenizer()  # zoo:lm's tokenizer


def rows() -> list[dict]:
    out = []
    for i, (text, io, s, order, twin) in enumerate(PROMPTS):
        first, second = ("IO", "S1") if order == "ABBA" else ("S1", "IO")
        # the first two name slots by substring, S2 by occurrence (even rows) or token position from the end
        names = text.split(" and ")[0].split()[-1], text.split(" and ")[1].split()[0]
        pieces = [TOK.decode([t]) for t in TOK(text, add_special_tokens=False)["input_ids"]]
        s2_pos = [k + 1 for k, piece in enumerate(pieces) if piece == s][1]  # + 1: BOS is token 0
        s2 = [s, 2] if i % 2 == 0 else s2_pos - len(pieces) - 1
        roles = {first: " " + names[0], second: " " + names[1], "S2": s2}
        out.append({"text": text, "answer": io, "counter": s, "corrupted": twin, "roles": roles, "order": order,
                    "abba": order == "ABBA", "n_words": len(text.split())})
    return out


def run(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and "Loading weights" not in ln]
    return code, "\n".join(err)


def ingest_argv(file: Path, out: Path, n: int = N, *extra: str) -> list[str]:
    return ["ingest", "--task", "prompts", "--param", f"file={file}", "--model", "zoo:lm", "--n", str(n),
            "--out", str(out), "--device", "cpu", "--quiet", "--batch", "2", "--chunk", "4", *extra]


@pytest.fixture(scope="module")
def lm():
    from actstore.models import load_model

    return load_model("zoo:lm")


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, Path]:
    """(prompt file, store ingested from it); the file is moved away afterwards by the tests that need that."""
    root = tmp_path_factory.mktemp("prompts")
    file = root / "ioi.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows()))
    assert main(ingest_argv(file, root / "store")) == 0
    return file, root / "store"


def test_ingested_prompts_match_a_direct_transformer_lens_run(made, lm) -> None:
    file, path = made
    store = actstore.open_store(path)
    ex, out, toks = store.examples.sort("example_id"), store.outputs.sort("example_id"), store.tokens
    assert ex["text"].to_list() == [p[0] for p in PROMPTS]
    assert ex.schema["abba"] == pl.Boolean and ex.schema["n_words"] == pl.Int64 and ex.schema["order"] == pl.String
    assert ex["order"].to_list() == [p[3] for p in PROMPTS] and ex["answer"].to_list() == [p[1] for p in PROMPTS]
    with torch.inference_mode():
        for i, (text, io, s, _, twin) in enumerate(PROMPTS):
            tokens = lm.to_tokens(text)[0]  # BOS + the text, as TransformerLens tokenizes it
            assert ex["tokens"][i].to_list() == tokens.tolist() and ex["length"][i] == len(tokens)
            assert ex["corrupted_tokens"][i].to_list() == lm.to_tokens(twin)[0].tolist()
            assert ex["answer_positions"][i].to_list() == [len(tokens) - 1]
            io_id, s_id = lm.to_single_token(io), lm.to_single_token(s)
            assert (out["correct_token"][i], out["counter_token"][i]) == (io_id, s_id)
            logits = lm(tokens[None])[0, -1].double()
            twin_logits = lm(lm.to_tokens(twin))[0, -1].double()
            got = out.row(i, named=True)
            want = {"correct_logit": logits[io_id], "counter_logit": logits[s_id],
                    "logit_diff": logits[io_id] - logits[s_id], "loss": -torch.log_softmax(logits, -1)[io_id],
                    "prob": torch.softmax(logits, -1)[io_id],
                    "corrupted_logit_diff": twin_logits[io_id] - twin_logits[s_id]}
            for k, v in want.items():
                assert got[k] == pytest.approx(float(v), abs=2e-4, rel=1e-4), (i, k)
            assert got["rank"] == int((logits > logits[io_id]).sum()) and got["correct"] == (got["rank"] == 0)
            # roles on the right tokens: the names by their slots, END on the last token
            mine = toks.filter(pl.col("example_id") == i).sort("pos")
            assert mine["str_token"].to_list() == lm.to_str_tokens(text)
            roles = {r: st for r, st in mine.filter(pl.col("role").is_not_null()).select("role", "str_token").rows()}
            first, second = (io, s) if PROMPTS[i][3] == "ABBA" else (s, io)
            assert roles == {"IO": io, "S1": s, "S2": s, "END": " to"}
            slots = mine.filter(pl.col("role").is_in(["S1", "IO", "S2"]))["str_token"].to_list()
            assert slots == [first, second, s]
    assert store.manifest.task_params == {"file": str(file), "sha256": hashlib.sha256(file.read_bytes()).hexdigest(),
                                          "corrupt": "none"}


def test_the_store_needs_no_file_to_be_queried_charted_and_compared(made, tmp_path, capsys) -> None:
    file, path = made
    copy = tmp_path / "store"
    shutil.copytree(path, copy)
    moved = tmp_path / "elsewhere.jsonl"
    shutil.copy(file, moved)
    try:
        file.unlink()
        store = actstore.open_store(copy)
        from actstore.charts.defaults import default_query_role, task_spec

        assert [a.query_role for a in task_spec(store).attention] == ["END"] and default_query_role(store) == "END"
        code, err = run(["sql", str(copy), "SELECT e.abba, count(*) AS n, avg(o.logit_diff) AS d FROM outputs o "
                         "JOIN examples e USING (example_id) GROUP BY e.abba ORDER BY e.abba"], capsys)
        assert code == 0, err
        dla = query.dla(store, level="layer", target="diff")
        per_example = dla.group_by("example_id").agg(pl.col("value").sum()).sort("example_id")["value"].to_numpy()
        out = store.outputs.sort("example_id")
        b_u = store.param("unembed.b_U")
        bias = b_u[out["correct_token"].to_numpy()] - b_u[out["counter_token"].to_numpy()]
        np.testing.assert_allclose(per_example, out["logit_diff"].to_numpy() - bias,
                                   atol=0.02)  # components sum to the logit difference less b_U (float16 storage)
        code, err = run(["chart", "attention-roles", str(copy), "-o", str(tmp_path / "roles.html")], capsys)
        assert code == 0 and (tmp_path / "roles.html").stat().st_size > 0, err
        # the corrupted variant of the same file: compare pairs each example with its twin
        shutil.copy(moved, file)
        twins = tmp_path / "twins"
        code, err = run(ingest_argv(file, twins, N, "--param", "corrupt=corrupted"), capsys)
        assert code == 0, err
        code, err = run(["compare", str(copy), str(twins), "--corrupted", "--level", "layer", "--format", "csv",
                         "-o", str(tmp_path / "cmp.csv")], capsys)
        assert code == 0, err
        cmp = pl.read_csv(tmp_path / "cmp.csv")
        assert set(cmp["n"].to_list()) == {N}
    finally:
        if not file.exists():
            shutil.copy(moved, file)


def test_a_rerun_resumes_and_a_changed_file_is_another_run(made, tmp_path, capsys) -> None:
    file, path = made
    copy = tmp_path / "store"
    shutil.copytree(path, copy)
    other = tmp_path / file.name
    other.write_text(file.read_text())
    assert run(ingest_argv(file, copy), capsys)[0] == 0  # the same run: nothing to do
    changed = file.read_text().replace("the drink", "the cake")
    edited = tmp_path / "edited" / file.name
    edited.parent.mkdir()
    edited.write_text(changed)
    code, err = run(ingest_argv(file, copy, N, "--param", f"sha256={'ab' * 32}"), capsys)
    assert code == 2 and "the file changed since the store was made" in err, err
    shutil.copy(edited, file)
    try:
        code, err = run(ingest_argv(file, copy), capsys)
        assert code == 2 and "holds a store of another run (differs in: task_params)" in err, err
    finally:
        shutil.copy(other, file)


LONG = "When John and Mary went to the store" + ", John went to the store" * 5 + ", John gave the drink to"


def bad_files() -> list:
    good = rows()[0]
    plain = {k: v for k, v in good.items() if k not in ("corrupted", "roles")}
    return [
        pytest.param([good, {**good, "answer": " Mary John"}], "zoo:lm",
                     "line 2 (example 1): answer ' Mary John' is 2 tokens for this tokenizer", id="answer-two-tokens"),
        pytest.param([good, good, {**good, "tags": ["x"]}], "zoo:lm",
                     "line 3 (example 2): column 'tags' holds a list", id="list-label"),
        pytest.param([good, {**good, "counter": None}], "zoo:lm",
                     "line 2 (example 1): no 'counter', though other rows have one", id="counter-missing"),
        pytest.param([plain, {**plain, "text": LONG}], "zoo:lm",
                     "examples are 45 tokens long but the model's n_ctx is 32 (first example 1, 45 tokens",
                     id="longer-than-context"),
        pytest.param([good], "zoo:addition", "no tokenizer to read the text with: this model reads token ids only",
                     id="numeric-model"),
    ]


@pytest.mark.parametrize("file_rows, model, says", bad_files())
def test_bad_files_are_one_line_and_leave_no_store(tmp_path, capsys, file_rows, model, says) -> None:
    file = tmp_path / "bad.jsonl"
    file.write_text("".join(json.dumps({k: v for k, v in r.items() if v is not None}) + "\n" for r in file_rows))
    argv = ingest_argv(file, tmp_path / "out", len(file_rows))
    argv[argv.index("zoo:lm")] = model
    code, err = run(argv, capsys)
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("actstore ingest: error: "), err
    assert says in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]  # no store, no leftovers


def test_dataset_command_tokenizes_with_the_named_model(made, tmp_path, capsys) -> None:
    file, _ = made
    out = tmp_path / "p.parquet"
    code, err = run(["dataset", "prompts", "--param", f"file={file}", "--n", "3", "--model", "zoo:lm", "-o",
                     str(out)], capsys)
    assert code == 0, err
    from actstore.datasets import get_task

    want = get_task("prompts", file=str(file)).generate(3, 0, tokenizer=TOK).to_frame()
    assert pl.read_parquet(out).equals(want)
    code, err = run(["dataset", "prompts", "--param", f"file={file}", "--n", "3", "-o", str(out)], capsys)
    assert code == 2 and "pass --model to `actstore dataset`" in err, err
    code, err = run(["dataset", "prompts", "--param", f"file={file}", "--model", "zoo:addition", "-o", str(out)],
                    capsys)
    assert code == 2 and "--model zoo:addition has no tokenizer" in err, err
    code, err = run(["dataset", "addition", "--model", "zoo:lm", "-o", str(out)], capsys)
    assert code == 2 and "task addition has its own token ids" in err, err


def test_the_demo_runs_on_its_file(tmp_path, capsys) -> None:
    """examples/prompts_demo.py ingests examples/data/ioi_prompts.jsonl; its SQL table agrees with the store."""
    import importlib.util

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("prompts_demo", root / "examples" / "prompts_demo.py")
    assert spec is not None and spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    assert demo.main(["--out", str(tmp_path / "demo")]) == 0
    printed = capsys.readouterr().out
    store = actstore.open_store(tmp_path / "demo")
    assert store.n_examples == 8 and printed.startswith("== 8 prompts from ioi_prompts.jsonl through zoo:lm")
    out = store.outputs.join(store.examples.select("example_id", "order"), on="example_id")
    for order, mean in out.group_by("order").agg(pl.col("logit_diff").mean()).rows():
        assert f"│ {order}  ┆ 4   ┆ {round(mean, 3)}" in printed, (order, mean, printed)
