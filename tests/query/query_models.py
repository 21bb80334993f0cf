"""Tiny random HookedTransformers for the query tests, and their TransformerLens caches as Chunks.

Built here, never downloaded. `processed=True` applies fold_ln, center_writing_weights and
center_unembed as the zoo does; biases are made non-zero so that every bias term matters.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

warnings.filterwarnings("ignore", category=DeprecationWarning)
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402

from actstore.datasets import get_task  # noqa: E402
from actstore.datasets.base import TaskData  # noqa: E402
from actstore.ingest.hooks import hook_dims  # noqa: E402
from actstore.ingest.model_info import config_dict  # noqa: E402
from actstore.query.chunks import Chunk, at_answers  # noqa: E402
from actstore.query.readout import Weights  # noqa: E402

N_EXAMPLES, CHUNK = 40, 16  # the shared tiny stores of conftest.py: examples, examples per chunk

SHAPES = {
    # LayerNorm + MLPs, standard positions (addition-like but with MLPs); 3 layers so paths go 2 deep
    "ln_mlp": ("addition", dict(n_layers=3, n_heads=3, d_model=48, d_head=16, d_mlp=64, n_ctx=16, d_vocab=12,
                                act_fn="gelu", normalization_type="LN")),
    # attention-only, LayerNorm: the addition zoo model's shape
    "ln_attn": ("addition", dict(n_layers=2, n_heads=3, d_model=48, d_head=16, n_ctx=16, d_vocab=12,
                                 attn_only=True, normalization_type="LN")),
    # attention-only, no LayerNorm, shortformer positions (list_update)
    "noln_attn": ("list_update", dict(n_layers=2, n_heads=1, d_model=32, d_head=32, n_ctx=16, d_vocab=52,
                                      attn_only=True, normalization_type=None,
                                      positional_embedding_type="shortformer")),
    # bidirectional, LayerNorm, MLPs, 2 output classes, right-padded inputs (brackets)
    "bidir": ("brackets", dict(n_layers=3, n_heads=2, d_model=24, d_head=12, d_mlp=24, n_ctx=42, d_vocab=5,
                               d_vocab_out=2, act_fn="relu", normalization_type="LN",
                               attention_dir="bidirectional")),
}


def tiny_model(kind: str, seed: int = 0, processed: bool = True) -> HookedTransformer:
    cfg = HookedTransformerConfig(**SHAPES[kind][1], seed=seed, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.split(".")[-1].startswith("b_"):
                p.normal_(0, 0.2, generator=gen)
            if name.endswith("ln_final.w") or name.endswith(".ln1.w") or name.endswith(".ln2.w"):
                p.uniform_(0.5, 1.5, generator=gen)
            if name.endswith("ln_final.b") or name.endswith(".ln1.b") or name.endswith(".ln2.b"):
                p.normal_(0, 0.2, generator=gen)
    if processed:
        model.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    model.eval()
    return model


def task_data(kind: str, n: int, seed: int = 0) -> TaskData:
    task = SHAPES[kind][0]
    return get_task(task, **({"max_len": 40} if task == "brackets" else {})).generate(n, seed)


@dataclass
class Batch:
    """One forward pass: the model, its cache (float64 copies), the Chunk built from it, the logits."""

    model: HookedTransformer
    data: TaskData
    cache: object
    chunk: Chunk
    logits: np.ndarray  # [example, pos, vocab_out]
    weights: Weights
    counter: np.ndarray  # [example, answer] a counterfactual token (the task's, or a made-up one)


def run_batch(model: HookedTransformer, data: TaskData) -> Batch:
    toks = torch.tensor(data.tokens)
    mask = (torch.arange(toks.shape[1])[None] < torch.tensor(data.lengths)[:, None]).long()
    real = mask.bool()

    def mask_pad_keys(scores, hook):  # as ingest does: TL masks padding only for causal attention
        return scores.masked_fill(~real[:, None, None, :], float("-inf"))

    hooks = [] if model.cfg.attention_dir == "causal" else [
        (f"blocks.{layer}.attn.hook_attn_scores", mask_pad_keys) for layer in range(model.cfg.n_layers)]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        logits, cache = model.run_with_cache(toks, attention_mask=mask)
    d_out = model.cfg.d_vocab_out
    counter = data.counter_tokens if data.counter_tokens is not None else (data.answer_tokens + 1) % d_out
    chunk = chunk_from_cache(cache, data, counter)
    weights = Weights(config_dict(model), {k: v for k, v in model.state_dict().items()})
    return Batch(model, data, cache, chunk, logits.double().numpy(), weights, counter)


def chunk_from_cache(cache, data: TaskData, counter: np.ndarray) -> Chunk:  # type: ignore[no-untyped-def]
    """The Chunk a store of every hook at all positions would give for this batch."""
    chunk = Chunk(example_id=np.arange(len(data)), lengths=data.lengths, tokens=data.tokens,
                  answer_pos=data.answer_pos, answer_tokens=data.answer_tokens, counter_tokens=counter,
                  input_tokens=np.take_along_axis(data.tokens, data.answer_pos, axis=1))
    for name, value in cache.items():
        if not any(name.endswith(s) for s in ("hook_z", "hook_pattern", "hook_post", "hook_scale")):
            continue
        arr = value.numpy()
        dims = hook_dims(name, arr.ndim)
        chunk.full[name] = arr
        chunk.at_answer[name] = at_answers(arr, dims, data.answer_pos)
    return chunk


def at_answer_positions(x: torch.Tensor, answer_pos: np.ndarray) -> np.ndarray:
    """[component, example, pos, ...] -> [component, example, answer, ...] (float64)."""
    x = x.detach().double().numpy()
    return x[:, np.arange(x.shape[1])[:, None], answer_pos]


def tl_logit_attrs(b: Batch, stack: torch.Tensor, target: str) -> np.ndarray:
    """TransformerLens logit_attrs of a [component, example, pos, d_model] stack, at the answers:
    [component, example, answer] (tokens placed at the answer positions, read off there)."""
    e, a = b.data.answer_pos.shape
    width = b.data.tokens.shape[1]
    tok = np.zeros((e, width), dtype=np.int64)
    ctr = np.zeros((e, width), dtype=np.int64)
    rows = np.arange(e)[:, None]
    tok[rows, b.data.answer_pos] = b.data.answer_tokens
    ctr[rows, b.data.answer_pos] = b.counter
    attrs = b.cache.logit_attrs(stack, torch.tensor(tok),
                                incorrect_tokens=torch.tensor(ctr) if target == "diff" else None)
    return at_answer_positions(attrs[..., None], b.data.answer_pos)[..., 0]
