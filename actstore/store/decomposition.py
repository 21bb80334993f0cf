"""The decomposition check: the stored components rebuild the model's logits.

The residual stream at an answer position is the sum of its components (token and position
embeddings, each head's z @ W_O plus b_O, each MLP's post @ W_out plus b_out). The final
LayerNorm is linear once its scale is fixed, so with the stored `ln_final.hook_scale`

    logits - b_U = norm(sum of components) @ W_U,  norm(x) = (x - mean(x)) / scale [* w + b]

Ingest checks this on its first batch with full-precision activations and records the max
error; `verify` repeats it on the stored (possibly float16) values against the stored logits.
Pure numpy, float64. Only the rows and columns a product reads are converted to float64 (the
embedding and unembedding matrices of a GPT-2-small shape are 39M values each), and the full
unembedding runs in column blocks, so no float64 copy of a whole weight is ever made.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from actstore.errors import InvalidParameterError
from actstore.store.arch import Arch

UNEMBED_BLOCK = 512  # vocabulary columns per float64 block of the full unembedding ([d_model, 512]: 3 MB)
MATMUL_BLOCK = 512  # weight rows per float64 block of a residual product ([512, d_model]: 3 MB)
FEW_ROWS = 64  # below this many rows a residual product runs in pieces of SERIAL_MACS (see _matmul)
SERIAL_MACS = 1 << 18  # OpenBLAS runs a gemm of at most 65536 * 4 multiply-adds on one thread


def required_hooks(arch: Arch) -> list[str]:
    """Hooks the check needs: every layer's hook_z and MLP hook_post, and the final LN scale."""
    names = [arch.z(layer) for layer in arch.layers]
    if arch.has_mlp:
        names += [arch.mlp_post(layer) for layer in arch.layers]
    if arch.norm is not None:
        names.append(arch.final_scale)
    return names


def answer_residual(
    arch: Arch,
    param: Callable[[str], np.ndarray],
    tokens: np.ndarray,
    positions: np.ndarray,
    act: Callable[[str], np.ndarray],
) -> np.ndarray:
    """Final residual stream at the answer positions, as the sum of its components.

    tokens, positions: [example, answer] token ids and positions
    act(name):         the hook's value at the answer positions, [example, answer, ...]
    returns            [example, answer, d_model] float64
    """
    lead = tokens.shape  # [e, a]
    resid = _f64(param(arch.W_E)[tokens.reshape(-1)])  # [e*a, d_model]: only the answer tokens' rows
    if arch.pos_in_resid:
        resid = resid + _f64(param(arch.W_pos)[positions.reshape(-1)])
    for layer in arch.layers:
        z = _f64(act(arch.z(layer)))  # [e, a, head, d_head]
        w_o = param(arch.attn_weight(layer, "W_O"))  # [head, d_head, d_model]
        resid = resid + _matmul(z.reshape(resid.shape[0], -1), w_o.reshape(-1, w_o.shape[-1]))
        resid = resid + param(arch.attn_weight(layer, "b_O"))
        if arch.has_mlp:
            post = _f64(act(arch.mlp_post(layer)))  # [e, a, d_mlp]
            resid = resid + _matmul(post.reshape(resid.shape[0], -1), param(arch.mlp_weight(layer, "W_out")))
            resid = resid + param(arch.mlp_weight(layer, "b_out"))
    return resid.reshape(*lead, -1)


def normalize_final(
    arch: Arch, param: Callable[[str], np.ndarray], resid: np.ndarray, scale: np.ndarray | None,
    param_names: list[str],
) -> np.ndarray:
    """Apply ln_final with its stored scale ([example, answer, 1]); identity if the model has no LN."""
    if arch.norm is None:
        return resid
    if scale is None:
        raise InvalidParameterError(f"the decomposition needs {arch.final_scale} for a model with LayerNorm")
    if arch.layer_norm:
        resid = resid - resid.mean(-1, keepdims=True)
    out = resid / _f64(scale)
    w, b = arch.ln_weight(None, "ln_final", "w"), arch.ln_weight(None, "ln_final", "b")
    if w in param_names:
        out = out * param(w)
    if b in param_names:
        out = out + param(b)
    return out


def decomposed_logits(
    arch: Arch,
    param: Callable[[str], np.ndarray],
    param_names: list[str],
    tokens: np.ndarray,
    positions: np.ndarray,
    act: Callable[[str], np.ndarray],
    vocab: np.ndarray | None = None,
) -> np.ndarray:
    """logits - b_U at the answer positions rebuilt from components: [example, answer, vocab].

    vocab: optional [example, answer] token ids; then returns only those logits, [example, answer].
    """
    return unembed(arch, param, final_residual(arch, param, param_names, tokens, positions, act), vocab)


def final_residual(
    arch: Arch,
    param: Callable[[str], np.ndarray],
    param_names: list[str],
    tokens: np.ndarray,
    positions: np.ndarray,
    act: Callable[[str], np.ndarray],
) -> np.ndarray:
    """The rebuilt residual stream after ln_final at the answer positions: [example, answer, d_model] float64."""
    resid = answer_residual(arch, param, tokens, positions, act)
    scale = act(arch.final_scale) if arch.norm is not None else None
    return normalize_final(arch, param, resid, scale, param_names)


def unembed(arch: Arch, param: Callable[[str], np.ndarray], normed: np.ndarray,
            vocab: np.ndarray | None = None) -> np.ndarray:
    """normed [example, answer, d_model] @ W_U in float64: [example, answer, vocab] (without b_U), or with
    `vocab` ([example, answer] token ids) only those logits, [example, answer]."""
    w_u = param(arch.W_U)  # [d_model, d_vocab_out], in the dtype `param` gives
    if vocab is not None:
        return np.einsum("eam,mea->ea", normed, _f64(w_u[:, vocab]))
    out = np.empty((*normed.shape[:-1], w_u.shape[1]))
    for j in range(0, w_u.shape[1], UNEMBED_BLOCK):
        out[..., j:j + UNEMBED_BLOCK] = normed @ _f64(w_u[:, j:j + UNEMBED_BLOCK])
    return out


def rounding_bound(
    arch: Arch,
    param: Callable[[str], np.ndarray],
    param_names: list[str],
    act: Callable[[str], np.ndarray],
    vocab: np.ndarray,
    logits: np.ndarray,
    unit: float,
) -> np.ndarray:
    """[example, answer] first-order bound on how far rounding every stored activation (relative
    error <= `unit` each: 2**-11 for float16) can move each answer's rebuilt logit.

    The rebuilt logit is linear in hook_z and hook_post once the final scale is fixed, so the bound
    is unit * sum over stored values |x| * |d logit / d x|, plus unit * |logit| for the rounding
    of the final LayerNorm scale itself. vocab: [example, answer] token ids; logits: the rebuilt
    [example, answer] values.
    """
    g = _f64(param(arch.W_U)[:, vocab]).transpose(1, 2, 0)  # [e, a, d_model]
    w = arch.ln_weight(None, "ln_final", "w")
    if w in param_names:
        g = g * param(w)
    if arch.layer_norm:
        g = g - g.mean(-1, keepdims=True)  # the LayerNorm centres the residual stream first
    if arch.norm is not None:
        g = g / _f64(act(arch.final_scale))
    total = np.abs(logits).astype(np.float64)
    for layer in arch.layers:
        z = _f64(act(arch.z(layer)))  # [e, a, head, d_head]
        w_o = _f64(param(arch.attn_weight(layer, "W_O")))  # [head, d_head, d_model]
        total += np.einsum("eahd,eahd->ea", np.abs(z), np.abs(np.einsum("hdm,eam->eahd", w_o, g)))
        if arch.has_mlp:
            post = _f64(act(arch.mlp_post(layer)))  # [e, a, d_mlp]
            w_out = _f64(param(arch.mlp_weight(layer, "W_out")))  # [d_mlp, d_model]
            total += np.einsum("ean,ean->ea", np.abs(post), np.abs(np.einsum("nm,eam->ean", w_out, g)))
    return unit * total


def _matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x [rows, k] float64 @ w [k, n] in float64: [rows, n]. w is converted MATMUL_BLOCK rows at a time (no
    float64 copy of a whole weight: W_out of a GPT-2-small shape is 2.4M values per layer). With few rows (the
    ingest probe's) each product is cut into pieces of at most SERIAL_MACS multiply-adds, which OpenBLAS runs
    on the calling thread: its threads, woken for each small product, cost more than they give (several
    times slower on 2 busy cores) and take the core the weights' sha256 runs on meanwhile."""
    if x.shape[1] != w.shape[0]:  # the pieces below would leave out x's extra columns without a word
        raise ValueError(f"a {list(x.shape)} operand cannot multiply a {list(w.shape)} weight")
    out = np.zeros((x.shape[0], w.shape[1]))
    work = x.shape[0] * w.shape[1]
    step = MATMUL_BLOCK  # a power of two dividing MATMUL_BLOCK, so no piece straddles two blocks
    while x.shape[0] < FEW_ROWS and step > 8 and step * work > SERIAL_MACS:
        step //= 2
    for i in range(0, w.shape[0], MATMUL_BLOCK):
        block = _f64(w[i:i + MATMUL_BLOCK])
        for j in range(0, block.shape[0], step):
            out += x[:, i + j:i + j + step] @ block[j:j + step]
    return out


def _f64(a: np.ndarray) -> np.ndarray:
    """`a` as float64 (the same array, not a copy, when it already is)."""
    return np.asarray(a, dtype=np.float64)
