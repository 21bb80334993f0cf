"""Path patching of one batch, as the IOI work does it: a sender head's effect through the receivers only.

Pass 1 (per sender, variants stacked): from the sender's layer, every head's output z is frozen
to the base run's, except the sender's, which takes the source run's; MLPs recompute. With
receivers 'logits' the metric is read here (the sender's path to the logits through the residual
stream and MLPs, no other head). With receiver heads, their input (q, k or v) is captured.
Pass 2: the base run from the first receiver layer with only the receivers' inputs replaced by
the captured ones; everything downstream recomputes. Receivers at or before the sender's layer
see no change and are left as they are.
"""

from __future__ import annotations

from typing import Any

import torch

from actstore.interventions.forward import Runner
from actstore.interventions.patching import Answers, Cached
from actstore.interventions.targets import Targets, hook_name, replace


def path_batch(runner: Runner, base: Cached, source: Cached, senders: Targets, receivers: list[tuple[int, int]] | None,
               receiver_input: str | None, answers: Answers, rows: int) -> torch.Tensor:
    """Metrics per sender: [T, B, answer, metric]. base.acts / source.acts hold z at every layer
    (base) and at the senders' layers (source); receivers None means the logits."""
    b = base.emb.resid.shape[0]
    out = torch.empty(len(senders), b, *base.metrics.shape[1:], device=base.metrics.device)
    per_pass = max(1, rows // b)
    n_layers = runner.n_layers
    for layer in senders.layers:
        idx = senders.at_layer(layer)
        for g in range(0, len(idx), per_pass):
            group = idx[g:g + per_pass]
            t = len(group)
            head = torch.as_tensor(senders.head[group], device=runner.device)
            captured: dict[int, torch.Tensor] = {}

            def freeze(x: torch.Tensor, hook_point: Any, at: int, t: int = t, head: torch.Tensor = head,
                       sender_layer: int = layer) -> torch.Tensor:
                x.copy_(base.acts[at].repeat(t, 1, 1, 1))
                if at == sender_layer:
                    replace(x, source.acts[at], "z", head, None)
                return x

            def capture(x: torch.Tensor, hook_point: Any, at: int,
                        captured: dict[int, torch.Tensor] = captured) -> None:
                captured[at] = x.detach().clone()

            hooks = [(hook_name("z", at), _bind(freeze, at)) for at in range(layer, n_layers)]
            later = sorted({r for r, _ in receivers or [] if r > layer})
            if receivers is not None and receiver_input is not None:
                hooks += [(hook_name(receiver_input, at), _bind(capture, at)) for at in later]
            final = runner.run(base.emb, base.resid_pre[layer].repeat(t, 1, 1), layer, hooks)
            if receivers is None:
                values = answers.read(runner, final)
            elif not later:
                values = base.metrics.repeat(t, 1, 1)
            else:
                values = _receive(runner, base, captured, receivers, receiver_input or "q", later, t, answers)
            out[torch.as_tensor(group, device=out.device)] = values.view(t, b, *out.shape[2:])
    return out


def _bind(fn: Any, at: int) -> Any:
    def hook(x: torch.Tensor, hook: Any) -> Any:
        return fn(x, hook, at)
    return hook


def _receive(runner: Runner, base: Cached, captured: dict[int, torch.Tensor], receivers: list[tuple[int, int]],
             receiver_input: str, later: list[int], t: int, answers: Answers) -> torch.Tensor:
    """Pass 2: the base run from the first later receiver layer, receivers' inputs set to `captured`."""
    def patch(x: torch.Tensor, hook: Any, at: int) -> torch.Tensor:
        for r, h in receivers:
            if r == at:
                x[:, :, h] = captured[at][:, :, h]
        return x

    start = later[0]
    hooks = [(hook_name(receiver_input, at), _bind(patch, at)) for at in later]
    final = runner.run(base.emb, base.resid_pre[start].repeat(t, 1, 1), start, hooks)
    return answers.read(runner, final)
