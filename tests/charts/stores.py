"""Small real stores of every task for the report and CLI tests: tiny random processed models
(built here, never downloaded) ingested with `actstore.ingest` into a temporary directory."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

TASKS = ("addition", "brackets", "list_update", "ioi", "days")

SHAPES = {
    "addition": dict(n_layers=2, n_heads=3, d_model=24, d_head=8, n_ctx=16, d_vocab=12, attn_only=True,
                     normalization_type="LN"),
    "brackets": dict(n_layers=3, n_heads=2, d_model=24, d_head=12, d_mlp=24, n_ctx=42, d_vocab=5, d_vocab_out=2,
                     act_fn="relu", normalization_type="LN", attention_dir="bidirectional"),
    "list_update": dict(n_layers=2, n_heads=1, d_model=32, d_head=32, n_ctx=16, d_vocab=52, attn_only=True,
                        normalization_type=None, positional_embedding_type="shortformer"),
    "ioi": dict(n_layers=2, n_heads=4, d_model=32, d_head=8, d_mlp=64, n_ctx=32, act_fn="gelu",
                normalization_type="LN"),
    "days": dict(n_layers=2, n_heads=4, d_model=32, d_head=8, d_mlp=64, n_ctx=32, act_fn="gelu",
                 normalization_type="LN"),
}


def tiny_model(task: str):
    """A processed (fold_ln, center_writing_weights, center_unembed) random model shaped for `task`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        tokenizer = None
        shape = dict(SHAPES[task])
        if task in ("ioi", "days"):
            from actstore.datasets.wordtok import word_tokenizer

            tokenizer = word_tokenizer()
            shape["d_vocab"] = len(tokenizer)
        model = HookedTransformer(HookedTransformerConfig(**shape, seed=0, device="cpu"), tokenizer=tokenizer)
    if shape.get("normalization_type") == "LN" or not shape.get("attn_only"):
        model.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    return model.eval()


def make_store(task: str, root: Path, n: int = 64):
    """Ingest `n` examples of `task` through its tiny model into `root/task`; returns the open store."""
    import actstore

    torch.manual_seed(0)
    model = tiny_model(task)
    hooks = None
    if model.cfg.attn_only and model.cfg.normalization_type:
        # attention-only models with LayerNorm list blocks.L.ln2 hooks that never fire: name the hooks
        hooks = ["z", "pattern", "ln_final.hook_scale",
                 *(f"blocks.{i}.ln1.hook_scale" for i in range(model.cfg.n_layers))]
    return actstore.ingest(task, model, n=n, seed=0, out=root / task, quiet=True, chunk=32, hooks=hooks)
