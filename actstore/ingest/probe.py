"""The first-batch probe: each chosen hook's shape, and the decomposition check.

Run before the store is created, so that the manifest (hook shapes and the check's result) is
complete when it is first written and never rewritten.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from actstore.errors import StoreFormatError
from actstore.ingest import model_info
from actstore.ingest.forward import Sink, answer_logits, attention_mask, bidirectional_mask_hooks, select_answers
from actstore.store.arch import Arch
from actstore.store.decomposition import decomposed_logits, required_hooks

# above this max error (relative to 1 + max |logit|) the check is recorded as failed
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8}
HALF_TOLERANCE = 2e-2


def probe_batch(
    model: Any,
    tokens: torch.Tensor,
    lengths: torch.Tensor,
    answer_pos: torch.Tensor,
    answer_tokens: torch.Tensor,
    hook_names: list[str],
    stored_dtype: str,
) -> tuple[dict[str, tuple[int, ...]], dict[str, Any]]:
    """Run one batch; returns ({hook: per-example shape}, decomposition check record).

    tokens [batch, pos], lengths [batch], answer_pos / answer_tokens [batch, answer], on the model's device.
    """
    cfg = model.cfg
    try:
        arch = Arch.from_config(model_info.config_dict(model))
    except StoreFormatError as e:  # an architecture direct attribution does not cover: record, do not fail
        arch, unsupported = None, str(e)
    needed = required_hooks(arch) if arch is not None else []
    missing = [h for h in needed if h not in model.hook_dict]
    shapes: dict[str, tuple[int, ...]] = {}
    captured: dict[str, np.ndarray] = {}
    key_mask = attention_mask(lengths, tokens.shape[1]).bool()
    sink = Sink(answer_pos=answer_pos, key_mask=key_mask)

    def shape_hook(act: torch.Tensor, hook: Any) -> None:
        shapes[hook.name] = tuple(act.shape[1:])

    def keep_hook(act: torch.Tensor, hook: Any) -> None:
        captured[hook.name] = select_answers(act, 1, answer_pos).double().cpu().numpy()

    fwd = bidirectional_mask_hooks(sink, cfg.n_layers) if cfg.attention_dir == "bidirectional" else []
    fwd += [(h, shape_hook) for h in hook_names]
    if not missing:
        fwd += [(h, keep_hook) for h in needed]
    with torch.inference_mode(), model.hooks(fwd_hooks=fwd):
        logits = model(tokens, attention_mask=key_mask.long(), return_type="logits")
    if arch is None:
        return shapes, {"status": "skipped", "reason": unsupported}
    if missing:
        return shapes, {"status": "skipped", "reason": f"model lacks hook(s) {', '.join(missing)}"}

    state = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    names = list(state)
    target = (answer_logits(logits, answer_pos).double().cpu().numpy()
              - state.get("unembed.b_U", np.zeros(logits.shape[-1]))[None, None, :])  # [batch, answer, vocab]
    toks = tokens.gather(1, answer_pos).cpu().numpy()
    pos = answer_pos.cpu().numpy()
    rebuilt = decomposed_logits(arch, state.__getitem__, names, toks, pos, captured.__getitem__)
    np_dtype = np.dtype(stored_dtype)
    stored = decomposed_logits(arch, state.__getitem__, names, toks, pos, lambda h: captured[h].astype(np_dtype),
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


def _components(arch: Arch) -> list[str]:
    names = ["embed"] + (["pos_embed"] if arch.pos_in_resid else [])
    for layer in arch.layers:
        names += [f"L{layer} heads (z @ W_O)", f"L{layer} b_O"]
        if arch.has_mlp:
            names += [f"mlp{layer} (post @ W_out)", f"mlp{layer} b_out"]
    return names
