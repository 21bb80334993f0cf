"""Forward passes that start at a layer and read logits only at the answer positions.

A patched run is identical to the unpatched one before the patched layer, so every patched
variant starts from the base run's `resid_pre` of that layer (`start_at_layer`), and the
variants of one layer run stacked along the batch: rows t*B + b are target t on example b.
Logits are computed at the answer positions only ([rows, answer, vocab], never [rows, pos, vocab]).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from actstore.store.arch import Arch

Hook = tuple[str, Callable[..., Any]]


@dataclass
class Embedded:
    """What every block needs besides the residual, for B examples (repeat() stacks variants).

    resid:     [B, pos, d_model] the embedding (input to block 0)
    pos_embed: [B, pos, d_model] shortformer positional embedding, or None
    mask:      [B, pos] 1 on real tokens (right padding)
    """

    resid: torch.Tensor
    pos_embed: torch.Tensor | None
    mask: torch.Tensor

    def repeat(self, t: int) -> "Embedded":
        if t == 1:
            return self
        pe = None if self.pos_embed is None else self.pos_embed.repeat(t, 1, 1)
        return Embedded(self.resid.repeat(t, 1, 1), pe, self.mask.repeat(t, 1))


class Runner:
    """A HookedTransformer run block by block with the attention mask the ingest used."""

    def __init__(self, net: Any) -> None:
        self.net = net
        self.n_layers = int(net.cfg.n_layers)
        self.bidirectional = getattr(net.cfg, "attention_dir", "causal") == "bidirectional"
        self.device = next(net.parameters()).device
        cap = getattr(net.cfg, "output_logits_soft_cap", -1.0)
        self.soft_cap = float(cap) if cap and cap > 0 else None

    def embed(self, tokens: torch.Tensor, lengths: torch.Tensor) -> Embedded:
        """tokens: [B, pos] right-padded; lengths: [B]."""
        mask = (torch.arange(tokens.shape[1], device=tokens.device)[None, :] < lengths[:, None]).long()
        resid, _, pos_embed, mask_out = self.net.input_to_embed(tokens, attention_mask=mask)
        return Embedded(resid, pos_embed, mask if mask_out is None else mask_out)

    def run(self, emb: Embedded, resid: torch.Tensor, start: int, hooks: Sequence[Hook] = ()) -> torch.Tensor:
        """Blocks start..n_layers-1 on `resid` ([R, pos, d_model], R = a multiple of emb's rows) with
        `hooks`; returns the final residual [R, pos, d_model] before the final LayerNorm."""
        rows = resid.shape[0]
        emb = emb.repeat(rows // emb.resid.shape[0])
        fwd = list(hooks)
        if self.bidirectional:  # TransformerLens ignores the mask for bidirectional attention: mask pad keys
            keys = emb.mask.bool()[:, None, None, :]

            def mask_pads(scores: torch.Tensor, hook: Any) -> torch.Tensor:
                return scores.masked_fill(~keys, float("-inf"))

            fwd += [(Arch.attn_scores(layer), mask_pads) for layer in range(start, self.n_layers)]
        with self.net.hooks(fwd_hooks=fwd):
            return self.net(resid, start_at_layer=start, stop_at_layer=self.n_layers,
                            shortformer_pos_embed=emb.pos_embed, attention_mask=emb.mask)

    def answer_logits(self, final: torch.Tensor, answer_pos: torch.Tensor) -> torch.Tensor:
        """final: [R, pos, d_model]; answer_pos: [B, answer] with R = t * B -> [R, answer, vocab] float32."""
        t = final.shape[0] // answer_pos.shape[0]
        pos = answer_pos.repeat(t, 1)
        rows = torch.arange(final.shape[0], device=final.device)[:, None]
        x = final[rows, pos]  # [R, answer, d_model]
        if self.net.cfg.normalization_type is not None:
            x = self.net.ln_final(x)
        logits = self.net.unembed(x).float()
        if self.soft_cap is not None:
            logits = self.soft_cap * torch.tanh(logits / self.soft_cap)
        return logits


def metric_values(logits: torch.Tensor, answer: torch.Tensor, counter: torch.Tensor | None,
                  metrics: Sequence[str]) -> torch.Tensor:
    """logits: [R, answer, vocab]; answer, counter: [B, answer] token ids (R = t * B)
    -> [R, answer, metric] float32, in the order of `metrics`."""
    t = logits.shape[0] // answer.shape[0]
    ans = answer.repeat(t, 1)[..., None]
    correct = logits.gather(-1, ans)[..., 0]
    out = []
    logprob = None
    for m in metrics:
        if m == "logit_diff":
            if counter is None:
                raise RuntimeError("logit_diff needs counter tokens")  # checked before a sweep starts
            out.append(correct - logits.gather(-1, counter.repeat(t, 1)[..., None])[..., 0])
        elif m == "correct_logit":
            out.append(correct)
        else:
            if logprob is None:
                logprob = logits.log_softmax(-1).gather(-1, ans)[..., 0]
            out.append(logprob if m == "logprob" else -logprob)
    return torch.stack(out, dim=-1)
