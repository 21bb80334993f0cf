"""The decomposition's blockwise products refuse operands whose inner widths differ, as `@` and the
einsum before them did: a stored hook_post (or hook_z) wider than its weight by less than a block must
not have its extra columns silently left out of the rebuilt logits (verify would then vouch for values
the weights never produced)."""

from __future__ import annotations

import numpy as np
import pytest

from actstore.store.arch import Arch
from actstore.store.decomposition import answer_residual


def _arch(d_mlp: int) -> Arch:
    return Arch.from_config({"n_layers": 1, "n_heads": 2, "d_model": 16, "d_head": 8, "d_mlp": d_mlp,
                             "attn_only": False, "normalization_type": "LNPre", "d_vocab": 50, "n_ctx": 8})


@pytest.mark.parametrize(("rows", "extra"), [(512, 8), (512, 0), (1024, 3), (700, 0)])
@pytest.mark.parametrize("examples", [1, 80])  # few rows (pieces) and many rows (whole blocks)
def test_a_hook_wider_than_its_weight_is_refused(rows, extra, examples):
    arch = _arch(rows)
    rng = np.random.default_rng(rows + extra)
    w = {arch.W_E: rng.standard_normal((50, 16)), arch.W_pos: rng.standard_normal((8, 16)),
         arch.attn_weight(0, "W_O"): rng.standard_normal((2, 8, 16)), arch.attn_weight(0, "b_O"): np.zeros(16),
         arch.mlp_weight(0, "W_out"): rng.standard_normal((rows, 16)), arch.mlp_weight(0, "b_out"): np.zeros(16)}
    tokens = rng.integers(0, 50, (examples, 1))
    pos = rng.integers(0, 8, (examples, 1))
    acts = {arch.z(0): rng.standard_normal((examples, 1, 2, 8)),
            arch.mlp_post(0): rng.standard_normal((examples, 1, rows + extra))}
    if extra:
        with pytest.raises(ValueError):
            answer_residual(arch, w.__getitem__, tokens, pos, acts.__getitem__)
        return
    got = answer_residual(arch, w.__getitem__, tokens, pos, acts.__getitem__)
    heads = np.einsum("eahd,hdm->eam", acts[arch.z(0)], w[arch.attn_weight(0, "W_O")])
    want = (w[arch.W_E][tokens] + w[arch.W_pos][pos] + heads
            + acts[arch.mlp_post(0)] @ w[arch.mlp_weight(0, "W_out")])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-9)
