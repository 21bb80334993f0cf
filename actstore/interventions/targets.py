"""What a sweep changes: TransformerLens hook names, the targets of a grain, and the in-place
replacement of a target's slice of an activation by the source's.

Activation layouts (TransformerLens):
- resid_pre / resid_mid / resid_post / attn_out / mlp_out: [batch, pos, d_model]
- z / q / k / v:                                          [batch, pos, head, d_head]
- pattern:                                                [batch, head, query_pos, key_pos]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from actstore.errors import InvalidParameterError, UnknownHookError
from actstore.interventions.spec import HEAD_HOOKS


def hook_name(hook: str, layer: int) -> str:
    """'z', 3 -> 'blocks.3.attn.hook_z'; 'resid_pre', 0 -> 'blocks.0.hook_resid_pre'."""
    return f"blocks.{layer}.attn.hook_{hook}" if hook in HEAD_HOOKS else f"blocks.{layer}.hook_{hook}"


def check_hook(hook: str, n_layers: int, hook_dict: dict[str, object]) -> None:
    """UnknownHookError if the model has no such hook (mlp_out / resid_mid of attention-only models)."""
    missing = [hook_name(hook, layer) for layer in range(n_layers) if hook_name(hook, layer) not in hook_dict]
    if missing:
        raise UnknownHookError(f"this model has no {missing[0]} (hook {hook!r}); attention-only models have no "
                               "mlp_out or resid_mid")


def to_token_major(x: torch.Tensor, hook: str) -> torch.Tensor:
    """A view with the (query) position axis second: pattern [b, head, q, k] -> [b, q, head, k]."""
    return x.movedim(2, 1) if hook == "pattern" else x


@dataclass(frozen=True)
class Targets:
    """The targets of a sweep, in table order: layer [T], head [T] (-1: the whole layer), slot [T]
    (-1: every position; else a column of the sweep's resolved positions)."""

    layer: np.ndarray
    head: np.ndarray
    slot: np.ndarray

    def __len__(self) -> int:
        return int(self.layer.shape[0])

    def at_layer(self, layer: int) -> np.ndarray:
        return np.nonzero(self.layer == layer)[0]

    @property
    def layers(self) -> list[int]:
        return sorted({int(x) for x in self.layer})


def make_targets(grain: str, n_layers: int, n_heads: int, n_slots: int, layers: list[int] | None = None) -> Targets:
    """Targets of `grain` over `layers` (default all): layer-major, then head, then slot."""
    ls = list(range(n_layers)) if layers is None else layers
    for layer in ls:
        if not 0 <= layer < n_layers:
            raise InvalidParameterError(f"layer {layer} is outside 0..{n_layers - 1}")
    heads = list(range(n_heads)) if grain.startswith("head") else [-1]
    slots = list(range(n_slots)) if grain.endswith(",pos") else [-1]
    grid = np.array([(lay, h, s) for lay in ls for h in heads for s in slots], dtype=np.int64).reshape(-1, 3)
    return Targets(grid[:, 0], grid[:, 1], grid[:, 2])


def replace(act: torch.Tensor, src: torch.Tensor, hook: str, head: torch.Tensor, pos: torch.Tensor | None) -> None:
    """Write the source's value of each target into `act`, in place.

    act:  [T*B, ...] the activation of T stacked variants of B examples (row t*B + b)
    src:  [B, ...] the source activation of the B examples (same layout)
    head: [T] the head of each variant (-1: all heads / a layer-level hook)
    pos:  [T, B] the position of each variant in each example (-1: none there), or None: every position
    """
    rows_n, b = act.shape[0], src.shape[0]
    t = rows_n // b
    a, s = to_token_major(act, hook), to_token_major(src, hook)  # [R, pos, (head,) ...]
    rows = torch.arange(rows_n, device=act.device)
    ex = rows % b
    if pos is None:
        if (head < 0).all():
            a.copy_(s.repeat(t, *([1] * (s.dim() - 1))))
            return
        h = head.repeat_interleave(b)
        a[rows, :, h] = s[ex, :, h]
        return
    p = pos.reshape(rows_n)
    keep = p >= 0
    rows, ex, p = rows[keep], ex[keep], p[keep]
    if (head < 0).all():
        a[rows, p] = s[ex, p]
    else:
        h = head.repeat_interleave(b)[keep]
        a[rows, p, h] = s[ex, p, h]
