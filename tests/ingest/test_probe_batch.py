"""The first-batch probe (actstore.ingest.probe) through ingest: the decomposition check's record against
TransformerLens's own logits, a model whose components miss its logits recorded as failed, and one forward
pass for the check and the hook shapes together."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import tiny_model

import actstore
from actstore.datasets import get_task
from actstore.ingest.probe import CHECK_EXAMPLES

KW = dict(chunk=8, batch=8, quiet=True)


@pytest.mark.parametrize("kind", ["addition", "list_update"])
def test_the_check_records_the_answer_logits_over_the_whole_vocabulary(tmp_path, kind):
    model = tiny_model(kind)
    store = actstore.ingest(kind, model, 8, 4, tmp_path / "s", dtype="float32", **KW)
    d = store.manifest.decomposition
    k = CHECK_EXAMPLES
    assert d["status"] == "ok" and d["n_examples"] == k and 0 <= d["max_abs_error"] < 1e-5
    data = get_task(kind).generate(8, 4)
    tokens = torch.tensor(data.tokens[:k])
    mask = (torch.arange(tokens.shape[1])[None] < torch.tensor(data.lengths[:k])[:, None]).long()
    with torch.no_grad():
        logits = model(tokens, attention_mask=mask)  # [k, pos, vocab]
        at = logits[torch.arange(k)[:, None], torch.tensor(data.answer_pos[:k])] - model.b_U  # [k, answer, vocab]
    assert d["max_abs_logit"] == pytest.approx(float(at.abs().max()), abs=1e-5)
    assert d["tolerance"] == pytest.approx(1e-4 * (1 + d["max_abs_logit"]))
    assert 0 <= d["stored_dtype_max_abs_error"] < 1e-5  # float32 stored: what float32 rounding leaves
    half = actstore.ingest(kind, model, 8, 4, tmp_path / "h", dtype="float16", **KW).manifest.decomposition
    assert 1e-5 < half["stored_dtype_max_abs_error"] < 2e-2 and half["max_abs_error"] == d["max_abs_error"]


@pytest.mark.parametrize("kind", ["addition", "list_update", "brackets"])
def test_components_that_miss_the_logits_are_recorded_as_failed(tmp_path, capsys, kind):
    """A residual-stream term no stored component carries (a permanent hook adds it) breaks the sum."""
    model = tiny_model(kind)
    extra = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    model.add_hook("blocks.0.hook_resid_post", lambda act, hook: act + extra, is_permanent=True)
    store = actstore.ingest(kind, model, 8, 0, tmp_path / "s", **{**KW, "quiet": False})
    d = store.manifest.decomposition
    assert d["status"] == "failed" and d["max_abs_error"] > 10 * d["tolerance"]
    assert "components do not sum to the logits" in capsys.readouterr().err
    model.reset_hooks(including_permanent=True)
    clean = actstore.ingest(kind, model, 8, 0, tmp_path / "t", **KW).manifest.decomposition
    assert clean["status"] == "ok" and clean["max_abs_error"] < d["tolerance"]


def test_the_check_and_the_hook_shapes_take_one_forward_pass(tmp_path):
    model = tiny_model("addition")
    calls = []
    handle = model.blocks[0].register_forward_hook(lambda *_: calls.append(1))
    try:  # no outputs: the one batch is one pass, so every other pass of block 0 is the probe's
        store = actstore.ingest("addition", model, 8, 0, tmp_path / "s", outputs=False, **KW)
    finally:
        handle.remove()
    assert store.manifest.decomposition["status"] == "ok" and len(calls) == 2
    data = get_task("addition").generate(1, 0)
    _, cache = model.run_with_cache(torch.tensor(data.tokens), names_filter=store.hooks)
    assert {h: store.hook_info(h).shape[1:] for h in store.hooks} == {h: tuple(v.shape[1:]) for h, v in cache.items()}


def test_a_store_without_the_hooks_it_needs_skips_the_check(tmp_path):
    model = tiny_model("addition")
    store = actstore.ingest("addition", model, 8, 0, tmp_path / "s", hooks=["z", "blocks.1.hook_resid_post"], **KW)
    d = store.manifest.decomposition
    assert d["status"] == "skipped" and "does not keep blocks.0.mlp.hook_post" in d["reason"]
    assert store.hook_info("blocks.1.hook_resid_post").shape[1:] == (data_width(), model.cfg.d_model)
    np.testing.assert_array_equal(store.read("blocks.1.attn.hook_z").shape[1:],
                                  (data_width(), model.cfg.n_heads, model.cfg.d_head))


def data_width() -> int:
    return int(get_task("addition").generate(1, 0).tokens.shape[1])
