"""Logit lens against TransformerLens accumulated_resid (cached final scale, and recomputed LayerNorm)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from query_models import N_EXAMPLES
from query_models import SHAPES, at_answer_positions, run_batch, task_data, tiny_model

from actstore.errors import InvalidParameterError
from actstore.query import dla, logit_lens
from actstore.query.logit_lens import lens_values, stages
from actstore.query.readout import Readout


@pytest.fixture(scope="module", params=list(SHAPES))
def batch(request):
    return run_batch(tiny_model(request.param), task_data(request.param, 20, seed=2))


def tl_stack(b, apply_ln: bool) -> tuple[torch.Tensor, list[str]]:
    return b.cache.accumulated_resid(layer=-1, incl_mid=not b.model.cfg.attn_only, apply_ln=apply_ln,
                                     return_labels=True)


def answer_dirs(b) -> torch.Tensor:
    """[e, pos, d_model] W_U column of each answer token at its position (zero elsewhere)."""
    e, width = b.data.tokens.shape
    out = torch.zeros(e, width, b.model.cfg.d_model)
    rows = np.arange(e)[:, None]
    out[rows, b.data.answer_pos] = b.model.W_U.detach().T[torch.tensor(b.data.answer_tokens)]
    return out


def test_stage_labels_follow_transformerlens(batch):
    _, labels = tl_stack(batch, False)
    ours = [f"{layer}_{s.removeprefix('resid_')}" for layer, s in stages(batch.weights)]
    ours[-1] = "final_post"
    assert ours == labels


def test_cached_scale_equals_logit_attrs_of_accumulated_resid(batch):
    stack, _ = tl_stack(batch, False)
    e, width = batch.data.tokens.shape
    tok = np.zeros((e, width), dtype=np.int64)
    tok[np.arange(e)[:, None], batch.data.answer_pos] = batch.data.answer_tokens
    attrs = batch.cache.logit_attrs(stack, torch.tensor(tok))
    want = at_answer_positions(attrs[..., None], batch.data.answer_pos)[..., 0]
    got = lens_values(batch.weights, Readout(batch.weights, batch.data.answer_tokens), batch.chunk, "correct", "cached")
    np.testing.assert_allclose(np.moveaxis(got, -1, 0), want, rtol=1e-7, atol=2e-5)


def test_recompute_equals_accumulated_resid_with_ln(batch):
    stack, _ = tl_stack(batch, True)  # ln_final applied to every stage with its own statistics
    want = at_answer_positions((stack * answer_dirs(batch)).sum(-1)[..., None], batch.data.answer_pos)[..., 0]
    got = lens_values(batch.weights, Readout(batch.weights, batch.data.answer_tokens), batch.chunk, "correct",
                      "recompute")
    np.testing.assert_allclose(np.moveaxis(got, -1, 0), want, rtol=1e-6, atol=5e-5)
    if batch.model.cfg.normalization_type is None:  # no LayerNorm: both modes are the same numbers
        cached = lens_values(batch.weights, Readout(batch.weights, batch.data.answer_tokens), batch.chunk)
        np.testing.assert_allclose(got, cached, rtol=1e-6, atol=1e-6)  # cached: float32 products


@pytest.mark.parametrize("kind", ["ln_mlp", "noln_attn", "bidir"])
def test_store_logit_lens(tiny_store, kind):
    store = tiny_store(kind)
    lens = logit_lens(store)
    n_stages = len(stages_of(store))
    assert lens.height == N_EXAMPLES * store.n_answers * n_stages
    assert lens.columns == ["example_id", "answer_idx", "answer_pos", "target", "layer", "stage", "value"]
    first = lens.filter(pl.col("example_id") == 0, pl.col("answer_idx") == 0)
    assert list(zip(first["layer"], first["stage"])) == stages_of(store)
    # the last stage is the full stream: the sum of all DLA components (= logit - b_U)
    final = lens.filter(pl.col("stage") == "resid_post").sort("example_id", "answer_idx")
    total = dla(store, level="layer").group_by("example_id", "answer_idx").agg(pl.col("value").sum()).sort(
        "example_id", "answer_idx")
    np.testing.assert_allclose(final["value"], total["value"], rtol=1e-9, atol=1e-9)
    recomputed = logit_lens(store, ln="recompute")
    assert recomputed.height == lens.height
    if kind != "noln_attn":
        assert not np.allclose(recomputed["value"], lens["value"])


def stages_of(store) -> list[tuple[int, str]]:
    from actstore.query.readout import Weights

    return stages(Weights.from_store(store))


def test_refusals(tiny_store):
    store = tiny_store("ln_mlp")
    with pytest.raises(InvalidParameterError, match="ln must be one of cached, recompute"):
        logit_lens(store, ln="fresh")
    with pytest.raises(InvalidParameterError, match="target 'diff' needs counterfactual tokens"):
        logit_lens(tiny_store("ln_mlp", counter=False), target="diff")
