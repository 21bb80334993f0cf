"""Every zoo model: attention rows and neuron projections from a store equal TransformerLens's
run_with_cache on the same examples, and role/label aggregates equal numpy over the cache.
Skips while the zoo's trained weights are not installed."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from query_models import run_batch

import actstore
from actstore.datasets import get_task
from actstore.query import attention, neurons

SPECS = ["zoo:addition", "zoo:list_update", "zoo:brackets", "zoo:lm"]
N = 24


@pytest.fixture(scope="module", params=SPECS)
def zoo(request, tmp_path_factory):  # type: ignore[no-untyped-def]
    spec = request.param
    from actstore.models import ZOO, load_model

    model = load_model(spec)  # every zoo model is shipped: a failure to load is a failure
    task, params = ZOO[spec.removeprefix("zoo:")].tasks[0]
    store = actstore.ingest(task, model, N, 7, tmp_path_factory.mktemp(spec.replace(":", "_")) / "s",
                            dtype="float32", chunk=16, quiet=True, model_spec=spec, task_params=params)
    data = get_task(task, **store.manifest.task_params).generate(N, 7, tokenizer=getattr(model, "tokenizer", None))
    with torch.no_grad():
        return store, run_batch(model, data)


def test_attention_rows_and_role_masses(zoo):
    store, b = zoo
    cfg = b.model.cfg
    pat = np.stack([b.cache[f"blocks.{layer}.attn.hook_pattern"].double().numpy() for layer in range(cfg.n_layers)])
    raw = attention(store)
    causal = cfg.attention_dir == "causal"
    lengths = b.data.lengths
    per_example = lengths * (lengths + 1) // 2 if causal else lengths ** 2
    assert raw.height == cfg.n_layers * cfg.n_heads * int(per_example.sum())
    e, layer, h, q, k = (raw[c].to_numpy() for c in ("example_id", "layer", "head", "q_pos", "k_pos"))
    np.testing.assert_allclose(raw["value"].to_numpy(), pat[layer, e, h, q, k], rtol=1e-5, atol=1e-6)
    # mass from the first answer position's role to each key role, last layer, per head
    roles = b.data.roles
    q_role = roles[0, b.data.answer_pos[0, 0]]
    if not q_role:
        pytest.skip("the first answer position has no role")
    agg = attention(store, layers=cfg.n_layers - 1, query=q_role, group_by=["k_role"])
    rows = roles == q_role  # [example, pos]
    last = pat[-1]  # [example, head, q, k]
    for role in sorted(set(agg["k_role"].drop_nulls().to_list()))[:3]:
        keys = roles == role
        masses = []
        for ex, qp in zip(*np.nonzero(rows)):
            visible = keys[ex] & (np.arange(keys.shape[1]) <= qp if causal else True) & (np.arange(keys.shape[1])
                                                                                           < lengths[ex])
            if visible.any():
                masses.append((last[ex, :, qp] * visible).sum(-1))  # [head]
        got = agg.filter(pl.col("k_role") == role).sort("head")
        np.testing.assert_allclose(got["mean"], np.mean(masses, axis=0), rtol=1e-5, atol=1e-7)
        assert got["n"].to_list() == [len(masses)] * cfg.n_heads


def test_neuron_projections(zoo):
    store, b = zoo
    cfg = b.model.cfg
    if cfg.attn_only or not cfg.d_mlp:
        pytest.skip("attention-only zoo model")
    layer = cfg.n_layers - 1
    table = neurons(store, layer)
    e = np.repeat(np.arange(N), b.data.n_answers)
    p = b.data.answer_pos.ravel()
    with torch.no_grad():
        stack = b.cache.apply_ln_to_stack(b.cache.get_neuron_results(layer).permute(2, 0, 1, 3)).double()
        d = b.model.W_U.double()[:, torch.tensor(b.data.answer_tokens.ravel())].T  # [row, d_model]
        want = torch.einsum("nrd,rd->rn", stack[:, torch.tensor(e), torch.tensor(p)], d).numpy()
    got = table["projection"].to_numpy().reshape(e.size, cfg.d_mlp)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
