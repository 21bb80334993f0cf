"""Running a model over padded task examples, with padding masked.

Examples are right-padded. Causal models get attention_mask = (pos < length), which
TransformerLens applies inside causal attention. TransformerLens 3.9 ignores attention_mask
for bidirectional attention, so for those models a hook on every layer's `hook_attn_scores`
sets the scores of pad keys to -inf before the softmax: real positions then never see padding,
and the output at position 0 does not depend on what the pad tokens are. Whoever runs a
bidirectional zoo model (ingest included) must mask the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from actstore.datasets.base import TaskData


@dataclass
class Batch:
    """Padded examples as tensors.

    tokens:        [example, pos] int64
    lengths:       [example] int64
    answer_pos:    [example, answer] int64
    answer_tokens: [example, answer] int64
    counter_tokens:[example, answer] int64, or None
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    answer_pos: torch.Tensor
    answer_tokens: torch.Tensor
    counter_tokens: torch.Tensor | None = None

    def to(self, device: str | torch.device) -> "Batch":
        return Batch(self.tokens.to(device), self.lengths.to(device), self.answer_pos.to(device),
                     self.answer_tokens.to(device),
                     None if self.counter_tokens is None else self.counter_tokens.to(device))


def as_batch(data: TaskData) -> Batch:
    """A TaskData (or a slice of one) as tensors."""
    counter = None if data.counter_tokens is None else torch.from_numpy(np.ascontiguousarray(data.counter_tokens))
    return Batch(
        tokens=torch.from_numpy(np.ascontiguousarray(data.tokens)),
        lengths=torch.from_numpy(np.ascontiguousarray(data.lengths)),
        answer_pos=torch.from_numpy(np.ascontiguousarray(data.answer_pos)),
        answer_tokens=torch.from_numpy(np.ascontiguousarray(data.answer_tokens)),
        counter_tokens=counter,
    )


def concat_batches(parts: list[TaskData], pad_id: int) -> Batch:
    """Examples of several tasks (one answer each, or equal answer counts) in one padded batch."""
    width = max(p.tokens.shape[1] for p in parts)
    tokens = np.full((sum(len(p) for p in parts), width), pad_id, dtype=np.int64)  # [example, pos]
    row = 0
    for p in parts:
        tokens[row : row + len(p), : p.tokens.shape[1]] = p.tokens
        row += len(p)
    cat = lambda name: torch.from_numpy(np.concatenate([getattr(p, name) for p in parts]))  # noqa: E731
    has_counter = all(p.counter_tokens is not None for p in parts)
    return Batch(torch.from_numpy(tokens), cat("lengths"), cat("answer_pos"), cat("answer_tokens"),
                 cat("counter_tokens") if has_counter else None)


def key_mask(tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[example, pos] bool, True on real tokens."""
    return torch.arange(tokens.shape[1], device=tokens.device)[None, :] < lengths[:, None]


def pad_key_hooks(mask: torch.Tensor, n_layers: int) -> list[tuple[str, Callable]]:
    """fwd_hooks that send every attention score on a pad key to -inf (mask: [example, key_pos])."""

    def hook(scores: torch.Tensor, hook: Any) -> torch.Tensor:  # [example, head, query_pos, key_pos]
        return scores.masked_fill(~mask[:, None, None, :], float("-inf"))

    return [(f"blocks.{layer}.attn.hook_attn_scores", hook) for layer in range(n_layers)]


def masked_logits(model: Any, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Logits [example, pos, vocab_out] of right-padded tokens with padding masked."""
    mask = key_mask(tokens, lengths)
    if model.cfg.attention_dir == "bidirectional":
        return model.run_with_hooks(tokens, fwd_hooks=pad_key_hooks(mask, model.cfg.n_layers))
    if bool(mask.all()):
        return model(tokens)
    return model(tokens, attention_mask=mask.long())


def gather_answers(logits: torch.Tensor, answer_pos: torch.Tensor) -> torch.Tensor:
    """[example, pos, vocab] -> [example, answer, vocab] at the answer positions."""
    rows = torch.arange(logits.shape[0], device=logits.device)[:, None]
    return logits[rows, answer_pos]


def iter_answer_logits(model: Any, data: TaskData, batch_size: int = 512) -> Iterator[tuple[int, torch.Tensor]]:
    """(start, float32 logits [example, answer, vocab_out]) per batch of `data`, without gradients."""
    device = model.cfg.device
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            b = as_batch(data.slice(start, min(start + batch_size, len(data)))).to(device)
            logits = masked_logits(model, b.tokens, b.lengths)
            yield start, gather_answers(logits, b.answer_pos).float()
