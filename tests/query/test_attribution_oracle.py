"""Direct attribution math against TransformerLens's own decompositions, on tiny models built here.

TransformerLens oracle: cache.decompose_resid / stack_head_results / get_full_resid_decomposition,
scaled with apply_ln_to_stack and read out with logit_attrs (both inside logit_attrs).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from query_models import SHAPES, run_batch, task_data, tiny_model, tl_logit_attrs

from actstore.errors import InvalidParameterError
from actstore.query.attribution import LEVELS, direct_attribution, expected_total
from actstore.query.readout import Readout

TOL = dict(rtol=1e-9, atol=2e-5)  # TL computes in float32; ours in float64


@pytest.fixture(scope="module", params=list(SHAPES))
def batch(request):
    model = tiny_model(request.param)
    return run_batch(model, task_data(request.param, 24, seed=1))


def ours(b, level: str, target: str) -> tuple[np.ndarray, list[str]]:
    readout = Readout(b.weights, np.concatenate([b.data.answer_tokens.ravel(), b.counter.ravel()]))
    values, comps = direct_attribution(b.weights, readout, b.chunk, level=level, target=target)
    return values, [c.name for c in comps]


def tl_attrs(b, stack: torch.Tensor, target: str) -> np.ndarray:
    return tl_logit_attrs(b, stack, target)


def by_name(values: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    return {n: values[..., i] for i, n in enumerate(names)}


def shortformer(b) -> bool:
    return b.model.cfg.positional_embedding_type != "standard"


@pytest.mark.parametrize("target", ["correct", "diff"])
def test_layer_equals_decompose_resid(batch, target):
    stack, labels = batch.cache.decompose_resid(layer=-1, incl_embeds=True, return_labels=True)
    want = dict(zip(labels, tl_attrs(batch, stack, target)))
    got = by_name(*ours(batch, "layer", target))
    if shortformer(batch):  # TL stacks pos_embed, which a shortformer never adds to the residual stream
        assert "pos_embed" not in got
        want.pop("pos_embed")
    renamed = {"embed": "embed", "pos_embed": "pos_embed"}
    for layer in range(batch.model.cfg.n_layers):
        renamed[f"{layer}_attn_out"] = f"attn{layer}"
        renamed[f"{layer}_mlp_out"] = f"mlp{layer}"
    assert sorted(renamed[k] for k in want) == sorted(got)
    for k, v in want.items():
        np.testing.assert_allclose(got[renamed[k]], v, **TOL, err_msg=k)


@pytest.mark.parametrize("target", ["correct", "diff"])
def test_head_equals_stack_head_results(batch, target):
    stack, labels = batch.cache.stack_head_results(layer=-1, return_labels=True)
    want = dict(zip(labels, tl_attrs(batch, stack, target)))
    got = by_name(*ours(batch, "head", target))
    assert len(want) == batch.model.cfg.n_layers * batch.model.cfg.n_heads
    for k, v in want.items():
        np.testing.assert_allclose(got[k], v, **TOL, err_msg=k)
    # the per-layer bias and MLP terms: TL's attn_out minus its heads is b_O; mlp_out whole
    layers, llabels = batch.cache.decompose_resid(layer=-1, incl_embeds=False, return_labels=True)
    per_layer = dict(zip(llabels, tl_attrs(batch, layers, target)))
    for layer in range(batch.model.cfg.n_layers):
        heads = sum(want[f"L{layer}H{h}"] for h in range(batch.model.cfg.n_heads))
        np.testing.assert_allclose(got[f"attn_bias{layer}"], per_layer[f"{layer}_attn_out"] - heads, **TOL)
        if f"{layer}_mlp_out" in per_layer:
            np.testing.assert_allclose(got[f"mlp{layer}"], per_layer[f"{layer}_mlp_out"], **TOL)


@pytest.mark.parametrize("target", ["correct", "diff"])
def test_neuron_equals_full_resid_decomposition(batch, target):
    if batch.model.cfg.attn_only:  # TL 3.9's get_full_resid_decomposition fails without MLPs; nothing to expand
        np.testing.assert_array_equal(ours(batch, "neuron", target)[0], ours(batch, "head", target)[0])
        return
    stack, labels = batch.cache.get_full_resid_decomposition(layer=-1, expand_neurons=True, return_labels=True)
    want = dict(zip(labels, tl_attrs(batch, stack, target)))
    got = by_name(*ours(batch, "neuron", target))
    n_layers, d_mlp = batch.model.cfg.n_layers, batch.model.cfg.d_mlp
    if not batch.model.cfg.attn_only:
        assert f"L{n_layers - 1}N{d_mlp - 1}" in got and sum("N" in k for k in got) == n_layers * d_mlp
    bias = want.pop("bias")  # TL's accumulated bias: every b_O and b_out
    if shortformer(batch):
        want.pop("pos_embed")
    for k, v in want.items():
        np.testing.assert_allclose(got[k], v, **TOL, err_msg=k)
    ours_bias = sum(v for k, v in got.items() if "bias" in k)
    np.testing.assert_allclose(ours_bias, bias, **TOL)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("target", ["correct", "diff"])
def test_components_sum_to_the_logits(batch, level, target):
    values, names = ours(batch, level, target)
    assert len(set(names)) == len(names)
    logits = batch.logits[np.arange(len(batch.data))[:, None], batch.data.answer_pos]  # [e, a, vocab]
    pick = lambda tok: np.take_along_axis(logits, tok[..., None], axis=-1)[..., 0]  # noqa: E731
    logit = {"correct_logit": pick(batch.data.answer_tokens), "counter_logit": pick(batch.counter)}
    want = expected_total(batch.weights, batch.chunk, logit, target)
    np.testing.assert_allclose(values.sum(-1), want, rtol=1e-6, atol=5e-5)
    assert np.abs(want).max() > 0.1  # a test of something


def test_paths_sum_to_their_head_and_match_the_seed_formula(batch):
    """Each head of layer >= 1 splits exactly into its sources; each source term equals seed 003's
    formula: pattern-weighted (source / ln1 scale) through W_V W_O, over the final scale, on the answer."""
    if batch.model.cfg.n_layers < 2:
        pytest.skip("one layer: no paths")
    head_vals, head_names = ours(batch, "head", "correct")
    heads = by_name(head_vals, head_names)
    path_vals, path_names = ours(batch, "path", "correct")
    paths = by_name(path_vals, path_names)
    model, cache, data = batch.model, batch.cache, batch.data
    cfg = model.cfg
    for layer in range(1, cfg.n_layers):
        for h in range(cfg.n_heads):
            mine = {k.split(">")[0]: v for k, v in paths.items() if k.endswith(f">L{layer}H{h}")}
            np.testing.assert_allclose(sum(mine.values()), heads[f"L{layer}H{h}"], **TOL)
            assert f"L{layer}H{h}" not in paths  # replaced by its paths, so the total stays exact
    # seed formula for the last layer's heads, written the seed's way (torch, components at all positions)
    layer = cfg.n_layers - 1
    srcs = {"embed": cache["hook_embed"]}
    if cfg.positional_embedding_type == "standard":
        srcs["pos_embed"] = cache["hook_pos_embed"]
    for earlier in range(layer):
        z = cache["z", earlier]  # [e, pos, head, d_head]
        for g in range(cfg.n_heads):
            srcs[f"L{earlier}H{g}"] = z[:, :, g] @ model.W_O[earlier, g]
        srcs[f"attn_bias{earlier}"] = model.b_O[earlier].expand_as(cache["hook_embed"])
        if not cfg.attn_only:
            srcs[f"mlp{earlier}"] = cache["mlp_out", earlier]
    scale1 = cache[f"blocks.{layer}.ln1.hook_scale"] if cfg.normalization_type else torch.ones(1)
    scale_f = cache["ln_final.hook_scale"] if cfg.normalization_type else torch.ones(1)
    w_u = model.W_U[:, torch.tensor(data.answer_tokens)]  # [d_model, e, a]
    rows = torch.arange(len(data))[:, None]
    pos = torch.tensor(data.answer_pos)
    for name, x in srcs.items():
        x = x - x.mean(-1, keepdim=True) if cfg.normalization_type else x
        for h in range(cfg.n_heads):
            ov = model.W_V[layer, h] @ model.W_O[layer, h]  # [d_model, d_model]
            through = (x / scale1) @ ov  # [e, key, d_model]
            carried = torch.einsum("eqk,ekm->eqm", cache["pattern", layer][:, h], through) / scale_f
            carried = carried - carried.mean(-1, keepdim=True) if cfg.normalization_type else carried
            want = torch.einsum("eam,mea->ea", carried[rows, pos], w_u).detach().double().numpy()
            np.testing.assert_allclose(paths[f"{name}>L{layer}H{h}"], want, rtol=1e-6, atol=3e-5, err_msg=name)


def test_unfolded_layernorm_sums_exactly():
    """A model whose LayerNorm weights were not folded (normalization 'LN' with w and b): still exact."""
    model = tiny_model("ln_mlp", processed=False)
    assert model.cfg.normalization_type == "LN"
    b = run_batch(model, task_data("ln_mlp", 12))
    logits = b.logits[np.arange(12)[:, None], b.data.answer_pos]
    correct = np.take_along_axis(logits, b.data.answer_tokens[..., None], axis=-1)[..., 0]
    want = expected_total(b.weights, b.chunk, {"correct_logit": correct}, "correct")
    for level in LEVELS:
        values, names = ours(b, level, "correct")
        assert "ln_final_bias" in names
        np.testing.assert_allclose(values.sum(-1), want, rtol=1e-6, atol=5e-5, err_msg=level)
    paths = by_name(*ours(b, "path", "correct"))
    heads = by_name(*ours(b, "head", "correct"))
    got = sum(v for k, v in paths.items() if k.endswith(">L2H1"))
    np.testing.assert_allclose(got, heads["L2H1"], **TOL)


def test_bad_granularity_and_missing_counterfactual(batch):
    with pytest.raises(InvalidParameterError, match="level must be one of layer, head, neuron, path"):
        ours(batch, "block", "correct")
    with pytest.raises(InvalidParameterError, match="target must be one of"):
        ours(batch, "head", "logit")
    batch.chunk.counter_tokens, saved = None, batch.chunk.counter_tokens
    try:
        with pytest.raises(InvalidParameterError, match="target 'diff' needs counterfactual tokens"):
            ours(batch, "head", "diff")
    finally:
        batch.chunk.counter_tokens = saved
