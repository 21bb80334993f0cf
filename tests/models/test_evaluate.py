"""evaluate(): numbers checked against a direct computation on a tiny model; refusals."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from actstore.datasets import get_task
from actstore.errors import InvalidParameterError
from actstore.models import evaluate
from actstore.models.backend import build_model
from actstore.models.forward import masked_logits


@pytest.fixture(scope="module")
def brackets_model():
    return build_model(dict(n_layers=1, n_heads=2, d_model=16, d_head=8, d_mlp=16, n_ctx=42, d_vocab=5,
                            d_vocab_out=2, act_fn="relu", normalization_type="LN", attention_dir="bidirectional",
                            seed=3))


def test_evaluate_matches_direct_computation(brackets_model):
    table = evaluate(brackets_model, "brackets", n=300, seed=4)
    data = get_task("brackets").generate(300, 4)
    with torch.no_grad():
        logits = masked_logits(brackets_model, torch.from_numpy(data.tokens), torch.from_numpy(data.lengths))[:, 0]
    pred = logits.argmax(-1).numpy()
    answer = data.answer_tokens[:, 0]
    diff = (logits[np.arange(300), answer] - logits[np.arange(300), 1 - answer]).numpy()
    loss = -logits.log_softmax(-1)[np.arange(300), answer].numpy()
    row = table.filter(pl.col("split") == "all").row(0, named=True)
    assert row["examples"] == row["answers"] == 300
    assert row["accuracy"] == pytest.approx((pred == answer).mean())
    assert row["logit_diff"] == pytest.approx(diff.mean(), abs=1e-5)
    assert row["diff_accuracy"] == pytest.approx((diff > 0).mean())
    assert row["loss"] == pytest.approx(loss.mean(), abs=1e-5)
    failure = data.labels["failure"].to_numpy()
    by = table.filter(pl.col("split") == "failure")
    assert set(by["value"]) == set(failure)
    for value, acc, n in by.select("value", "accuracy", "examples").iter_rows():
        sel = failure == value
        assert n == sel.sum() and acc == pytest.approx((pred[sel] == answer[sel]).mean())
    assert "answer" not in table["split"].to_list()  # one answer per example: no per-answer split


def test_evaluate_refuses_training_seeds_and_bad_labels(brackets_model):
    with pytest.raises(InvalidParameterError, match="training seed"):
        evaluate(brackets_model, "brackets", n=10, seed=10_000)
    with pytest.raises(InvalidParameterError, match="nope"):
        evaluate(brackets_model, "brackets", n=10, seed=1, group_by=["nope"])
    with pytest.raises(InvalidParameterError, match="vocabulary"):
        evaluate(brackets_model, "addition", n=10, seed=1)
