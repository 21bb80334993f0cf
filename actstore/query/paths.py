"""Path attribution through a later head (seed 003's `get_dla`, for any head of layer >= 1).

A head's output at an answer position q is a pattern-weighted sum over key positions k of its
values, and its input at k is the residual stream there, itself a sum of earlier components:

    head(q) . u = sum_k pattern[q, k] * (norm1(resid[k]) @ W_V + b_V) @ W_O . u
               = sum over sources s of  sum_k pattern[q, k] * s[k] . d / scale1[k]   +   b_V term
    d = centre(W_V) @ W_O @ u                       [d_model]

with scale1 the stored ln1 scale of that layer at each key. Sources are the components written
before the head's layer: embed, pos_embed (standard positions), every earlier head L{l'}H{h'},
attn_bias{l'} (b_O), mlp{l'} (with b_out); 'b_V' is the head's own value bias (rows of the
pattern sum to one). The terms of a head sum exactly to its direct attribution.
"""

from __future__ import annotations


import numpy as np

from actstore.query.chunks import Chunk
from actstore.query.readout import Readout, Target, Weights
from actstore.store.arch import Arch


def value_weights(weights: Weights, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """(W_V [head, d_model, d_head] with ln1's weight folded in and centred for LN, b_V [head, d_head]).

    centring the read-in over d_model makes x @ W_V equal (x - mean x) @ W_V, LayerNorm's centring.
    """
    w_v = weights.f64(Arch.attn_weight(layer, "W_V"))
    b_v = weights.maybe(Arch.attn_weight(layer, "b_V"))
    b_v = np.zeros(w_v.shape[::2]) if b_v is None else b_v
    ln_w, ln_b = weights.ln_weight(layer, "ln1")
    if ln_b is not None:
        b_v = b_v + np.einsum("m,hmd->hd", ln_b, w_v)
    if ln_w is not None:
        w_v = w_v * ln_w[None, :, None]
    return weights.center(w_v, axis=1), b_v


def sources(weights: Weights, layer: int) -> list[str]:
    """Names of the components a head of `layer` can carry, in residual order, then 'b_V'."""
    out = ["embed"] + (["pos_embed"] if weights.arch.pos_in_resid else [])
    for earlier in range(layer):
        out += [f"L{earlier}H{h}" for h in range(weights.arch.n_heads)] + [f"attn_bias{earlier}"]
        if weights.arch.has_mlp:
            out.append(f"mlp{earlier}")
    return out + ["b_V"]


def _read_in(weights: Weights, readout: Readout, layer: int) -> np.ndarray:
    """[token, head, d_model]: d = centre(W_V) @ (W_O @ u) for each head of `layer`."""
    def make() -> np.ndarray:
        w_v, _ = value_weights(weights, layer)
        return np.einsum("hmd,thd->thm", w_v, readout.head(layer))
    return readout.table(("path_read_in", layer), make)


def _through(weights: Weights, readout: Readout, layer: int, name: str, spec: str, w: np.ndarray) -> np.ndarray:
    """A per-token table np.einsum(spec, d, w) of the read-in directions d of `layer` (cached on the readout)."""
    return readout.table(("path", layer, name), lambda: np.einsum(spec, _read_in(weights, readout, layer), w))


def key_weights(weights: Weights, chunk: Chunk, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """(pattern [e, head, answer, key] float64 with padding keys zeroed, pattern / ln1 scale at each key)."""
    pattern = chunk.at_answer[Arch.pattern(layer)].astype(np.float64)
    width = pattern.shape[-1]
    real = np.arange(width)[None, :] < chunk.lengths[:, None]  # [e, key]
    pattern = np.where(real[:, None, None, :], pattern, 0.0)
    if weights.arch.norm is None:
        return pattern, pattern
    scale = chunk.full[Arch.ln_scale(layer, "ln1")][:, :width, 0].astype(np.float64)  # [e, key]
    return pattern, pattern / np.where(real, scale, 1.0)[:, None, None, :]


def path_attribution(weights: Weights, readout: Readout, chunk: Chunk, target: Target,
                     layer: int) -> tuple[np.ndarray, list[str]]:
    """Terms of each head of `layer` by source: ([example, answer, head, source] float64, source names).

    Not yet divided by the final LayerNorm scale (the caller divides every component alike).
    """
    pattern, attn = key_weights(weights, chunk, layer)  # [e, head, answer, key]
    width = attn.shape[-1]
    d = target.take(_read_in(weights, readout, layer))  # [e, a, head, d_model]
    terms: list[np.ndarray] = []  # each [e, a, head]

    def through_vectors(x: np.ndarray) -> np.ndarray:  # x: [e, key, d_model] or [key, d_model]
        spec = "ehak,ekm->eahm" if x.ndim == 3 else "ehak,km->eahm"
        return np.einsum("eahm,eahm->eah", np.einsum(spec, attn, x), d)

    tokens = chunk.tokens[:, :width] if chunk.tokens is not None else None
    if tokens is None:
        raise ValueError("path attribution needs the chunk's tokens (stream with tokens=True)")
    terms.append(through_vectors(weights.param(Arch.W_E)[tokens].astype(np.float64)))
    if weights.arch.pos_in_resid:
        terms.append(through_vectors(weights.param(Arch.W_pos)[:width].astype(np.float64)))
    attn_sum = attn.sum(-1).transpose(0, 2, 1)  # [e, a, head]: sum_k pattern / scale1
    for earlier in range(layer):
        w_o = weights.f64(Arch.attn_weight(earlier, "W_O"))  # [head', d_head, d_model]
        fold = target.take(_through(weights, readout, layer, f"L{earlier}", "thm,gdm->thgd", w_o))
        # fold: [e, a, head, head', d_head]
        z = chunk.full[Arch.z(earlier)][:, :width].astype(np.float64)  # [e, key, head', d_head]
        zbar = np.einsum("ehak,ekgd->eahgd", attn, z)
        terms.extend(np.moveaxis(np.einsum("eahgd,eahgd->eahg", zbar, fold), -1, 0))
        b_o = weights.maybe(Arch.attn_weight(earlier, "b_O"))
        terms.append(attn_sum * _bias_through(weights, readout, target, layer, f"b_O{earlier}", b_o))
        if weights.arch.has_mlp:
            w_out = weights.f64(Arch.mlp_weight(earlier, "W_out"))  # [d_mlp, d_model]
            fold = target.take(_through(weights, readout, layer, f"mlp{earlier}", "thm,nm->thn", w_out))
            # fold: [e, a, head, d_mlp]
            post = chunk.full[Arch.mlp_post(earlier)][:, :width].astype(np.float64)  # [e, key, d_mlp]
            pbar = np.einsum("ehak,ekn->eahn", attn, post)
            b_out = weights.maybe(Arch.mlp_weight(earlier, "b_out"))
            terms.append(np.einsum("eahn,eahn->eah", pbar, fold)
                         + attn_sum * _bias_through(weights, readout, target, layer, f"b_out{earlier}", b_out))
    _, b_v = value_weights(weights, layer)
    b_v_read = target.take(readout.table(("path_b_V", layer),
                                         lambda: np.einsum("hd,thd->th", b_v, readout.head(layer))))  # [e, a, head]
    terms.append(b_v_read * pattern.sum(-1).transpose(0, 2, 1))
    return np.stack(terms, axis=-1), sources(weights, layer)


def _bias_through(weights: Weights, readout: Readout, target: Target, layer: int, name: str,
                  bias: np.ndarray | None) -> np.ndarray:
    """[e, a, head]: a constant residual vector `bias` read through each head's d (0 if absent)."""
    if bias is None:
        return np.zeros(target.correct.shape + (weights.arch.n_heads,))
    return target.take(_through(weights, readout, layer, name, "thm,m->th", bias))
