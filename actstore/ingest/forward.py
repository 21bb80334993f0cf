"""One masked forward pass that copies the chosen hooks straight into chunk buffers.

Hooks are registered once for the whole ingest; per batch, `Sink.target` points them at the
rows of the chunk buffers to fill and at the batch's answer positions. A hook selects its
positions on the device, casts to the stored dtype and copies into the (pinned, on CUDA)
host buffer, so nothing but the stored values ever leaves the device.

Padding: examples are right-padded; the model always runs with
attention_mask = (arange(pos) < lengths[:, None]). TransformerLens applies that mask only to
causal attention, so for bidirectional models a hook on every `hook_attn_scores` masks the
pad keys as well.

Early stop: when a store keeps no outputs, nothing after the deepest stored hook matters, so
the capture hooks raise `StopForward` once every stored hook has fired in the pass (the pass
ends right there: no later block, no final LayerNorm, no unembedding). `run_hooks` runs such a
pass and checks every hook fired.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from actstore.ingest.hooks import pos_axis
from actstore.store.arch import Arch


def attention_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """[example, pos] 1 on real tokens, 0 on right padding."""
    return (torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]).long()


@dataclass
class Sink:
    """Where the registered hooks write during the current batch.

    target:     {hook name: torch view of the chunk buffer rows of this batch}
    answer_pos: [batch, answer] answer positions on the device
    key_mask:   [batch, pos] bool, True on real tokens (for bidirectional masking)
    capture:    False while a pass runs whose activations are not stored (the corrupted twin's):
                the capture hooks do nothing, the masking hooks still apply
    stop:       True during a `run_hooks` pass: the capture hook that empties `pending` (the stored
                hooks not yet fired in this pass) raises StopForward
    """

    target: dict[str, torch.Tensor] = field(default_factory=dict)
    answer_pos: torch.Tensor | None = None
    key_mask: torch.Tensor | None = None
    non_blocking: bool = False
    capture: bool = True
    stop: bool = False
    pending: set[str] = field(default_factory=set)


class StopForward(Exception):
    """Raised by the last capture hook of a pass that keeps no outputs: the rest of the pass is not run
    (control flow inside actstore.ingest, never seen by a caller)."""


def select_answers(act: torch.Tensor, axis: int, answer_pos: torch.Tensor) -> torch.Tensor:
    """Keep only the answer positions along `axis`: [batch, ..., pos, ...] -> [batch, ..., answer, ...]."""
    moved = act.movedim(axis, 1)  # [batch, pos, ...]
    rows = torch.arange(act.shape[0], device=act.device)[:, None]
    return moved[rows, answer_pos].movedim(1, axis)  # [batch, answer, ...] -> back in place


def capture_hooks(sink: Sink, choices: list[tuple[str, str, tuple[str, ...]]]) -> list[tuple[str, Callable]]:
    """TransformerLens fwd_hooks that copy each (name, positions, dims) hook into `sink.target[name]`."""
    hooks = []
    for name, positions, dims in choices:
        axis = pos_axis(dims)

        def hook(act: torch.Tensor, hook: Any, name: str = name, positions: str = positions,
                 axis: int = axis) -> None:
            if not sink.capture:
                return
            if positions == "answer":
                act = select_answers(act, axis, _set(sink.answer_pos, "answer_pos"))
            sink.target[name].copy_(act.detach(), non_blocking=sink.non_blocking)
            if sink.stop:
                sink.pending.discard(name)
                if not sink.pending:
                    raise StopForward

        hooks.append((name, hook))
    return hooks


def run_hooks(model: Any, sink: Sink, tokens: torch.Tensor, mask: torch.Tensor) -> None:
    """One pass of `tokens` [batch, pos] that fills `sink.target` and stops after the last stored hook
    fires (the capture hooks must be registered). RuntimeError if a stored hook never fired."""
    sink.pending, sink.stop = set(sink.target), True
    try:
        model(tokens, attention_mask=mask, return_type=None)
    except StopForward:
        return
    finally:
        sink.stop = False
    raise RuntimeError(f"hooks {sorted(sink.pending)} did not fire in the forward pass")


def _set(value: torch.Tensor | None, what: str) -> torch.Tensor:
    """A Sink field the forward loop sets before each batch (a programming error if it did not)."""
    if value is None:
        raise RuntimeError(f"Sink.{what} is not set for this batch")
    return value


def bidirectional_mask_hooks(sink: Sink, n_layers: int) -> list[tuple[str, Callable]]:
    """Hooks that stop every query attending to pad keys: [batch, head, query_pos, key_pos] scores."""

    def hook(scores: torch.Tensor, hook: Any) -> torch.Tensor:
        return scores.masked_fill(~_set(sink.key_mask, "key_mask")[:, None, None, :], float("-inf"))

    return [(Arch.attn_scores(layer), hook) for layer in range(n_layers)]


def answer_logits(logits: torch.Tensor, answer_pos: torch.Tensor) -> torch.Tensor:
    """[batch, pos, vocab] -> [batch, answer, vocab] float32 at the answer positions."""
    rows = torch.arange(logits.shape[0], device=logits.device)[:, None]
    return logits[rows, answer_pos].float()


def answer_pass(model: Any, tokens: torch.Tensor, mask: torch.Tensor, answer_pos: torch.Tensor) -> torch.Tensor:
    """One pass of `tokens` [batch, pos] (attention `mask` [batch, pos]) with the registered hooks firing as
    in a plain pass; returns the logits [batch, answer, vocab] float32 at the answer positions only.

    The blocks and the final LayerNorm run on every position (their hooks see [batch, pos, ...]); the
    unembedding runs on the answer positions only, as `residual @ W_U + b_U` (for GPT-2 small, unembedding
    every position is ~30% of the pass's multiply-adds). The unembed module's own hooks never fire
    (no store keeps them: the probe's pass stops before the unembedding too).
    """
    resid = model(tokens, attention_mask=mask, stop_at_layer=model.cfg.n_layers)  # [batch, pos, d_model]
    if model.cfg.normalization_type is not None:
        resid = model.ln_final(resid)
    logits = torch.matmul(select_answers(resid, 1, answer_pos), model.W_U) + model.b_U  # [batch, answer, vocab]
    cap = getattr(model.cfg, "output_logits_soft_cap", None)
    if cap is not None and cap > 0:  # Gemma-2's soft cap, applied in the model's dtype as TransformerLens does
        logits = cap * torch.tanh(logits / cap)
    return logits.float()


def answer_outputs(logits: torch.Tensor, correct: torch.Tensor, counter: torch.Tensor | None) -> dict[str, np.ndarray]:
    """Per answer: correct/counter logit, logit diff, prob, rank (0 = top), loss, correct (argmax).

    logits: [batch, answer, vocab] float32; correct, counter: [batch, answer] token ids.
    Returns {column: [batch, answer] numpy array}.
    """
    logprobs = logits.log_softmax(-1)
    c_logit = logits.gather(-1, correct[..., None])[..., 0]
    out = {
        "correct_logit": c_logit,
        "prob": logprobs.gather(-1, correct[..., None])[..., 0].exp(),
        "rank": (logits > c_logit[..., None]).sum(-1),
        "loss": -logprobs.gather(-1, correct[..., None])[..., 0],
        "correct": logits.argmax(-1) == correct,
    }
    if counter is not None:
        k_logit = logits.gather(-1, counter[..., None])[..., 0]
        out["counter_logit"] = k_logit
        out["logit_diff"] = c_logit - k_logit
    return {k: v.cpu().numpy() for k, v in out.items()}


def answer_topk(logits: torch.Tensor, k: int) -> dict[str, np.ndarray]:
    """The k most likely output tokens at each answer, most likely first (torch.topk's order).

    logits: [batch, answer, vocab] float32 (as `answer_logits` gives them).
    Returns {'topk_token', 'topk_logit', 'topk_prob': [batch, answer, k] numpy arrays}; prob is the
    softmax over the whole vocabulary.
    """
    values, ids = logits.topk(k, dim=-1)
    probs = logits.log_softmax(-1).gather(-1, ids).exp()
    return {"topk_token": ids.cpu().numpy(), "topk_logit": values.cpu().numpy(), "topk_prob": probs.cpu().numpy()}

