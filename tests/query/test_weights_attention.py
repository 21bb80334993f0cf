"""Positional QK with the mean query (seed 003) and the virtual attention pattern (seed 000), against
the seeds' own formulas on TransformerLens caches of the same examples as the tiny stores."""

from __future__ import annotations

import io

import numpy as np
import polars as pl
import pytest
import torch
from query_models import N_EXAMPLES, run_batch, task_data, tiny_model

from actstore.cli import main
from actstore.errors import InvalidParameterError
from actstore.query.attention_circuits import positional_attention, virtual_pattern
from actstore.query.weights import to_matrix


@pytest.fixture(scope="module")
def batches():
    return {kind: run_batch(tiny_model(kind), task_data(kind, N_EXAMPLES, 3)) for kind in ("ln_attn", "noln_attn")}


def seed_positional_qk(b, layer: int, head: int, w_pos: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Seed 003: mean_q @ W_K.T @ (W_pos / mean ln1 scale).T / sqrt(d_head), causal mask, softmax
    (with b_K in the keys, which shifts each query row by a constant)."""
    model, cache = b.model, b.cache
    mean_q = cache["q", layer].double().mean(dim=0)[:, head]  # [pos, d_head]
    if model.cfg.normalization_type:
        w_pos = w_pos / cache["scale", layer, "ln1"][:, :, 0].double().mean()
    keys = w_pos[: mean_q.shape[0]] @ model.W_K[layer, head].double() + model.b_K[layer, head].double()
    qk = mean_q @ keys.T / model.cfg.d_head ** 0.5
    prob = torch.softmax(qk.masked_fill(torch.tril(torch.ones_like(qk)) == 0, float("-inf")), dim=-1)
    return qk.detach().numpy(), prob.detach().numpy()


@pytest.mark.parametrize("kind", ["ln_attn", "noln_attn"])  # LayerNorm + standard positions; shortformer, no LN
def test_positional_qk_with_mean_query_seed_003(tiny_store, batches, kind):
    store, b = tiny_store(kind), batches[kind]
    for layer in (0, 1):  # layer 1's mean query is rebuilt from the stored z
        table = positional_attention(store, layer)
        assert table.columns == ["layer", "head", "q_pos", "k_pos", "score", "prob"]
        for head in range(b.model.cfg.n_heads):
            qk, prob = seed_positional_qk(b, layer, head, b.model.W_pos.double())
            got = table.filter(head=head)
            score = to_matrix(got, "q_pos", "k_pos", "score")
            lower = np.tril(np.ones_like(qk, dtype=bool))
            np.testing.assert_allclose(score[lower], qk[lower], atol=2e-6)
            assert np.isnan(score[~lower]).all()  # masked keys: null scores
            np.testing.assert_allclose(to_matrix(got, "q_pos", "k_pos", "prob"), prob, atol=2e-7)
    # seed 003's second plot adds the constant tokens ('+', '=') to the keys at their positions
    b = batches["ln_attn"]
    toks = b.data.tokens
    const = [p for p in range(toks.shape[1]) if (toks[:, p] == toks[0, p]).all()]
    w_pos = b.model.W_pos.double().clone()
    for p in const:
        w_pos[p] += b.model.W_E[int(toks[0, p])].double()
    qk, prob = seed_positional_qk(b, 0, 1, w_pos)
    got = positional_attention(tiny_store("ln_attn"), 0, heads=1, constant_tokens=True)
    np.testing.assert_allclose(to_matrix(got, "q_pos", "k_pos", "prob"), prob, atol=2e-7)


def test_virtual_pattern_seed_000(tiny_store, batches):
    store, cache = tiny_store("noln_attn"), batches["noln_attn"].cache
    virtual = torch.einsum("bhpq,bhqr->bhpr", cache["pattern", 1], cache["pattern", 0]).double().numpy()[:, 0]
    got = virtual_pattern(store, "0.0", "1.0")
    assert got.columns == ["first", "second", "q_pos", "k_pos", "mean", "n"]
    lower = np.tril_indices(virtual.shape[1])
    np.testing.assert_allclose(to_matrix(got, "q_pos", "k_pos", "mean")[lower], virtual.mean(0)[lower], atol=1e-6)
    assert set(got["n"]) == {N_EXAMPLES} and got["first"][0] == "L0H0" and got["second"][0] == "L1H0"
    raw = virtual_pattern(store, (0, 0), (1, 0), aggregate=None)
    e, q, k = (raw[c].to_numpy() for c in ("example_id", "q_pos", "k_pos"))
    np.testing.assert_allclose(raw["value"].to_numpy(), virtual[e, q, k], atol=1e-6)
    sums = raw.group_by("example_id", "q_pos").agg(pl.col("value").sum())["value"]
    np.testing.assert_allclose(sums, 1.0, atol=1e-5)  # a product of two patterns is a pattern


def test_circuit_command_kinds_and_refusals(tiny_store, capsys):
    path = str(tiny_store("ln_attn").path)
    assert main(["circuit", path, "--kind", "pos-qk", "--layer", "0", "--head", "2", "--format", "csv"]) == 0
    got = pl.read_csv(io.StringIO(capsys.readouterr().out))
    want = positional_attention(tiny_store("ln_attn"), 0, 2)
    np.testing.assert_allclose(got["prob"], want["prob"], rtol=1e-9)
    assert main(["circuit", path, "--kind", "virtual-pattern", "--layer", "0", "--head", "1", "--to", "1", "2",
                 "--per-example", "--format", "csv", "--limit", "5"]) == 0
    assert pl.read_csv(io.StringIO(capsys.readouterr().out)).height == 5
    for argv, fragment in [
        (["--kind", "virtual-pattern", "--layer", "1", "--head", "0", "--to", "0", "0"], "earlier layer"),
        (["--kind", "pos-qk", "--layer", "0", "--per-example"], "--per-example does not apply"),
        (["--kind", "pos-qk"], "needs --layer"),
        (["--kind", "pos-qk", "--layer", "5"], "layer must be an integer in [0, 2)"),
    ]:
        assert main(["circuit", path, *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.startswith("actstore circuit: error: ") and fragment in err, err
    with pytest.raises(InvalidParameterError, match="key_scale must be one of mean, position"):
        positional_attention(tiny_store("ln_attn"), 0, key_scale="global")
