"""decomposition.decomposed_logits against the sum of components written out plainly, in float64.

The products run in pieces (weight rows converted to float64 a block at a time; with few rows, pieces
small enough for one BLAS thread), so the test covers few rows (the ingest probe's) and many rows
(verify's), at widths where the pieces split each product.
"""

from __future__ import annotations

import numpy as np
import pytest

from actstore.store.arch import Arch
from actstore.store.decomposition import decomposed_logits


def _arch(mlp: bool) -> Arch:
    return Arch.from_config({"n_layers": 2, "n_heads": 3, "d_model": 96, "d_head": 40, "d_mlp": 1100 if mlp else None,
                             "attn_only": not mlp, "normalization_type": "LNPre", "d_vocab": 700, "n_ctx": 16})


def _plain(arch: Arch, w: dict[str, np.ndarray], tokens: np.ndarray, pos: np.ndarray,
           acts: dict[str, np.ndarray]) -> np.ndarray:
    """[example, answer, vocab] logits - b_U from each component, one float64 einsum at a time."""
    f = {k: v.astype(np.float64) for k, v in w.items()}
    resid = f[arch.W_E][tokens] + f[arch.W_pos][pos]
    for layer in arch.layers:
        resid = resid + np.einsum("eahd,hdm->eam", acts[arch.z(layer)], f[arch.attn_weight(layer, "W_O")])
        resid = resid + f[arch.attn_weight(layer, "b_O")]
        if arch.has_mlp:
            resid = resid + np.einsum("ean,nm->eam", acts[arch.mlp_post(layer)], f[arch.mlp_weight(layer, "W_out")])
            resid = resid + f[arch.mlp_weight(layer, "b_out")]
    resid = resid - resid.mean(-1, keepdims=True)
    return np.einsum("eam,mv->eav", resid / acts[arch.final_scale], f[arch.W_U])


@pytest.mark.parametrize("examples", [1, 4, 80])
@pytest.mark.parametrize("mlp", [True, False])
def test_rebuilt_logits_equal_the_plain_sum_of_components(examples, mlp):
    arch = _arch(mlp)
    rng = np.random.default_rng(examples)
    d, h, dh, dm, v = arch.d_model, arch.n_heads, arch.d_head, arch.d_mlp or 0, arch.d_vocab
    w = {arch.W_E: rng.standard_normal((v, d)), arch.W_pos: rng.standard_normal((16, d)),
         arch.W_U: rng.standard_normal((d, v))}
    for layer in arch.layers:
        w[arch.attn_weight(layer, "W_O")] = rng.standard_normal((h, dh, d))
        w[arch.attn_weight(layer, "b_O")] = rng.standard_normal(d)
        if mlp:
            w[arch.mlp_weight(layer, "W_out")] = rng.standard_normal((dm, d))
            w[arch.mlp_weight(layer, "b_out")] = rng.standard_normal(d)
    w = {k: a.astype(np.float32) for k, a in w.items()}
    answers = 2
    tokens = rng.integers(0, v, (examples, answers))
    pos = rng.integers(0, 16, (examples, answers))
    acts = {arch.final_scale: rng.uniform(0.5, 2.0, (examples, answers, 1))}
    for layer in arch.layers:
        acts[arch.z(layer)] = rng.standard_normal((examples, answers, h, dh))
        if mlp:
            acts[arch.mlp_post(layer)] = rng.standard_normal((examples, answers, dm))
    want = _plain(arch, w, tokens, pos, acts)
    got = decomposed_logits(arch, w.__getitem__, list(w), tokens, pos, acts.__getitem__)
    assert got.shape == (examples, answers, v) and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-9)
    picked = decomposed_logits(arch, w.__getitem__, list(w), tokens, pos, acts.__getitem__, vocab=tokens)
    np.testing.assert_allclose(picked, np.take_along_axis(want, tokens[..., None], -1)[..., 0], rtol=1e-12, atol=1e-9)
    # one wrong weight in the last row is seen: the pieces cover every row of every product
    if mlp:
        w[arch.mlp_weight(1, "W_out")][dm - 1, 0] += 1.0  # one entry (a whole row's shift the LayerNorm removes)
        moved = decomposed_logits(arch, w.__getitem__, list(w), tokens, pos, acts.__getitem__)
        assert np.abs(moved - want).max() > 1e-3
