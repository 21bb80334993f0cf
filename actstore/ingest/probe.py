"""The first-batch probe: each chosen hook's shape, and the decomposition check.

Run before the store is created, so that the manifest (hook shapes and the check's result) is
complete when it is first written and never rewritten.

Sized to what is stored, in one forward pass: the decomposition check runs only where the store
keeps every hook it reads (each layer's hook_z and MLP hook_post, the final LayerNorm scale),
since nothing else in the store can use its result, and then on the first CHECK_EXAMPLES
examples (verify repeats it on every stored example); the hook shapes come from that same pass.
Otherwise it is recorded as skipped, naming a hook it would need, and the shapes come from one
example's pass, stopped once every chosen hook has fired.

On a CPU the probe runs with one intra-op thread (restored after) while ingest has work on
the other core (the weights' sha256, the weight cache entry's check): its pass is a few dozen
tokens, too small for a second thread to pay for the synchronisation at every op. With
nothing beside it (the digest kept, no entry to check) it keeps torch's threads.

The check's pass is the ingest's own (`forward.answer_pass`: blocks and final LayerNorm on every
position, the unembedding on the answer positions only), so its logits are the ones the store
records as outputs; the rebuilt logits - b_U are compared with them over the whole output
vocabulary at each answer position, in float64.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from actstore.errors import StoreFormatError
from actstore.ingest import model_info
from actstore.ingest.forward import (Sink, StopForward, answer_pass, attention_mask, bidirectional_mask_hooks,
                                     select_answers)
from actstore.store.arch import Arch
from actstore.store.decomposition import final_residual, required_hooks, unembed

# above this max error (relative to 1 + max |logit|) the check is recorded as failed
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8}
HALF_TOLERANCE = 2e-2
CHECK_EXAMPLES = 4  # examples of the first batch the decomposition check runs on


def probe_batch(
    model: Any,
    tokens: torch.Tensor,
    lengths: torch.Tensor,
    answer_pos: torch.Tensor,
    answer_tokens: torch.Tensor,
    hook_names: list[str],
    stored_dtype: str,
    one_thread: bool = True,
) -> tuple[dict[str, tuple[int, ...]], dict[str, Any]]:
    """Probe the first batch; returns ({hook: per-example shape}, decomposition check record).

    tokens [batch, pos], lengths [batch], answer_pos / answer_tokens [batch, answer], on the model's device.
    one_thread: on a CPU, run with one intra-op thread (the caller has work on another core meanwhile).
    """
    with _one_cpu_thread(tokens.device) if one_thread else contextlib.nullcontext():
        return _probe(model, tokens, lengths, answer_pos, answer_tokens, hook_names, stored_dtype)


def _probe(model: Any, tokens: torch.Tensor, lengths: torch.Tensor, answer_pos: torch.Tensor,
           answer_tokens: torch.Tensor, hook_names: list[str],
           stored_dtype: str) -> tuple[dict[str, tuple[int, ...]], dict[str, Any]]:
    arch, skipped = _checkable(model, hook_names)
    if arch is None:
        return _shapes(model, tokens[:1], lengths[:1], hook_names), {"status": "skipped", "reason": skipped}
    needed = required_hooks(arch)
    k = min(CHECK_EXAMPLES, int(tokens.shape[0]))
    tokens, lengths, answer_pos, answer_tokens = tokens[:k], lengths[:k], answer_pos[:k], answer_tokens[:k]
    shapes: dict[str, tuple[int, ...]] = {}
    captured: dict[str, np.ndarray] = {}  # {hook: [k, answer, ...] float64} of the hooks the check reads
    key_mask = attention_mask(lengths, tokens.shape[1]).bool()

    def shape_hook(act: torch.Tensor, hook: Any) -> None:
        shapes[hook.name] = tuple(act.shape[1:])

    def keep_hook(act: torch.Tensor, hook: Any) -> None:
        captured[hook.name] = select_answers(act, 1, answer_pos).double().cpu().numpy()

    fwd = (_masking(model, key_mask) + [(h, shape_hook) for h in hook_names if h in model.hook_dict]
           + [(h, keep_hook) for h in needed])
    with torch.inference_mode(), model.hooks(fwd_hooks=fwd):
        logits = answer_pass(model, tokens, key_mask.long(), answer_pos)  # [k, answer, vocab] float32

    params = dict(model.named_parameters())
    names = list(params)
    state: dict[str, np.ndarray] = {}

    def param(name: str) -> np.ndarray:  # only the weights the rebuild reads, each made a numpy array once
        if name not in state:
            state[name] = params[name].detach().float().cpu().numpy()
        return state[name]

    b_u = param("unembed.b_U") if "unembed.b_U" in params else np.zeros(logits.shape[-1], np.float32)
    target = logits.double().cpu().numpy() - b_u  # [k, answer, vocab]
    toks = tokens.gather(1, answer_pos).cpu().numpy()
    pos = answer_pos.cpu().numpy()
    np_dtype = np.dtype(stored_dtype)
    # one rebuild of both: the first k rows from full-precision values, the last k from values rounded as stored
    normed = final_residual(arch, param, names, np.concatenate([toks, toks]), np.concatenate([pos, pos]),
                            lambda h: np.concatenate([captured[h], captured[h].astype(np_dtype)]))
    rebuilt = unembed(arch, param, normed[:k])  # [k, answer, vocab]
    stored = unembed(arch, param, normed[k:], vocab=answer_tokens.cpu().numpy())  # [k, answer]
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


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """One torch intra-op thread while the block runs on a CPU device (the thread count is restored after)."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _checkable(model: Any, hook_names: list[str]) -> tuple[Arch | None, str]:
    """(the model's Arch, '') where the check can run on a store of `hook_names`, else (None, why not)."""
    try:
        arch = Arch.from_config(model_info.config_dict(model))
    except StoreFormatError as e:  # an architecture direct attribution does not cover: record, do not fail
        return None, str(e)
    needed = required_hooks(arch)
    missing = [h for h in needed if h not in model.hook_dict]
    if missing:
        return None, f"model lacks hook(s) {', '.join(missing)}"
    unstored = [h for h in needed if h not in hook_names]
    if unstored:
        more = f" and {len(unstored) - 1} more hook(s)" if len(unstored) > 1 else ""
        return None, f"the store does not keep {unstored[0]}{more} it needs"
    return arch, ""


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
