"""Every shipped zoo model loads, is processed as recorded, and meets its accuracy target on fresh data."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch

from actstore.datasets import get_task
from actstore.models import evaluate, load_model, model_config_dict, processing_of, zoo_names
from actstore.models.evaluate import check_target
from actstore.models.zoo import ZOO, TRAIN_SEED_BASE, tokenizer_fingerprint, tokenizer_for, weight_paths

FRESH_SEED = 7  # below TRAIN_SEED_BASE and not the seed the recorded accuracy used
N = {"list_update": 600, "addition": 600, "brackets": 1500, "lm": 600}


@pytest.fixture(scope="module", params=zoo_names())
def zoo(request):
    name = request.param
    return name, load_model(f"zoo:{name}")


def test_weights_are_shipped_small_with_their_record():
    for name in zoo_names():
        weights, record = weight_paths(name)
        assert weights.exists() and record.exists(), f"zoo:{name} has no shipped weights"
        # lm: 2.7 MB
        assert weights.stat().st_size < 4_000_000, f"zoo:{name} weights are {weights.stat().st_size} bytes"
        rec = json.loads(record.read_text())
        assert rec["name"] == name and rec["training"]["wall_seconds"] > 0
        assert all(r["ok"] for r in rec["eval"]), rec["eval"]


def test_zoo_model_meets_its_targets_on_fresh_data(zoo):
    name, model = zoo
    assert FRESH_SEED < TRAIN_SEED_BASE
    params = dict(ZOO[name].tasks)
    for target in ZOO[name].targets:
        result = check_target(model, target, params.get(target.task), n=N[name], seed=FRESH_SEED)
        assert result["ok"], result


def test_zoo_model_is_processed_as_recorded(zoo):
    name, model = zoo
    flags = processing_of(model)
    has_ln = ZOO[name].config["normalization_type"] == "LN"
    assert flags["fold_ln"] is has_ln and flags["center_writing_weights"] is has_ln
    assert flags["center_unembed"] and flags["processed"]
    assert model.W_U.mean(-1).abs().max() < 1e-5
    if has_ln:
        assert model.cfg.normalization_type == "LNPre" and model.W_E.mean(-1).abs().max() < 1e-5
    cfg = model_config_dict(model)
    assert cfg["model_name"] == f"zoo:{name}" and json.dumps(cfg)
    for key in ("n_layers", "n_heads", "d_model", "d_head", "attention_dir", "positional_embedding_type"):
        if key in ZOO[name].config:
            assert cfg[key] == ZOO[name].config[key], key


def test_processing_keeps_log_probs(zoo):
    name, model = zoo
    raw = load_model(f"zoo:{name}", process=False)
    assert processing_of(raw)["processed"] is False
    task = ZOO[name].tasks[0][0]
    data = get_task(task).generate(16, 3, tokenizer=model.tokenizer)
    from actstore.models.forward import masked_logits

    toks, lengths = torch.from_numpy(data.tokens), torch.from_numpy(data.lengths)
    with torch.no_grad():
        a = masked_logits(model, toks, lengths).log_softmax(-1)
        b = masked_logits(raw, toks, lengths).log_softmax(-1)
    real = torch.arange(toks.shape[1])[None] < lengths[:, None]
    torch.testing.assert_close(a[real], b[real], atol=1e-4, rtol=1e-4)  # large negative log-probs: relative


def test_lm_tokenizer_round_trips():
    model = load_model("zoo:lm")
    tok = tokenizer_for(ZOO["lm"])
    rec = json.loads(weight_paths("lm")[1].read_text())
    assert rec["tokenizer"] == tokenizer_fingerprint(tok) and model.cfg.d_vocab == rec["tokenizer"]["vocab_size"]
    text = "When Mary and John went to the store, John gave the bag to"
    toks = model.to_tokens(text)
    assert toks[0, 0].item() == tok.bos_token_id
    assert model.to_str_tokens(text)[1:4] == ["When", " Mary", " and"]
    logits = model(toks)[0, -1]
    assert model.to_string(logits.argmax()) == " Mary"
    days = model.to_tokens("Today it is Sunday, tomorrow it is")
    assert model.to_string(model(days)[0, -1].argmax()) == " Monday"


def test_brackets_ignores_pad_tokens():
    model = load_model("zoo:brackets")
    data = get_task("brackets").generate(64, 5)
    from actstore.models.forward import masked_logits

    toks, lengths = torch.from_numpy(data.tokens), torch.from_numpy(data.lengths)
    pad = torch.arange(toks.shape[1])[None] >= lengths[:, None]
    other = toks.clone()
    other[pad] = 3  # '(' where padding was
    with torch.no_grad():
        torch.testing.assert_close(masked_logits(model, toks, lengths)[:, 0],
                                   masked_logits(model, other, lengths)[:, 0], atol=1e-5, rtol=0)


def test_evaluate_table_splits_by_label():
    model = load_model("zoo:addition")
    table = evaluate(model, "addition", n=200, seed=3)
    assert set(table["split"].unique()) == {"all", "answer", "carry_0", "carry_1", "carry_2", "any_carry"}
    row = table.filter(pl.col("split") == "all").row(0, named=True)
    assert row["examples"] == 200 and row["answers"] == 800
    # the counterfactual is the corrupted twin's sum digit: it differs at c1 always and at c0 where carry_0 flips,
    # never at c2, c3 (logit diff exactly 0, not > 0), so at most half the answers count for diff_accuracy
    assert row["logit_diff"] > 0 and 0.45 < row["diff_accuracy"] <= 0.5
    carry = table.filter(pl.col("split") == "carry_2").sort("value")
    assert carry["value"].to_list() == ["false", "true"] and carry["examples"].sum() == 200
    assert table.filter(pl.col("split") == "answer")["answers"].to_list() == [200] * 4
