"""Attribution patching of one batch: gradient x activation difference, every target at once.

One forward pass of the base run with the gradient on, one backward per (answer, metric), and
for each target the sum over its slice of grad * (source activation - base activation): the
first-order estimate of what exact patching would change. Stored as base metric + estimate, so
it sits in the same table shape as exact patching's patched metric.
"""

from __future__ import annotations

from typing import Any

import torch

from actstore.interventions.patching import Answers, Cached
from actstore.interventions.forward import Runner
from actstore.interventions.targets import Targets, hook_name, to_token_major


def atp_batch(runner: Runner, base_tokens: torch.Tensor, lengths: torch.Tensor, source: Cached, hook: str,
              targets: Targets, slots: torch.Tensor | None, answers: Answers) -> tuple[torch.Tensor, torch.Tensor]:
    """(estimated patched metrics [T, B, answer, metric], the base run's metrics [B, answer, metric])."""
    layers = targets.layers
    emb = runner.embed(base_tokens, lengths)
    acts: dict[int, torch.Tensor] = {}

    def keep(layer: int) -> Any:
        def fn(x: torch.Tensor, hook: Any) -> torch.Tensor:
            acts[layer] = x
            return x
        return fn

    with torch.enable_grad():
        resid = emb.resid.detach().requires_grad_(True)
        final = runner.run(emb, resid, 0, [(hook_name(hook, layer), keep(layer)) for layer in layers])
        metrics = answers.read(runner, final)  # [B, answer, metric]
        b, n_ans, n_met = metrics.shape
        est = torch.zeros(len(targets), b, n_ans, n_met, device=metrics.device)
        inputs = [acts[layer] for layer in layers]
        diffs = [to_token_major(source.acts[layer] - acts[layer].detach(), hook) for layer in layers]
        for a in range(n_ans):
            for m in range(n_met):
                grads = torch.autograd.grad(metrics[:, a, m].sum(), inputs, retain_graph=True)
                for layer, g, d in zip(layers, grads, diffs):
                    contrib = to_token_major(g, hook) * d  # [B, pos, (head,) ...]
                    idx = targets.at_layer(layer)
                    est[idx, :, a, m] = _per_target(contrib, targets, idx, slots, hook)
    return est, metrics.detach()


def _per_target(contrib: torch.Tensor, targets: Targets, idx: Any, slots: torch.Tensor | None,
                hook: str) -> torch.Tensor:
    """Sum each target's slice of contrib [B, pos, (head,) rest...] -> [T_layer, B]."""
    per_head = hook in ("z", "q", "k", "v", "pattern")
    keep = 3 if per_head else 2  # [B, pos, head] or [B, pos]
    c = contrib.sum(dim=tuple(range(keep, contrib.dim()))) if contrib.dim() > keep else contrib
    if slots is None:
        c = c.sum(dim=1)  # [B, (head)]
        if not per_head:
            return c[None, :].expand(len(idx), -1)
        return c[:, torch.as_tensor(targets.head[idx], device=c.device)].T
    pos = torch.as_tensor(targets.slot[idx], device=c.device)
    p = slots[:, pos].clamp(min=0)  # [B, T_layer]; absent positions are dropped from the table later
    rows = torch.arange(c.shape[0], device=c.device)[:, None]
    if not per_head:
        return c[rows, p].T
    h = torch.as_tensor(targets.head[idx], device=c.device)[None, :]
    return c[rows, p, h].T
