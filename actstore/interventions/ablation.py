"""What an ablation writes into a target: zeros, a mean over a group of tokens, or another example's value.

Means are over every committed example of the store, per token group:
- all:          one mean over every real token
- pos:          one per position index (over the examples that reach it)
- role:         one per role (tokens without a role form one more group)
- label:COLUMN: one per (label value, position index)
They come from the store's own activations when the hook is stored at every position (in the
stored dtype; no forward pass), otherwise from one pass of the model over the examples.
Resampling takes the activation of another example of the same length (a fixed derangement of
the sweep's examples, by `seed`), at the same positions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import polars as pl
import torch

from actstore.errors import InvalidParameterError
from actstore.interventions.pairs import Pairs
from actstore.interventions.targets import hook_name, to_token_major
from actstore.store.reader import Store


def token_groups(pairs: Pairs, over: str, examples: pl.DataFrame) -> tuple[np.ndarray, int]:
    """([n, pos] group id of each token, -1 on padding; number of groups) for `--mean-over`."""
    n, width = pairs.tokens.shape
    real = np.arange(width)[None, :] < pairs.lengths[:, None]
    if over == "all":
        gid = np.zeros((n, width), dtype=np.int64)
        count = 1
    elif over == "pos":
        gid = np.broadcast_to(np.arange(width), (n, width)).astype(np.int64)
        count = width
    elif over == "role":
        names = sorted({str(r) for r in np.unique(pairs.roles)} - {""})
        lookup = {r: i + 1 for i, r in enumerate(names)}  # 0: tokens without a role
        gid = np.vectorize(lambda r: lookup.get(r, 0), otypes=[np.int64])(pairs.roles)
        count = len(names) + 1
    else:
        column = over.removeprefix("label:")
        if column not in examples.columns:
            raise InvalidParameterError(f"--mean-over label:{column}: no label column {column!r}; labels: "
                                        f"{', '.join(c for c in examples.columns if c not in _NOT_LABELS)}")
        values = examples.sort("example_id")[column].cast(pl.String).fill_null("<null>")
        codes = values.rank("dense").cast(pl.Int64).to_numpy() - 1
        gid = codes[:, None] * width + np.arange(width)[None, :]
        count = int(codes.max() + 1) * width
    return np.where(real, gid, -1), count


_NOT_LABELS = {"example_id", "split", "text", "tokens", "length", "answer_positions", "answer_tokens",
               "counter_tokens", "corrupted_tokens"}


def group_means(chunks: Iterator[tuple[np.ndarray, dict[int, torch.Tensor]]], n_groups: int,
                layers: list[int], hook: str) -> dict[int, torch.Tensor]:
    """Per layer [group, ...token shape] means from (gid [n, pos], {layer: [n, ...] activation}) chunks."""
    sums: dict[int, torch.Tensor] = {}
    counts = torch.zeros(n_groups, dtype=torch.float64)
    for gid, acts in chunks:
        g = torch.as_tensor(gid.reshape(-1))
        keep = g >= 0
        counts += torch.bincount(g[keep], minlength=n_groups).double()
        for layer in layers:
            tok = to_token_major(acts[layer].double(), hook)  # [n, pos, ...]
            flat = tok.reshape(-1, *tok.shape[2:])[keep]
            if layer not in sums:
                sums[layer] = torch.zeros(n_groups, *flat.shape[1:], dtype=torch.float64)
            sums[layer].index_add_(0, g[keep], flat)
    safe = counts.clamp(min=1).view(-1, *([1] * (next(iter(sums.values())).dim() - 1)))
    return {layer: (s / safe).float() for layer, s in sums.items()}


def store_chunks(store: Store, hook: str, layers: list[int], groups: np.ndarray
                 ) -> Iterator[tuple[np.ndarray, dict[int, torch.Tensor]]] | None:
    """The stored activations of `hook` at `layers`, chunk by chunk, or None if any is not stored
    at every position."""
    names = [hook_name(hook, layer) for layer in layers]
    if any(n not in store.hooks or store.hook_info(n).positions != "all" for n in names):
        return None

    def gen() -> Iterator[tuple[np.ndarray, dict[int, torch.Tensor]]]:
        for start, stop in store.chunks():
            acts = {layer: torch.as_tensor(store.read(name, start, stop).astype(np.float32))
                    for layer, name in zip(layers, names)}
            yield groups[start:stop], acts
    return gen()


Chunk = tuple[np.ndarray, dict[int, torch.Tensor]]  # (group id [n, pos], {layer: [n, ...] activation})


def model_chunks(every: Pairs, groups: np.ndarray, batch: int,
                 run: Callable[[Pairs], dict[int, torch.Tensor]]) -> Iterator[Chunk]:
    """`run(pairs)` ({layer: [n, ...]} activations on the clean tokens) over every example, batch by batch."""
    for start in range(0, len(every), batch):
        stop = min(start + batch, len(every))
        yield groups[start:stop], run(every.take(slice(start, stop)))


def mean_source(means: torch.Tensor, gid: np.ndarray, hook: str) -> torch.Tensor:
    """The mean of each token's group, in the hook's layout: gid [B, pos] -> [B, ...]."""
    g = torch.as_tensor(np.maximum(gid, 0), device=means.device)
    tok = means[g]  # [B, pos, ...token shape]
    return tok.movedim(1, 2).contiguous() if hook == "pattern" else tok


def derangement(lengths: np.ndarray, seed: int) -> np.ndarray:
    """For each example, another example of the same length (itself only when it has no peer)."""
    rng = np.random.default_rng(seed)
    out = np.arange(lengths.shape[0])
    for length in np.unique(lengths):
        members = np.nonzero(lengths == length)[0]
        if members.size > 1:
            order = rng.permutation(members)
            out[order] = np.roll(order, 1)
    return out
