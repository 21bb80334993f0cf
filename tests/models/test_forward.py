"""Padding is masked: outputs at real positions do not depend on the pad tokens."""

from __future__ import annotations

import torch

from actstore.models.backend import build_model
from actstore.models.forward import concat_batches, gather_answers, masked_logits
from actstore.datasets import get_task


def tiny(attention_dir: str):
    return build_model(dict(n_layers=2, n_heads=2, d_model=16, d_head=8, d_mlp=16, n_ctx=12, d_vocab=7,
                            d_vocab_out=3, act_fn="relu", normalization_type="LN", attention_dir=attention_dir,
                            seed=1))


def test_bidirectional_pad_keys_masked():
    model = tiny("bidirectional")
    torch.manual_seed(0)
    tokens = torch.randint(0, 7, (6, 12))
    lengths = torch.tensor([12, 9, 5, 3, 7, 1])
    other = tokens.clone()
    pad = torch.arange(12)[None] >= lengths[:, None]
    other[pad] = (tokens[pad] + 3) % 7  # different pad tokens
    with torch.no_grad():
        a = masked_logits(model, tokens, lengths)
        b = masked_logits(model, other, lengths)
        torch.testing.assert_close(a[:, 0], b[:, 0], atol=1e-6, rtol=0)
        # and each example alone, unpadded, gives the same position-0 output
        for i, n in enumerate(lengths.tolist()):
            torch.testing.assert_close(model(tokens[i : i + 1, :n])[0, 0], a[i, 0], atol=1e-5, rtol=0)
        # TransformerLens alone does not mask pad keys of bidirectional attention (why the hook exists)
        mask = (~pad).long()
        raw_a, raw_b = model(tokens, attention_mask=mask), model(other, attention_mask=mask)
    assert (raw_a[1:, 0] - raw_b[1:, 0]).abs().max() > 1e-3


def test_causal_right_padding_matches_unpadded():
    model = tiny("causal")
    torch.manual_seed(1)
    tokens = torch.randint(0, 7, (4, 10))
    lengths = torch.tensor([10, 6, 3, 8])
    with torch.no_grad():
        logits = masked_logits(model, tokens, lengths)
        for i, n in enumerate(lengths.tolist()):
            torch.testing.assert_close(model(tokens[i : i + 1, :n])[0], logits[i, :n], atol=1e-5, rtol=0)


def test_concat_batches_pads_mixed_tasks():
    ioi = get_task("ioi").generate(5, 3)
    days = get_task("days").generate(4, 3)
    b = concat_batches([ioi, days], pad_id=ioi.pad_id)
    assert b.tokens.shape == (9, max(ioi.tokens.shape[1], days.tokens.shape[1]))
    assert b.tokens[5:, : days.tokens.shape[1]].tolist() == days.tokens.tolist()
    assert (b.tokens[5:, days.tokens.shape[1]:] == ioi.pad_id).all()
    assert b.answer_tokens[:, 0].tolist() == ioi.answer_tokens[:, 0].tolist() + days.answer_tokens[:, 0].tolist()
    logits = torch.randn(9, b.tokens.shape[1], 5)
    got = gather_answers(logits, b.answer_pos)
    assert got.shape == (9, 1, 5)
    assert torch.equal(got[7, 0], logits[7, int(days.answer_pos[2, 0])])
