"""The first-batch probe: each chosen hook's shape, and the decomposition check.

Run before the store is created, so that the manifest (hook shapes and the check's result) is
complete when it is first written and never rewritten. A new local store whose check is skipped
needs no probe: `config_shapes` gives the shapes from the model's config, and the ingest's first
batch checks them (`ShapeCheck`) before the store is published or a chunk written; where one
differs (or a hook does not fire) the ingest probes instead, with nothing written.

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


def skip_reason(model: Any, hook_names: list[str]) -> str | None:
    """Why the decomposition check does not run on a store of `hook_names` (the reason the probe records), or
    None where it runs (then only probe_batch makes the manifest's check record)."""
    arch, reason = _checkable(model, hook_names)
    return None if arch is not None else reason


# per-example shape of a TransformerLens hook by its name's ending, from config fields ('pos': the batch's width)
_CONFIG_SHAPES: dict[str, tuple[str, ...]] = {
    "hook_embed": ("pos", "d_model"), "hook_pos_embed": ("pos", "d_model"),
    "hook_resid_pre": ("pos", "d_model"), "hook_resid_mid": ("pos", "d_model"),
    "hook_resid_post": ("pos", "d_model"), "hook_attn_out": ("pos", "d_model"), "hook_mlp_out": ("pos", "d_model"),
    "hook_normalized": ("pos", "d_model"), "hook_scale": ("pos", "one"),
    "hook_q": ("pos", "n_heads", "d_head"), "hook_k": ("pos", "n_heads", "d_head"),
    "hook_v": ("pos", "n_heads", "d_head"), "hook_z": ("pos", "n_heads", "d_head"),
    "hook_result": ("pos", "n_heads", "d_model"),
    "hook_pattern": ("n_heads", "pos", "pos"), "hook_attn_scores": ("n_heads", "pos", "pos"),
    "hook_pre": ("pos", "d_mlp"), "hook_post": ("pos", "d_mlp"), "hook_pre_linear": ("pos", "d_mlp"),
}


def config_shapes(model: Any, hook_names: list[str], width: int) -> dict[str, tuple[int, ...]] | None:
    """{hook: per-example shape} from the model's config, without a forward pass; None where any hook is not
    one whose shape the config gives (then the probe learns them). Only a guess until checked: ingest checks
    every shape, and that every hook fires, on its first batch before the store is published or a chunk
    written, and falls back to the probe if any differs (ShapeCheck)."""
    cfg = model.cfg
    if getattr(cfg, "n_key_value_heads", None) not in (None, cfg.n_heads):
        return None  # grouped-query attention: k and v have fewer heads
    sizes = {"pos": int(width), "one": 1, "d_model": cfg.d_model, "n_heads": cfg.n_heads, "d_head": cfg.d_head,
             "d_mlp": cfg.d_mlp}
    shapes = {}
    for name in hook_names:
        dims = _CONFIG_SHAPES.get(name.rsplit(".", 1)[-1])
        if name not in model.hook_dict or dims is None or any(not isinstance(sizes[d], int) for d in dims):
            return None
        shapes[name] = tuple(int(sizes[d]) for d in dims)
    return shapes


class ShapeCheck:
    """Checks hook shapes derived from the config (config_shapes) against a real pass: `hooks()` are
    TransformerLens fwd_hooks (registered before the capture hooks, so a wrong shape is caught before it is
    copied anywhere) that record each hook's shape and raise ShapeMismatch at the first that differs;
    `finish()` raises it if a hook never fired in the pass."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]) -> None:
        self.shapes = shapes
        self.fired: set[str] = set()
        self.done = False  # finish() passed: the hooks do nothing more

    def hooks(self) -> list[tuple[str, Any]]:
        def check(act: torch.Tensor, hook: Any) -> None:
            if self.done:
                return
            got = tuple(act.shape[1:])
            if got != self.shapes[hook.name]:
                raise ShapeMismatch(f"{hook.name}: {got} in the pass, {self.shapes[hook.name]} from the config")
            self.fired.add(hook.name)

        return [(name, check) for name in self.shapes]

    def finish(self) -> None:
        missing = sorted(set(self.shapes) - self.fired)
        if missing:
            raise ShapeMismatch(f"{', '.join(missing)} did not fire in the pass")
        self.done = True


class ShapeMismatch(Exception):
    """A shape from the config differs from the pass (control flow inside actstore.ingest: the ingest probes
    instead; never seen by a caller)."""


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
