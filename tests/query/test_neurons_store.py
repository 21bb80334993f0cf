"""neurons(store, ...) on stores ingested from tiny models equals the same projections computed
from a TransformerLens run_with_cache with TransformerLens's own stacking and LayerNorm helpers:
answer / diff / vector directions, positions by role, a head's OV pull-back (seed 002), answer-only
stores, and one-line refusals."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import polars as pl
import pytest
import torch
from query_models import CHUNK, N_EXAMPLES
from query_models import run_batch, task_data, tiny_model

import actstore
from actstore.errors import InvalidParameterError
from actstore.query import neurons


@pytest.fixture(autouse=True)
def _no_grad():  # type: ignore[no-untyped-def]
    with torch.no_grad():  # oracles use the model's weights, which require grad
        yield


@lru_cache(maxsize=None)
def batch(kind: str):  # type: ignore[no-untyped-def]
    return run_batch(tiny_model(kind), task_data(kind, N_EXAMPLES, seed=3))


def neuron_stack(cache, layer: int, apply_ln: bool = False,  # type: ignore[no-untyped-def]
                 ln_layer: int | None = None) -> torch.Tensor:
    """[neuron, example, pos, d_model] float64: TL's per-neuron outputs of one layer
    (get_neuron_results), optionally through a cached LayerNorm (apply_ln_to_stack: the final
    one, or layer `ln_layer`'s ln1)."""
    stack = cache.get_neuron_results(layer).permute(2, 0, 1, 3)
    if apply_ln or ln_layer is not None:
        stack = cache.apply_ln_to_stack(stack, layer=ln_layer)
    return stack.double()


def table_array(table: pl.DataFrame, column: str, rows: int, d_mlp: int) -> np.ndarray:
    """[row, neuron] from a neurons table in (example, pos, neuron) order."""
    return table[column].to_numpy().reshape(rows, d_mlp)


def unembed_dirs(model, tokens: np.ndarray,  # type: ignore[no-untyped-def]
                 counter: np.ndarray | None = None) -> torch.Tensor:
    """[example, d_model] W_U columns (minus the counterfactual's)."""
    w_u = model.W_U.detach().double()
    d = w_u[:, torch.tensor(tokens)].T
    return d - w_u[:, torch.tensor(counter)].T if counter is not None else d


@pytest.mark.parametrize("kind", ["ln_mlp", "bidir"])
def test_answer_direction_equals_transformerlens_neuron_attribution(tiny_store, kind):
    """Default rows (every answer position): projection = TL's per-neuron stack with the final
    LayerNorm applied, read on the answer's unembedding; activation = hook_post."""
    store = tiny_store(kind)
    b = batch(kind)
    model, cache, data = b.model, b.cache, b.data
    e_idx = np.repeat(np.arange(N_EXAMPLES), data.n_answers)
    p_idx = data.answer_pos.ravel()
    tok = data.answer_tokens.ravel()
    for layer in range(model.cfg.n_layers):
        table = neurons(store, layer)
        d_mlp = model.cfg.d_mlp
        assert table.columns == ["example_id", "pos", "layer", "neuron", "activation", "projection"]
        assert table.height == e_idx.size * d_mlp
        np.testing.assert_array_equal(table["example_id"].to_numpy()[::d_mlp], e_idx)
        np.testing.assert_array_equal(table["pos"].to_numpy()[::d_mlp], p_idx)
        stack = neuron_stack(cache, layer, apply_ln=True)  # [neuron, example, pos, d_model]
        at = stack[:, torch.tensor(e_idx), torch.tensor(p_idx)]  # [neuron, row, d_model]
        want = torch.einsum("nrd,rd->rn", at, unembed_dirs(model, tok)).numpy()
        got = table_array(table, "projection", e_idx.size, d_mlp)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        post = cache[f"blocks.{layer}.mlp.hook_post"].numpy()[e_idx, p_idx]
        np.testing.assert_array_equal(table_array(table, "activation", e_idx.size, d_mlp), post)
        # summed over neurons, plus b_out, the projections are the MLP's direct attribution
        mlp_out = cache.apply_ln_to_stack(cache[f"blocks.{layer}.hook_mlp_out"][None]).double()[0]
        whole = (mlp_out[torch.tensor(e_idx), torch.tensor(p_idx)] * unembed_dirs(model, tok)).sum(-1).numpy()
        b_out = model.b_out[layer].detach().double()
        b_out = b_out - b_out.mean()
        scale = cache["ln_final.hook_scale"].double()[torch.tensor(e_idx), torch.tensor(p_idx), 0]
        bias = ((unembed_dirs(model, tok) @ b_out) / scale).numpy()
        np.testing.assert_allclose(got.sum(1) + bias, whole, rtol=1e-4, atol=1e-4)


def test_diff_direction(tiny_store):
    store = tiny_store("bidir")
    b = batch("bidir")
    table = neurons(store, 2, direction="diff")
    stack = neuron_stack(b.cache, 2, apply_ln=True)[:, :, 0]  # answer at position 0
    d = unembed_dirs(b.model, b.data.answer_tokens[:, 0], b.data.counter_tokens[:, 0])
    want = torch.einsum("ned,ed->en", stack, d).numpy()
    np.testing.assert_allclose(table_array(table, "projection", N_EXAMPLES, 24), want, rtol=1e-4, atol=1e-5)


def test_positions_by_role_read_the_chosen_answer(tiny_store):
    """pos=['a1', '+'] with answer=2: rows at positions 1 and 4, each read on answer 2's token,
    with the final LayerNorm scale of the row's own position."""
    store = tiny_store("ln_mlp")
    b = batch("ln_mlp")
    table = neurons(store, 1, pos=["a1", "+"], answer=2)
    assert table["pos"].unique().sort().to_list() == [1, 4]
    stack = neuron_stack(b.cache, 1, apply_ln=True)  # [neuron, example, pos, d]
    d = unembed_dirs(b.model, b.data.answer_tokens[:, 2])
    for pos in (1, 4):
        got = table.filter(pl.col("pos") == pos)
        want = torch.einsum("ned,ed->en", stack[:, :, pos], d).numpy()
        np.testing.assert_allclose(table_array(got, "projection", N_EXAMPLES, 64), want, rtol=1e-4, atol=1e-5)


def test_vector_direction_from_a_file(tiny_store, tmp_path):
    store = tiny_store("bidir")
    b = batch("bidir")
    v = np.random.default_rng(0).normal(size=24)
    np.save(tmp_path / "v.npy", v)
    raw = neurons(store, 0, direction=str(tmp_path / "v.npy"), pos=3)
    stack = neuron_stack(b.cache, 0)[:, :, 3]  # no LayerNorm: the residual contribution
    want = (stack @ torch.tensor(v)).T.numpy()
    kept = b.data.lengths > 3
    np.testing.assert_allclose(table_array(raw, "projection", int(kept.sum()), 24), want[kept], rtol=1e-4, atol=1e-5)
    normed = neurons(store, 0, direction=v, pos=3, final_ln=True)
    stack = neuron_stack(b.cache, 0, apply_ln=True)[:, :, 3]
    want = (stack @ torch.tensor(v)).T.numpy()
    np.testing.assert_allclose(table_array(normed, "projection", int(kept.sum()), 24), want[kept], rtol=1e-4,
                               atol=1e-5)


def through_head_oracle(b, layer: int, head: tuple[int, int], p: int, q: int,  # type: ignore[no-untyped-def]
                        d: torch.Tensor) -> np.ndarray:
    """[example, neuron]: neuron outputs at key p, through head's ln1 (TL's apply_ln_to_stack at
    the head's layer) and OV, landing at query q, then the final LayerNorm, read on d [example, d_model]."""
    model, cache = b.model, b.cache
    head_layer, h = head
    normed = neuron_stack(cache, layer, ln_layer=head_layer)[:, :, p]  # [neuron, example, d]
    out = normed @ model.W_V[head_layer, h].double() @ model.W_O[head_layer, h].double()
    out = out - out.mean(-1, keepdim=True)
    out = out / cache["ln_final.hook_scale"].double()[:, q]  # [example, 1]
    return torch.einsum("ned,ed->en", out, d).numpy()


def test_through_head_ov_as_in_seed_002(tiny_store):
    """Neurons at position 1, pulled back through head 2.0's OV and read at position 0 on the
    class difference; with attention_weighted, times head 2.0's probability 0 -> 1."""
    store = tiny_store("bidir")
    b = batch("bidir")
    d = unembed_dirs(b.model, b.data.answer_tokens[:, 0], b.data.counter_tokens[:, 0])
    pattern = b.cache["blocks.2.attn.hook_pattern"].double().numpy()[:, 0, 0, 1]  # [example]
    for layer in (0, 1):
        want = through_head_oracle(b, layer, (2, 0), 1, 0, d)
        seed = neurons(store, layer, direction="diff", through_head="2.0", pos=1)
        assert seed["pos"].unique().to_list() == [1]
        np.testing.assert_allclose(table_array(seed, "projection", N_EXAMPLES, 24), want, rtol=1e-4, atol=1e-5)
        weighted = neurons(store, layer, direction="diff", through_head=(2, 0), pos=1, attention_weighted=True)
        np.testing.assert_allclose(table_array(weighted, "projection", N_EXAMPLES, 24), want * pattern[:, None],
                                   rtol=1e-4, atol=1e-6)
    # summed over neurons (+ b_out), the weighted projections are what the MLP's whole output at
    # position 1 adds to head 2.0's output at position 0 in that direction (from hook_mlp_out)
    mlp_out = b.cache["blocks.1.hook_mlp_out"].double()[None]
    normed = b.cache.apply_ln_to_stack(mlp_out, layer=2)[0, :, 1]
    ov = b.model.W_V[2, 0].double() @ b.model.W_O[2, 0].double()
    out = normed @ ov
    out = (out - out.mean(-1, keepdim=True)) / b.cache["ln_final.hook_scale"].double()[:, 0]
    whole = (out * d).sum(-1).numpy() * pattern
    b_out = b.model.b_out[1].detach().double()
    b_out = (b_out - b_out.mean())[None] / b.cache["blocks.2.ln1.hook_scale"].double()[:, 1]
    bias_out = b_out @ ov
    bias = (((bias_out - bias_out.mean(-1, keepdim=True)) / b.cache["ln_final.hook_scale"].double()[:, 0]) * d
            ).sum(-1).numpy() * pattern
    got = table_array(weighted, "projection", N_EXAMPLES, 24).sum(1)
    np.testing.assert_allclose(got + bias, whole, rtol=1e-4, atol=1e-5)


def test_through_head_default_positions_and_answer_only_store(tmp_path):
    """MLP post and patterns stored at the answer positions only (float16): default rows work and
    equal the cache; a position that is not an answer is refused naming the hook."""
    model = tiny_model("ln_mlp")
    store = actstore.ingest("addition", model, N_EXAMPLES, 3, tmp_path / "s", positions="answer",
                            dtype="float16", chunk=CHUNK, batch=8, quiet=True)
    b = batch("ln_mlp")
    table = neurons(store, 0, through_head="L2H1", attention_weighted=True)
    assert table.height == N_EXAMPLES * 4 * 64
    pattern = b.cache["blocks.2.attn.hook_pattern"].double().numpy()
    for j, p in enumerate([9, 10, 11, 12]):  # query = key = the answer position
        d = unembed_dirs(b.model, b.data.answer_tokens[:, j])
        want = through_head_oracle(b, 0, (2, 1), p, p, d) * pattern[:, 1, p, p][:, None]
        got = table.filter(pl.col("pos") == p)
        np.testing.assert_allclose(table_array(got, "projection", N_EXAMPLES, 64), want, rtol=2e-2, atol=2e-3)
    with pytest.raises(InvalidParameterError, match=r"blocks.0.mlp.hook_post at the answer positions only.*position 3"):
        neurons(store, 0, pos="a3")


def test_refusals(tiny_store, tmp_path):
    attn_only = tiny_store("ln_attn")
    with pytest.raises(InvalidParameterError, match=r"attention-only: it has no MLP neurons \(stored hooks: .*hook_z"):
        neurons(attn_only, 0)
    store = tiny_store("ln_mlp")
    with pytest.raises(InvalidParameterError, match="'diff' needs counterfactual tokens"):
        neurons(tiny_store("ln_mlp", counter=False), 0, direction="diff")
    with pytest.raises(InvalidParameterError, match="must be in a later layer than the neurons"):
        neurons(store, 1, through_head="1.0")
    with pytest.raises(InvalidParameterError, match=r"through_head 3.0 does not exist"):
        neurons(store, 1, through_head="3.0")
    with pytest.raises(InvalidParameterError, match=r"shape \(3,\).*expected a numeric vector of shape \(48,\)"):
        neurons(store, 0, direction=np.ones(3))
    with pytest.raises(InvalidParameterError, match="neither 'answer', 'diff' nor an existing .npy file"):
        neurons(store, 0, direction=str(tmp_path / "missing.npy"))
    with pytest.raises(InvalidParameterError, match=r"layers=5: 5 is not a layer in \[0, 3\)"):
        neurons(store, 5)
    with pytest.raises(InvalidParameterError, match="attention_weighted needs through_head"):
        neurons(store, 0, attention_weighted=True)
    with pytest.raises(InvalidParameterError, match=r"answer=4: expected an answer index in \[0, 4\)"):
        neurons(store, 0, pos=0, answer=4)


def test_layers_take_an_int_a_list_or_none_as_attention_does(tiny_store):
    store = tiny_store("ln_mlp")
    one = [neurons(store, layer) for layer in range(store.arch.n_layers)]
    assert all(frame["layer"].unique().to_list() == [i] for i, frame in enumerate(one))
    assert neurons(store).equals(pl.concat(one))
    assert neurons(store, [1, 0]).equals(pl.concat([one[1], one[0]]))
    top = neurons(store, [0, 1], top_k=2)
    assert top.equals(pl.concat([neurons(store, 0, top_k=2), neurons(store, 1, top_k=2)]))
    assert neurons(store, through_head=(1, 0))["layer"].unique().to_list() == [0]  # the layers the head reads
    for bad, says in (([], "non-empty list"), ([0, 0], "give each layer once"), ("0", "non-empty list")):
        with pytest.raises(InvalidParameterError, match=says):
            neurons(store, bad)
