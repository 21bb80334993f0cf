"""Ingest unembeds the answer positions only: stored outputs and top-k equal TransformerLens's own logits
read at the answer positions, and the final LayerNorm's hooks still see every position."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import SHAPES, tiny_model
from transformer_lens import HookedTransformer, HookedTransformerConfig

import actstore
from actstore.datasets import get_task

N, SEED = 20, 1
KW = dict(chunk=8, batch=4, dtype="float32", quiet=True)


def tl_answer_logits(model, data) -> torch.Tensor:
    """model(tokens)[b, answer_pos[b]]: [example, answer, vocab] from TransformerLens's full forward."""
    toks = torch.tensor(data.tokens)
    mask = (torch.arange(toks.shape[1])[None] < torch.tensor(data.lengths)[:, None]).long()
    with torch.inference_mode():
        logits = model(toks, attention_mask=mask, return_type="logits")
    return logits[torch.arange(len(data))[:, None], torch.tensor(data.answer_pos)].float()


def check_outputs(store, at: torch.Tensor, data) -> None:
    out = store.outputs.sort(["example_id", "answer_idx"])
    correct = torch.tensor(data.answer_tokens)[..., None]
    np.testing.assert_allclose(out["correct_logit"].to_numpy(), at.gather(-1, correct).reshape(-1).numpy(),
                               atol=1e-5, rtol=1e-6)
    np.testing.assert_allclose(out["loss"].to_numpy(),
                               -at.log_softmax(-1).gather(-1, correct).reshape(-1).numpy(), atol=1e-5, rtol=1e-6)
    assert out["rank"].to_list() == (at > at.gather(-1, correct)).sum(-1).reshape(-1).tolist()
    topk = store.topk.sort(["example_id", "answer_idx", "rank"])
    k = store.manifest.top_k
    values, ids = at.topk(k, dim=-1)
    assert topk["token_id"].to_list() == ids.reshape(-1).tolist()
    np.testing.assert_allclose(topk["logit"].to_numpy(), values.reshape(-1).numpy(), atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("kind", ["addition", "list_update"])
def test_outputs_equal_transformerlens_logits_at_the_answers(tmp_path, kind):
    """Causal models with (addition) and without (list_update: shortformer) a final LayerNorm; the stored
    ln_final scale still covers every position."""
    model = tiny_model(kind)
    hooks = ["default"] + (["ln_final.hook_normalized"] if kind == "addition" else [])
    store = actstore.ingest(kind, model, N, SEED, tmp_path / "s", hooks=hooks, **KW)
    data = get_task(kind).generate(N, SEED)
    check_outputs(store, tl_answer_logits(model, data), data)
    if kind == "addition":
        _, cache = model.run_with_cache(torch.tensor(data.tokens), names_filter=lambda n: n.startswith("ln_final"))
        for name in ("ln_final.hook_scale", "ln_final.hook_normalized"):
            assert store.hook_info(name).shape[1] == data.tokens.shape[1]
            np.testing.assert_allclose(store.read(name), cache[name].numpy(), atol=1e-6, err_msg=name)


def test_soft_capped_logits_are_capped_as_transformerlens_caps_them(tmp_path):
    cfg = HookedTransformerConfig(**SHAPES["addition"], output_logits_soft_cap=0.5, seed=0, device="cpu")
    model = HookedTransformer(cfg)
    store = actstore.ingest("addition", model, N, SEED, tmp_path / "s", hooks=["resid_post"], model_spec="capped",
                            **KW)
    data = get_task("addition").generate(N, SEED)
    at = tl_answer_logits(model, data)
    _, cache = model.run_with_cache(torch.tensor(data.tokens), names_filter=["unembed.hook_out"])  # before the cap
    assert cache["unembed.hook_out"].abs().max() > 1  # well past the cap of 0.5: capping changes the logits
    check_outputs(store, at, data)
