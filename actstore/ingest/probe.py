"""The first-batch probe: each chosen hook's shape, and the decomposition check.

Run before the store is created, so that the manifest (hook shapes and the check's result) is
complete when it is first written and never rewritten.

Sized to what is stored: the shapes come from one example's pass, stopped once every chosen hook
has fired. The decomposition check runs only where the store keeps every hook it reads (each
layer's hook_z and MLP hook_post, the final LayerNorm scale), since nothing else in the store
can use its result, and then on the first CHECK_EXAMPLES examples (verify repeats it on every
stored example). Otherwise it is recorded as skipped, naming a hook it would need.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from actstore.errors import StoreFormatError
from actstore.ingest import model_info
from actstore.ingest.forward import (Sink, StopForward, answer_logits, attention_mask, bidirectional_mask_hooks,
                                     select_answers)
from actstore.store.arch import Arch
from actstore.store.decomposition import decomposed_logits, required_hooks

# above this max error (relative to 1 + max |logit|) the check is recorded as failed
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8}
HALF_TOLERANCE = 2e-2
CHECK_EXAMPLES = 16  # examples of the first batch the decomposition check runs on


def probe_batch(
    model: Any,
    tokens: torch.Tensor,
    lengths: torch.Tensor,
    answer_pos: torch.Tensor,
    answer_tokens: torch.Tensor,
    hook_names: list[str],
    stored_dtype: str,
) -> tuple[dict[str, tuple[int, ...]], dict[str, Any]]:
    """Probe the first batch; returns ({hook: per-example shape}, decomposition check record).

    tokens [batch, pos], lengths [batch], answer_pos / answer_tokens [batch, answer], on the model's device.
    """
    try:
        arch = Arch.from_config(model_info.config_dict(model))
    except StoreFormatError as e:  # an architecture direct attribution does not cover: record, do not fail
        arch, unsupported = None, str(e)
    needed = required_hooks(arch) if arch is not None else []
    missing = [h for h in needed if h not in model.hook_dict]
    unstored = [h for h in needed if h not in hook_names]
    shapes = _shapes(model, tokens[:1], lengths[:1], hook_names)
    if arch is None:
        return shapes, {"status": "skipped", "reason": unsupported}
    if missing:
        return shapes, {"status": "skipped", "reason": f"model lacks hook(s) {', '.join(missing)}"}
    if unstored:
        return shapes, {"status": "skipped", "reason": f"the store does not keep {unstored[0]}"
                        f"{f' and {len(unstored) - 1} more hook(s)' if len(unstored) > 1 else ''} it needs"}
    k = min(CHECK_EXAMPLES, int(tokens.shape[0]))
    tokens, lengths, answer_pos, answer_tokens = tokens[:k], lengths[:k], answer_pos[:k], answer_tokens[:k]
    captured: dict[str, np.ndarray] = {}
    key_mask = attention_mask(lengths, tokens.shape[1]).bool()

    def keep_hook(act: torch.Tensor, hook: Any) -> None:
        captured[hook.name] = select_answers(act, 1, answer_pos).double().cpu().numpy()

    fwd = _masking(model, key_mask) + [(h, keep_hook) for h in needed]
    with torch.inference_mode(), model.hooks(fwd_hooks=fwd):
        logits = model(tokens, attention_mask=key_mask.long(), return_type="logits")

    params = dict(model.named_parameters())
    names = list(params)
    state: dict[str, np.ndarray] = {}

    def param(name: str) -> np.ndarray:  # only the weights the rebuild reads, each copied once
        if name not in state:
            state[name] = params[name].detach().float().cpu().numpy()
        return state[name]

    b_u = param("unembed.b_U") if "unembed.b_U" in params else np.zeros(logits.shape[-1])
    target = answer_logits(logits, answer_pos).double().cpu().numpy() - b_u[None, None, :]  # [batch, answer, vocab]
    toks = tokens.gather(1, answer_pos).cpu().numpy()
    pos = answer_pos.cpu().numpy()
    rebuilt = decomposed_logits(arch, param, names, toks, pos, captured.__getitem__)
    np_dtype = np.dtype(stored_dtype)
    stored = decomposed_logits(arch, param, names, toks, pos, lambda h: captured[h].astype(np_dtype),
                               vocab=answer_tokens.cpu().numpy())
    correct = np.take_along_axis(target, answer_tokens.cpu().numpy()[..., None], -1)[..., 0]
    error = float(np.abs(rebuilt - target).max())
    scale = float(np.abs(target).max())
    tol = TOLERANCE.get(model.cfg.dtype, HALF_TOLERANCE) * (1.0 + scale)
    return shapes, {
        "status": "ok" if error <= tol else "failed",
        "max_abs_error": error,
        "tolerance": tol,
        "max_abs_logit": scale,
        "stored_dtype_max_abs_error": float(np.abs(stored - correct).max()),
        "n_examples": int(tokens.shape[0]),
        "components": _components(arch),
    }


def _masking(model: Any, key_mask: torch.Tensor) -> list[tuple[str, Any]]:
    """The pad-key masking hooks a bidirectional model needs (none for a causal one)."""
    if model.cfg.attention_dir != "bidirectional":
        return []
    return bidirectional_mask_hooks(Sink(key_mask=key_mask), model.cfg.n_layers)


def _shapes(model: Any, tokens: torch.Tensor, lengths: torch.Tensor,
            hook_names: list[str]) -> dict[str, tuple[int, ...]]:
    """{hook: per-example shape} from one pass of tokens [1, pos], stopped once every hook in `hook_names`
    has fired (a hook the model never runs is absent; the pass then runs to its end)."""
    shapes: dict[str, tuple[int, ...]] = {}
    pending = set(hook_names)

    def shape_hook(act: torch.Tensor, hook: Any) -> None:
        shapes[hook.name] = tuple(act.shape[1:])
        pending.discard(hook.name)
        if not pending:
            raise StopForward

    key_mask = attention_mask(lengths, tokens.shape[1]).bool()
    fwd = _masking(model, key_mask) + [(h, shape_hook) for h in hook_names if h in model.hook_dict]
    with torch.inference_mode(), model.hooks(fwd_hooks=fwd):
        try:
            model(tokens, attention_mask=key_mask.long(), return_type=None)
        except StopForward:
            pass
    return shapes


def _components(arch: Arch) -> list[str]:
    names = ["embed"] + (["pos_embed"] if arch.pos_in_resid else [])
    for layer in arch.layers:
        names += [f"L{layer} heads (z @ W_O)", f"L{layer} b_O"]
        if arch.has_mlp:
            names += [f"mlp{layer} (post @ W_out)", f"mlp{layer} b_out"]
    return names
