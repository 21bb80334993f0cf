"""Query-shaped tables computed with numpy from a tiny real TransformerLens model on addition.

The charts tests build their inputs here, in the shapes of the actstore.query contract, so the
builders are checked against values computed independently of them. (Only tests import
transformer_lens; actstore.charts never does.)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import polars as pl
import pytest
import torch

from actstore.datasets import get_task


@dataclass
class Run:
    """Arrays of one forward pass and the tidy tables derived from them."""

    examples: pl.DataFrame   # example_id + labels
    answer_pos: np.ndarray   # [example, answer]
    answer_tok: np.ndarray   # [example, answer]
    head_dla: np.ndarray     # [example, answer, layer, head]
    mlp_dla: np.ndarray      # [example, answer, layer]
    pattern: np.ndarray      # [example, layer, head, q_pos, k_pos]
    post: np.ndarray         # [example, layer, pos, d_mlp]
    neuron_dir: np.ndarray   # [layer, d_mlp]: W_out @ W_U[:, answer 0 token] is per example, so unembed of token 0
    lens: np.ndarray         # [example, answer, layer+1]: correct logit of resid_pre per layer + final resid
    logits_correct: np.ndarray  # [example, answer] bool: argmax == answer
    roles: list[str]
    W_E: np.ndarray
    W_U: np.ndarray
    W_V: np.ndarray          # [layer, head, d_model, d_head]
    W_O: np.ndarray          # [layer, head, d_head, d_model]
    dla: pl.DataFrame
    attention: pl.DataFrame
    neurons: pl.DataFrame
    logit_lens: pl.DataFrame
    outputs: pl.DataFrame


@pytest.fixture(scope="session")
def run() -> Run:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=2, n_heads=3, d_model=24, d_head=8, d_mlp=32, d_vocab=12, n_ctx=16,
                                  act_fn="relu", normalization_type=None, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(cfg).eval()
    data = get_task("addition").generate(n=60, seed=1)
    tokens = torch.tensor(data.tokens)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    n, L, H = len(data), cfg.n_layers, cfg.n_heads
    ans_pos, ans_tok = data.answer_pos, data.answer_tokens
    ex_idx = np.arange(n)[:, None]
    W_U = model.W_U.detach().numpy()
    W_O = model.W_O.detach().numpy()
    unembed = W_U[:, ans_tok]                           # [d_model, example, answer]
    unembed = np.moveaxis(unembed, 0, -1)               # [example, answer, d_model]

    head_dla = np.zeros((n, ans_pos.shape[1], L, H))
    mlp_dla = np.zeros((n, ans_pos.shape[1], L))
    post, pattern = [], []
    for layer in range(L):
        z = cache[f"blocks.{layer}.attn.hook_z"].numpy()[ex_idx, ans_pos]   # [example, answer, head, d_head]
        out = np.einsum("eahd,hdm->eahm", z, W_O[layer])                    # [example, answer, head, d_model]
        head_dla[:, :, layer] = np.einsum("eahm,eam->eah", out, unembed)
        mlp_out = cache[f"blocks.{layer}.hook_mlp_out"].numpy()[ex_idx, ans_pos]
        mlp_dla[:, :, layer] = np.einsum("eam,eam->ea", mlp_out, unembed)
        post.append(cache[f"blocks.{layer}.mlp.hook_post"].numpy())
        pattern.append(cache[f"blocks.{layer}.attn.hook_pattern"].numpy())
    post_a = np.stack(post, axis=1)        # [example, layer, pos, d_mlp]
    pattern_a = np.stack(pattern, axis=1)  # [example, layer, head, q, k]
    lens = np.stack([
        np.einsum("eam,eam->ea", cache[f"blocks.{layer}.hook_resid_pre"].numpy()[ex_idx, ans_pos], unembed)
        for layer in range(L)
    ] + [np.einsum("eam,eam->ea", cache[f"blocks.{L - 1}.hook_resid_post"].numpy()[ex_idx, ans_pos], unembed)], axis=-1)
    neuron_dir = np.einsum("lnm,m->ln", model.W_out.detach().numpy(), W_U[:, 0])
    correct = logits.numpy()[ex_idx, ans_pos].argmax(-1) == ans_tok

    examples = data.labels.with_row_index("example_id").with_columns(pl.col("example_id").cast(pl.Int64))
    roles = data.roles[0].tolist()

    # dla: example_id, answer_idx, answer_pos, target, component, layer, head, value
    rows = []
    for e in range(n):
        for a in range(ans_pos.shape[1]):
            for layer in range(L):
                for h in range(H):
                    rows.append((e, a, int(ans_pos[e, a]), "correct", f"L{layer}H{h}", layer, h,
                                 float(head_dla[e, a, layer, h])))
                rows.append((e, a, int(ans_pos[e, a]), "correct", f"mlp{layer}", layer, None,
                             float(mlp_dla[e, a, layer])))
    dla = pl.DataFrame(rows, orient="row", schema={
        "example_id": pl.Int64, "answer_idx": pl.Int64, "answer_pos": pl.Int64, "target": pl.String,
        "component": pl.String, "layer": pl.Int64, "head": pl.Int64, "value": pl.Float64})

    # attention (raw, causal: only k <= q)
    e_i, l_i, h_i, q_i, k_i = np.nonzero(np.ones_like(pattern_a, dtype=bool))
    keep = k_i <= q_i
    e_i, l_i, h_i, q_i, k_i = e_i[keep], l_i[keep], h_i[keep], q_i[keep], k_i[keep]
    role_arr = np.array(roles)
    attention = pl.DataFrame({
        "example_id": e_i.astype(np.int64), "layer": l_i.astype(np.int64), "head": h_i.astype(np.int64),
        "q_pos": q_i.astype(np.int64), "k_pos": k_i.astype(np.int64),
        "q_role": role_arr[q_i], "k_role": role_arr[k_i],
        "value": pattern_a[e_i, l_i, h_i, q_i, k_i].astype(np.float64),
    })

    # neurons at the first answer position: projection onto W_out @ W_U[:, 0]
    p0 = ans_pos[:, 0]
    act = post_a[np.arange(n), :, p0]                    # [example, layer, d_mlp]
    proj = act * neuron_dir[None]                        # [example, layer, d_mlp]
    e_i, l_i, n_i = np.nonzero(np.ones_like(act, dtype=bool))
    neurons = pl.DataFrame({
        "example_id": e_i.astype(np.int64), "pos": p0[e_i].astype(np.int64), "layer": l_i.astype(np.int64),
        "neuron": n_i.astype(np.int64), "activation": act[e_i, l_i, n_i].astype(np.float64),
        "projection": proj[e_i, l_i, n_i].astype(np.float64),
    })

    stages = [(layer, "resid_pre") for layer in range(L)] + [(None, "final")]
    rows = [(e, a, int(ans_pos[e, a]), "correct", stages[s][0], stages[s][1], float(lens[e, a, s]))
            for e in range(n) for a in range(ans_pos.shape[1]) for s in range(len(stages))]
    logit_lens = pl.DataFrame(rows, orient="row", schema={
        "example_id": pl.Int64, "answer_idx": pl.Int64, "answer_pos": pl.Int64, "target": pl.String,
        "layer": pl.Int64, "stage": pl.String, "value": pl.Float64})

    e_i, a_i = np.nonzero(np.ones_like(correct))
    logp = torch.log_softmax(logits, -1).numpy()[ex_idx, ans_pos, ans_tok]  # [example, answer]
    outputs = pl.DataFrame({
        "example_id": e_i.astype(np.int64), "answer_idx": a_i.astype(np.int64),
        "correct": correct[e_i, a_i], "loss": -logp[e_i, a_i].astype(np.float64),
    })
    return Run(examples=examples, answer_pos=ans_pos, answer_tok=ans_tok, head_dla=head_dla, mlp_dla=mlp_dla,
               pattern=pattern_a, post=post_a, neuron_dir=neuron_dir, lens=lens, logits_correct=correct,
               roles=roles, W_E=model.W_E.detach().numpy(), W_U=W_U, W_V=model.W_V.detach().numpy(), W_O=W_O,
               dla=dla, attention=attention, neurons=neurons, logit_lens=logit_lens, outputs=outputs)



@pytest.fixture(scope="session")
def stores(tmp_path_factory):
    """task -> a small real store of that task (built on first use, shared by the session)."""
    from stores import make_store

    root = tmp_path_factory.mktemp("stores")
    cache: dict = {}

    def get(task: str):
        if task not in cache:
            cache[task] = make_store(task, root)
        return cache[task]

    return get
