"""Exact patching of one batch: every target's variant run from its layer, variants stacked.

For a batch of B examples and the targets at layer L, the base run's resid_pre at L is repeated
once per target and run from L with one hook that writes each variant's target slice from the
source activation (the other run's, or an ablation value). So layers before L are never
recomputed, and up to `rows` variants run in one pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from actstore.interventions.forward import Embedded, Runner, metric_values
from actstore.interventions.targets import Targets, hook_name, replace


@dataclass
class Answers:
    """The clean example's answers, read on every run: [B, answer] positions and token ids."""

    pos: torch.Tensor
    answer: torch.Tensor
    counter: torch.Tensor | None
    metrics: tuple[str, ...]

    def read(self, runner: Runner, final: torch.Tensor) -> torch.Tensor:
        """final: [R, pos, d_model] -> [R, answer, metric]."""
        return metric_values(runner.answer_logits(final, self.pos), self.answer, self.counter, self.metrics)


@dataclass
class Cached:
    """One unpatched run: resid_pre per layer, hook activations per layer, metrics [B, answer, metric]."""

    emb: Embedded
    resid_pre: dict[int, torch.Tensor]
    acts: dict[int, torch.Tensor]
    metrics: torch.Tensor


def cached_run(runner: Runner, tokens: torch.Tensor, lengths: torch.Tensor, answers: Answers, hook: str | None,
               layers: Sequence[int]) -> Cached:
    """Run B examples once, keeping resid_pre and `hook`'s activation at each of `layers`."""
    emb = runner.embed(tokens, lengths)
    resid_pre: dict[int, torch.Tensor] = {}
    acts: dict[int, torch.Tensor] = {}

    def keep(store: dict[int, torch.Tensor], layer: int) -> Any:
        def fn(x: torch.Tensor, hook: Any) -> None:
            store[layer] = x.detach().clone()
        return fn

    hooks = [(f"blocks.{layer}.hook_resid_pre", keep(resid_pre, layer)) for layer in layers]
    if hook is not None:
        hooks += [(hook_name(hook, layer), keep(acts, layer)) for layer in layers]
    final = runner.run(emb, emb.resid, 0, hooks)
    return Cached(emb, resid_pre, acts, answers.read(runner, final))


def patch_batch(runner: Runner, base: Cached, sources: dict[int, torch.Tensor], hook: str, targets: Targets,
                slots: torch.Tensor | None, answers: Answers, rows: int) -> torch.Tensor:
    """Metrics of every target's patched run: [T, B, answer, metric].

    base:    the run that is patched (its resid_pre starts each variant)
    sources: layer -> [B, ...] the values written into the target slices
    slots:   [B, slot] positions of the sweep's position slots in each example (-1: absent), or
             None for grains without positions
    """
    kind = hook
    b = base.emb.resid.shape[0]
    out = torch.empty(len(targets), b, *base.metrics.shape[1:], device=base.metrics.device)
    per_pass = max(1, rows // b)
    for layer in targets.layers:
        idx = targets.at_layer(layer)
        for g in range(0, len(idx), per_pass):
            group = idx[g:g + per_pass]
            head = torch.as_tensor(targets.head[group], device=runner.device)
            pos = None
            if slots is not None:
                slot = torch.as_tensor(targets.slot[group], device=runner.device)
                pos = slots[:, slot].T  # [T, B]

            def write(x: torch.Tensor, hook: Any, head: torch.Tensor = head, pos: torch.Tensor | None = pos,
                      layer: int = layer, kind: str = kind) -> torch.Tensor:
                replace(x, sources[layer], kind, head, pos)
                return x

            resid = base.resid_pre[layer].repeat(len(group), 1, 1)
            final = runner.run(base.emb, resid, layer, [(hook_name(hook, layer), write)])
            out[torch.as_tensor(group, device=out.device)] = answers.read(runner, final).view(len(group), b,
                                                                                             *out.shape[2:])
    return out


def slot_positions(slots: np.ndarray | None, device: torch.device) -> torch.Tensor | None:
    return None if slots is None else torch.as_tensor(slots, device=device)
