"""Tiny random HookedTransformers shaped like the zoo models, processed as the zoo processes them.

Built in tests (never downloaded): the same seed gives the same weights in any process, which
the crash tests rely on (their subprocess rebuilds the model).
"""

from __future__ import annotations

import warnings

import torch

warnings.filterwarnings("ignore", category=DeprecationWarning)
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402

SHAPES = {
    # addition-like: LayerNorm, MLPs, standard positions
    "addition": dict(n_layers=2, n_heads=3, d_model=48, d_head=16, d_mlp=64, n_ctx=16, d_vocab=12,
                     act_fn="gelu", normalization_type="LN"),
    # list_update-like: attention-only, no LayerNorm, shortformer positions
    "list_update": dict(n_layers=2, n_heads=1, d_model=32, d_head=32, n_ctx=16, d_vocab=52, attn_only=True,
                        normalization_type=None, positional_embedding_type="shortformer"),
    # the zoo's addition: attention-only with LayerNorm (TransformerLens keeps an ln2 that never runs)
    "attn_only_ln": dict(n_layers=2, n_heads=3, d_model=48, d_head=16, n_ctx=14, d_vocab=12, d_vocab_out=10,
                         attn_only=True, normalization_type="LN"),
    # brackets-like: bidirectional, LayerNorm, 2 output classes, right-padded inputs
    "brackets": dict(n_layers=3, n_heads=2, d_model=24, d_head=12, d_mlp=24, n_ctx=42, d_vocab=5, d_vocab_out=2,
                     act_fn="relu", normalization_type="LN", attention_dir="bidirectional"),
}


def tiny_model(kind: str = "addition", seed: int = 0) -> HookedTransformer:
    """A processed (fold_ln, center_writing_weights, center_unembed) random model for task `kind`."""
    cfg = HookedTransformerConfig(**SHAPES[kind], seed=seed, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(cfg)
    with torch.no_grad():  # non-zero biases so that the decomposition's bias terms matter
        for name, p in model.named_parameters():
            if name.split(".")[-1].startswith("b_"):
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    model.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    model.eval()
    return model
