"""meta/topk: the top-k output tokens at each answer, against torch.topk of TransformerLens logits; --top-k;
stores written before the table existed (no top_k in the manifest) open, verify and resume unchanged."""

from __future__ import annotations

import shutil

import numpy as np
import polars as pl
import pytest
import torch
from helpers import tree_bytes
from tiny_models import tiny_model

import actstore
from actstore.cli import main
from actstore.datasets import get_task
from actstore.errors import InvalidParameterError, StoreExistsError
from actstore.store.commits import commit_path
from actstore.store.manifest import Manifest
from actstore.store.verify import verify


def tl_answer_logits(model, task: str, n: int, seed: int) -> tuple[np.ndarray, object]:
    """[example, answer, vocab_out] logits of a masked TransformerLens run at the answer positions."""
    data = get_task(task).generate(n, seed, tokenizer=getattr(model, "tokenizer", None))
    toks = torch.tensor(data.tokens)
    mask = (torch.arange(toks.shape[1])[None] < torch.tensor(data.lengths)[:, None]).long()
    with torch.no_grad():
        logits = model(toks, attention_mask=mask, return_type="logits")
    rows = torch.arange(toks.shape[0])[:, None]
    return logits[rows, torch.tensor(data.answer_pos)].float(), data


def test_topk_equals_torch_topk_of_transformerlens_on_the_zoo_model(tmp_path):
    from actstore.models import load_model

    model = load_model("zoo:addition")
    n = 24
    store = actstore.ingest("addition", "zoo:addition", n, 7, tmp_path / "s", chunk=16, batch=8, quiet=True,
                            device="cpu")
    assert store.manifest.top_k == 10
    logits, data = tl_answer_logits(model, "addition", n, 7)
    want_logit, want_id = torch.topk(logits, 10, dim=-1)  # [example, answer, k]
    want_prob = logits.softmax(-1).gather(-1, want_id)
    top = store.topk
    assert top.columns == ["example_id", "answer_idx", "rank", "token_id", "str_token", "logit", "prob"]
    assert top.height == n * 4 * 10
    top = top.sort("example_id", "answer_idx", "rank")
    np.testing.assert_array_equal(top["token_id"].to_numpy().reshape(n, 4, 10), want_id.numpy())
    np.testing.assert_allclose(top["logit"].to_numpy().reshape(n, 4, 10), want_logit.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(top["prob"].to_numpy().reshape(n, 4, 10), want_prob.numpy(), rtol=1e-5, atol=1e-6)
    vocab = get_task("addition").vocab
    assert top["str_token"].to_list() == [vocab[t] for t in top["token_id"].to_list()]
    # the outputs table agrees: the correct token sits at its rank, with its logit and prob
    joined = store.outputs.join(top, left_on=["example_id", "answer_idx", "rank"],
                                right_on=["example_id", "answer_idx", "rank"], how="inner")
    assert joined.height == store.outputs.filter(pl.col("rank") < 10).height > 0
    assert (joined["token_id"] == joined["correct_token"]).all()
    np.testing.assert_allclose(joined["logit"], joined["correct_logit"], rtol=1e-6)
    # test_prompt as SQL: the same rows through the view
    via_sql = store.sql("SELECT * FROM topk ORDER BY example_id, answer_idx, rank").pl()
    assert via_sql.equals(top)
    assert verify(store.path).passed


def test_top_k_option_zero_and_refusals(tmp_path):
    model = tiny_model("addition")
    kw = dict(chunk=8, batch=4, quiet=True)
    three = actstore.ingest("addition", model, 12, 0, tmp_path / "three", top_k=3, **kw)
    assert three.manifest.top_k == 3 and three.topk.height == 12 * 4 * 3
    assert three.topk.group_by("example_id", "answer_idx").agg(pl.len())["len"].unique().to_list() == [3]
    none = actstore.ingest("addition", model, 12, 0, tmp_path / "none", top_k=0, **kw)
    assert none.manifest.top_k == 0 and not (none.path / "meta" / "topk").exists()
    assert none.topk.height == 0 and none.topk.columns == three.topk.columns
    assert none.sql("SELECT count(*) AS n FROM topk").pl()["n"].to_list() == [0]
    assert verify(none.path).passed
    for bad, says in ((13, "more than the model's 12 output tokens"), (-1, "non-negative integer"),
                      (True, "non-negative integer"), (2.5, "non-negative integer")):
        with pytest.raises(InvalidParameterError, match=says):
            actstore.ingest("addition", model, 12, 0, tmp_path / f"bad{bad}", top_k=bad, **kw)
        assert not (tmp_path / f"bad{bad}").exists()
    # another top_k is another run: refused, the store unchanged
    before = tree_bytes(three.path)
    with pytest.raises(StoreExistsError, match="differs in: top_k"):
        actstore.ingest("addition", model, 12, 0, tmp_path / "three", top_k=4, **kw)
    assert tree_bytes(three.path) == before
    # two output classes: k defaults to the whole output vocabulary, named by the task's classes
    brackets = actstore.ingest("brackets", tiny_model("brackets"), 6, 0, tmp_path / "br", **kw)
    assert brackets.manifest.top_k == 2
    assert set(brackets.topk["str_token"].to_list()) == {"balanced", "unbalanced"}


def test_cli_top_k(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["ingest", "--task", "addition", "--model", "zoo:addition", "--n", "8", "--out", str(out),
                 "--top-k", "2", "--device", "cpu", "--quiet"]) == 0
    assert actstore.open_store(out).manifest.top_k == 2
    assert main(["ingest", "--task", "addition", "--model", "zoo:addition", "--n", "8", "--out",
                 str(tmp_path / "x"), "--top-k", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--top-k" in err and err.count("\n") == 1 and not (tmp_path / "x").exists()


@pytest.fixture()
def before_topk(monkeypatch):
    """ingest as an actstore from before meta/topk wrote it: no top_k in the manifest, no topk parts."""
    import actstore.ingest.run as run

    monkeypatch.setattr(run, "Manifest", lambda **kw: Manifest(**{**kw, "top_k": None}))


def test_a_store_written_before_topk_opens_verifies_and_resumes_unchanged(tmp_path, monkeypatch, before_topk):
    model, kw = tiny_model("addition"), dict(chunk=16, batch=8, quiet=True)
    ref = actstore.ingest("addition", model, 70, 0, tmp_path / "ref", **kw).path
    monkeypatch.undo()  # from here on, this version of actstore
    import json

    manifest = json.loads((ref / "zarr.json").read_text())["attributes"]["actstore"]
    assert "top_k" not in manifest and not (ref / "meta" / "topk").exists()
    old = actstore.open_store(ref)
    assert old.manifest.top_k is None and old.n_examples == 70
    assert old.topk.height == 0 and old.sql("SELECT count(*) AS n FROM topk").pl()["n"].to_list() == [0]
    assert verify(ref).passed
    # an interrupted old store resumes as it was made (no topk parts), the same bytes as its complete run
    out = tmp_path / "old"
    shutil.copytree(ref, out)
    (out / "_commits/complete.json").unlink()
    for k in (3, 4):
        commit_path(out, k).unlink()
    (out / "meta/outputs/part-00004.parquet").unlink()
    resumed = actstore.ingest("addition", model, 70, 0, out, **kw)
    assert resumed.n_examples == 70 and resumed.manifest.top_k is None
    assert tree_bytes(out) == tree_bytes(ref)
