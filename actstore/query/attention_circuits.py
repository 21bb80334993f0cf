"""Attention circuits that need a few stored activations: positional QK with the mean query
(seed 003) and the virtual attention pattern of two composed heads (seed 000).

    positional_attention(store, layer, heads=None, key_scale='mean', constant_tokens=False, where=None)
        -> layer, head, q_pos, k_pos, score, prob

Seed 003's L0 QK circuit: the mean query of each position (over the examples; read from a stored
hook_q, else rebuilt as ln1(resid_pre) @ W_Q + b_Q, query/residual.py) against keys made of the
positional embeddings alone, folded through the head's LayerNorm: key_in[k] = centre(W_pos[k]) / s
(times ln1's weight plus bias where they were not folded), s the mean stored ln1 scale over every
real position (key_scale='mean', as the seed) or over position k (key_scale='position');
constant_tokens=True adds, at a position where every example has the same token (addition's '+'
and '='), that token's embedding (the residual there; the seed averaged the two instead).
Shortformer models add W_pos after the LayerNorm, to queries and keys, as TransformerLens does.
score = q . (key_in @ W_K + b_K) / attn_scale (b_K shifts each query row by a constant, so the
pattern is the seed's); prob: softmax over the keys, causal models masking keys after the query
(their score is null, prob 0). Positions run over the store's width.

    virtual_pattern(store, first, second, aggregate='mean', where=None)
        -> first, second, q_pos, k_pos, mean, n          (aggregate='mean')
        -> example_id, first, second, q_pos, k_pos, value (aggregate=None)

The virtual attention pattern A2 A1 of head `first` (earlier layer) composed into head `second`:
virtual[q, k] = sum_m pattern2[q, m] pattern1[m, k], per example from the stored patterns (the
first's at every query position; the second's at every position or at the answers). Rows cover
real positions (and k <= q in causal models); the mean is over the examples where (q, k) is real.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from actstore.errors import InvalidParameterError, UnknownHookError
from actstore.query.chunks import example_arrays, stream
from actstore.query.directions import parse_head
from actstore.query.readout import Weights
from actstore.query.residual import ResidualPlan
from actstore.query.selectors import example_filter
from actstore.store.arch import Arch
from actstore.store.reader import Store

KEY_SCALES = ("mean", "position")


def attn_scale(store: Store, layer: int) -> float:
    """What TransformerLens divides a head's scores by in `layer`."""
    cfg = store.config
    scale = float(cfg.get("attn_scale") or np.sqrt(store.arch.d_head)) if cfg.get("use_attn_scale", True) else 1.0
    return scale * (layer + 1) if cfg.get("scale_attn_by_inverse_layer_idx") else scale


def _heads(store: Store, heads: int | Sequence[int] | None) -> list[int]:
    n = store.arch.n_heads
    items = list(range(n)) if heads is None else [heads] if isinstance(heads, (int, np.integer)) else list(heads)
    if not items or any(isinstance(h, bool) or not isinstance(h, (int, np.integer)) or not 0 <= h < n for h in items):
        raise InvalidParameterError(f"heads={heads!r}: expected heads in [0, {n}) (an int or a list)")
    return [int(h) for h in items]


def mean_queries(store: Store, layer: int, where: pl.Expr | Mapping[str, Any] | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(mean query [pos, head, d_head], examples per position [pos], mean ln1 scale per position [pos]
    (ones without LayerNorm), per-position token if constant over the examples else -1 [pos])."""
    arch, width = store.arch, int(store.manifest.width)
    weights = Weights.from_store(store)
    arrays = example_arrays(store)
    keep = example_filter(store.examples, where)
    q_hook = f"blocks.{layer}.attn.hook_q"
    stored_q = q_hook in store.hooks and store.hook_info(q_hook).positions == "all"
    plan = None if stored_q else ResidualPlan.build(store, "ln1", layer, require_norm=False)
    hooks = [q_hook] if stored_q else list(plan.full_hooks)  # type: ignore[union-attr]
    scale_hook = Arch.ln_scale(layer, "ln1") if arch.norm is not None else None
    if scale_hook is not None and scale_hook not in hooks:
        hooks.append(scale_hook)
    for name in hooks:
        if name not in store.hooks:
            raise UnknownHookError(f"the mean query of layer {layer} needs {name!r}, which store {store.path} does "
                                   "not hold; re-ingest with --hooks default")
    d_in = arch.d_head * arch.n_heads if stored_q else arch.d_model
    total, count, scales = np.zeros((width, d_in)), np.zeros(width), np.zeros(width)
    first_tok, same = np.full(width, -1, dtype=np.int64), np.ones(width, dtype=bool)
    for chunk in stream(store, [], hooks, tokens=True, examples=arrays, label=f"mean query L{layer}"):
        real = np.arange(width)[None, :] < chunk.lengths[:, None]
        if keep is not None:
            real &= keep[chunk.start:chunk.stop, None]
        e, p = np.nonzero(real)
        if not e.size:
            continue
        if stored_q:
            x = chunk.full[q_hook][e, p].astype(np.float64).reshape(e.size, -1)
        else:
            assert plan is not None
            x = plan.output(weights, chunk, e, p, plan.rows(weights, chunk, e, p))
        np.add.at(total, p, x)
        np.add.at(count, p, 1)
        if scale_hook is not None:
            np.add.at(scales, p, chunk.full[scale_hook][e, p, 0].astype(np.float64))
        assert chunk.tokens is not None
        tok = chunk.tokens[e, p]
        unset = first_tok[p] < 0
        first_tok[p[unset]] = tok[unset]
        same &= ~np.isin(np.arange(width), p[tok != first_tok[p]])
    if not count.any():
        raise InvalidParameterError(f"no example of store {store.path} is selected (where=); nothing to average")
    seen = np.maximum(count, 1)[:, None]
    mean_in = total / seen
    if stored_q:
        q = mean_in.reshape(width, arch.n_heads, arch.d_head)
    else:
        if arch.pos_embed == "shortformer":
            mean_in = mean_in + weights.param(Arch.W_pos)[:width]
        w_q = weights.f64(Arch.attn_weight(layer, "W_Q"))  # [head, d_model, d_head]
        b_q = weights.maybe(Arch.attn_weight(layer, "b_Q"))
        q = np.einsum("pm,hmd->phd", mean_in, w_q) + (0.0 if b_q is None else b_q[None])
    q[count == 0] = np.nan
    mean_scale = np.where(count > 0, scales / np.maximum(count, 1), np.nan) if scale_hook else np.ones(width)
    return q, count.astype(np.int64), mean_scale, np.where(same & (count > 0), first_tok, -1)


def positional_attention(store: Store, layer: int, heads: int | Sequence[int] | None = None,
                         key_scale: str = "mean", constant_tokens: bool = False,
                         where: pl.Expr | Mapping[str, Any] | None = None) -> pl.DataFrame:
    """Seed 003's positional QK circuit with the mean query (see the module doc)."""
    arch = store.arch
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < arch.n_layers:
        raise InvalidParameterError(f"layer must be an integer in [0, {arch.n_layers}), got {layer!r}")
    if key_scale not in KEY_SCALES:
        raise InvalidParameterError(f"key_scale must be one of {', '.join(KEY_SCALES)}, got {key_scale!r}")
    if arch.pos_embed not in ("standard", "shortformer"):
        raise InvalidParameterError(f"this model has no positional embedding matrix ({arch.pos_embed} positions)")
    heads_ = _heads(store, heads)
    layer = int(layer)
    weights = Weights.from_store(store)
    q, count, scale, tokens = mean_queries(store, layer, where)
    width = q.shape[0]
    w_pos = weights.param(Arch.W_pos)[:width].astype(np.float64)
    resid = w_pos.copy() if arch.pos_in_resid else np.zeros_like(w_pos)
    if constant_tokens:
        const = tokens >= 0
        resid[const] += weights.param(Arch.W_E)[tokens[const]]
    if arch.norm is not None:
        s = np.nanmean(np.where(count > 0, scale, np.nan)) if key_scale == "mean" else scale
        key_in = (weights.center(resid) if arch.layer_norm else resid) / np.reshape(s, (-1, 1))
        w, b = weights.ln_weight(layer, "ln1")
        key_in = key_in * (1.0 if w is None else w) + (0.0 if b is None else b)
    else:
        key_in = resid
    if arch.pos_embed == "shortformer":
        key_in = key_in + w_pos
    w_k = weights.f64(Arch.attn_weight(layer, "W_K"))
    b_k = weights.maybe(Arch.attn_weight(layer, "b_K"))
    k = np.einsum("pm,hmd->phd", key_in, w_k) + (0.0 if b_k is None else b_k[None])  # [k_pos, head, d_head]
    scores = np.einsum("qhd,khd->hqk", q, k) / attn_scale(store, layer)  # [head, q, k]
    masked = np.triu(np.ones((width, width), dtype=bool), 1) if arch.causal else np.zeros((width, width), bool)
    masked = masked | (count == 0)[:, None]
    logits = np.where(masked[None], -np.inf, scores)
    top = logits.max(-1, keepdims=True)  # -inf where a whole row is masked
    ex = np.exp(logits - np.where(np.isfinite(top), top, 0.0))
    den = ex.sum(-1, keepdims=True)
    prob = np.where(den > 0, ex / np.where(den > 0, den, 1.0), 0.0)
    scores = np.where(masked[None], np.nan, scores)
    sel = np.asarray(heads_)
    n = len(heads_) * width * width
    return pl.DataFrame({
        "layer": np.full(n, layer, dtype=np.int64),
        "head": np.repeat(sel, width * width).astype(np.int64),
        "q_pos": np.tile(np.repeat(np.arange(width), width), len(heads_)).astype(np.int64),
        "k_pos": np.tile(np.arange(width), width * len(heads_)).astype(np.int64),
        "score": scores[sel].ravel(), "prob": prob[sel].ravel()}).with_columns(pl.col("score").fill_nan(None))


def virtual_pattern(store: Store, first: Any, second: Any, aggregate: str | None = "mean",
                    where: pl.Expr | Mapping[str, Any] | None = None) -> pl.DataFrame:
    """The virtual attention pattern of head `first` composed into the later head `second` (module doc)."""
    arch = store.arch
    (l1, h1) = parse_head(first, arch.n_layers, arch.n_heads, what="first")
    (l2, h2) = parse_head(second, arch.n_layers, arch.n_heads, what="second")
    if l1 >= l2:
        raise InvalidParameterError(f"virtual_pattern: the first head ({l1}.{h1}) must be in an earlier layer than "
                                    f"the second ({l2}.{h2})")
    if aggregate not in (None, "mean"):
        raise InvalidParameterError(f"aggregate must be 'mean' or None, got {aggregate!r}")
    p1, p2 = Arch.pattern(l1), Arch.pattern(l2)
    for name in (p1, p2):
        if name not in store.hooks:
            raise UnknownHookError(f"virtual_pattern needs {name!r}, which store {store.path} does not hold; "
                                   "re-ingest with --hooks default")
    if store.hook_info(p1).positions != "all":
        raise InvalidParameterError(f"virtual_pattern needs {p1!r} at every query position (the first head is read "
                                    f"where the second attends); re-ingest with --hooks {p1}:all")
    at_answers = store.hook_info(p2).positions != "all"
    width = int(store.manifest.width)
    arrays = example_arrays(store)
    keep = example_filter(store.examples, where)
    label = {"first": f"L{l1}H{h1}", "second": f"L{l2}H{h2}"}
    total, count = np.zeros((width, width)), np.zeros((width, width), dtype=np.int64)
    frames = []
    for chunk in stream(store, [], [p1, p2], examples=arrays, label="virtual pattern"):
        a1 = chunk.full[p1][:, h1].astype(np.float64)  # [e, m, k]
        a2 = chunk.full[p2][:, h2].astype(np.float64)  # [e, q or answer, m]
        v = np.einsum("eqm,emk->eqk", a2, a1)
        q_pos = chunk.answer_pos if at_answers else np.broadcast_to(np.arange(width), (len(chunk), width))
        ok = (q_pos[:, :, None] < chunk.lengths[:, None, None]) & (np.arange(width)[None, None, :]
                                                                     < chunk.lengths[:, None, None])
        if arch.causal:
            ok &= np.arange(width)[None, None, :] <= q_pos[:, :, None]
        if keep is not None:
            ok &= keep[chunk.start:chunk.stop, None, None]
        e, qi, k = np.nonzero(ok)
        q = q_pos[e, qi]
        if aggregate == "mean":
            np.add.at(total, (q, k), v[e, qi, k])
            np.add.at(count, (q, k), 1)
        else:
            frames.append(pl.DataFrame({"example_id": chunk.example_id[e].astype(np.int64), **{
                c: [s] * e.size for c, s in label.items()}, "q_pos": q.astype(np.int64), "k_pos": k.astype(np.int64),
                "value": v[e, qi, k]}))
    if aggregate is None:
        schema = {"example_id": pl.Int64, "first": pl.String, "second": pl.String, "q_pos": pl.Int64,
                  "k_pos": pl.Int64, "value": pl.Float64}
        return pl.concat(frames) if frames else pl.DataFrame(schema=schema)
    q, k = np.nonzero(count)
    return pl.DataFrame({**{c: [s] * q.size for c, s in label.items()}, "q_pos": q.astype(np.int64),
                         "k_pos": k.astype(np.int64), "mean": total[q, k] / count[q, k], "n": count[q, k]})
