"""Weight processing (fold_ln, center_writing_weights, center_unembed, fold_value_biases) keeps log-probs."""

from __future__ import annotations

import pytest
import torch

from actstore.models.backend import build_model, load_weights


@pytest.mark.parametrize("d_mlp", [32, 48])  # 32 = d_model: the square W_in TransformerLens 3.9 folds wrongly
def test_processing_keeps_log_probs(d_mlp):
    config = dict(n_layers=2, n_heads=2, d_model=32, d_head=16, d_mlp=d_mlp, n_ctx=12, d_vocab=20, act_fn="relu",
                  normalization_type="LN", seed=0)
    torch.manual_seed(0)
    raw = build_model(config)
    state = {k: v.clone() for k, v in raw.state_dict().items()}
    for k in state:  # LayerNorm weights far from (1, 0) and non-zero biases, so every fold matters
        if k.endswith((".w", ".b")) and ("ln" in k):
            state[k] = torch.randn_like(state[k]) * 0.5 + (1.0 if k.endswith(".w") else 0.0)
        elif ".b_" in k:
            state[k] = torch.randn_like(state[k]) * 0.1
    load_weights(raw, state, process=False)
    processed = build_model(config)
    record = load_weights(processed, state, process=True)
    assert record["fold_ln"] and processed.cfg.normalization_type == "LNPre"
    tokens = torch.randint(0, 20, (4, 12))
    with torch.no_grad():
        a, b = raw(tokens).log_softmax(-1), processed(tokens).log_softmax(-1)
    torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
