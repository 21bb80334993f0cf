"""Attention statistics over one chunk of stored patterns: pure numpy, no store.

The pattern of a layer is [example, head, query, key_pos]; its query axis holds either every
position (query entry i is position i) or the answer positions only (entry j is position
answer_pos[e, j]), so every function takes `q_pos` [example, query], the position of each entry.

A query row's candidate keys are its example's real positions (k < length) and, for a causal
model, k <= q (later keys have probability 0 anyway). Selections of queries and keys are boolean
masks (see selectors.py). Aggregation works on *units*: one per (example, head, query row, key
group), its value the attention mass the row puts on the selected keys of that group (a single
key position, all keys of one role, or all selected keys). Units reduce per chunk to mergeable
moments (n, mean, M2, entropy sum) so a store of any size aggregates in one pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

KEY_GROUPS = ("all", "pos", "role")  # how selected keys form units: together, per position, per role
MOMENT_COLUMNS = ("n", "mean", "m2", "hsum")


def candidate_keys(q_pos: np.ndarray, lengths: np.ndarray, width: int, causal: bool) -> np.ndarray:
    """[example, query, key_pos] bool: keys a query row can attend to (real, and k <= q if causal).

    q_pos: [example, query] position of each query entry; lengths: [example].
    """
    k = np.arange(width)
    ok = k[None, None, :] < np.asarray(lengths)[:, None, None]  # [example, 1, key]
    if causal:
        ok = ok & (k[None, None, :] <= q_pos[:, :, None])
    return np.broadcast_to(ok, (q_pos.shape[0], q_pos.shape[1], width))


def selected_pairs(q_sel: np.ndarray, k_sel: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """[example, query, key_pos] bool: selected query rows x selected keys among the candidates.

    q_sel: [example, query]; k_sel: [example, key_pos]; candidates: from `candidate_keys`.
    """
    return q_sel[:, :, None] & k_sel[:, None, :] & candidates


def row_entropy(pattern: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """[example, head, query] entropy (nats) of each query row over its candidate keys.

    pattern: [example, head, query, key_pos]; candidates: [example, query, key_pos].
    """
    p = np.where(candidates[:, None], pattern, 0.0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return -terms.sum(axis=-1)


def raw_indices(pairs: np.ndarray, n_layers: int, n_heads: int) -> tuple[np.ndarray, ...]:
    """Indices (example, layer, head, query, key) of every selected pair, in that order.

    pairs: [example, query, key_pos] from `selected_pairs`; the same pairs in every layer and head.
    """
    e, q, k = pairs.shape
    return np.nonzero(np.broadcast_to(pairs[:, None, None], (e, n_layers, n_heads, q, k)))


def unit_masses(pattern: np.ndarray, pairs: np.ndarray, key_group: str, key_roles: np.ndarray | None = None,
                n_roles: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Attention mass of each query row on each key group, and which units exist.

    pattern: [example, head, query, key_pos]; pairs: [example, query, key_pos] selected pairs.
    key_group: 'all' (one group: all selected keys), 'pos' (one group per key position) or
    'role' (one group per key role code; key_roles [example, key_pos] codes, -1 -> group n_roles).
    Returns mass [example, head, query, group] float64 and exists [example, query, group] bool
    (a unit exists where the row has at least one selected key in the group).
    """
    p = np.where(pairs[:, None], pattern, 0.0).astype(np.float64)  # [example, head, query, key]
    if key_group == "all":
        return p.sum(axis=-1, keepdims=True), pairs.any(axis=-1, keepdims=True)
    if key_group == "pos":
        return p, pairs.copy()
    if key_group != "role" or key_roles is None:
        raise ValueError(f"key_group must be one of {KEY_GROUPS} (role needs key_roles), got {key_group!r}")
    group = np.where(key_roles < 0, n_roles, key_roles).astype(np.int64)  # [example, key]
    onehot = np.zeros((*group.shape, n_roles + 1))
    np.put_along_axis(onehot, group[..., None], 1.0, axis=-1)  # [example, key, group]
    mass = np.einsum("ehqk,ekg->ehqg", p, onehot)
    exists = np.einsum("eqk,ekg->eqg", pairs.astype(np.float64), onehot) > 0
    return mass, exists


def partial_moments(units: pl.DataFrame, group_cols: Sequence[str], value: str = "value",
                    entropy: str = "entropy") -> pl.DataFrame:
    """Per group: n, mean, m2 (sum of squared deviations from the mean) and hsum (entropy sum)."""
    v = pl.col(value)
    return units.group_by(list(group_cols)).agg(
        n=pl.len().cast(pl.Int64),
        mean=v.mean(),
        m2=((v - v.mean()) ** 2).sum(),
        hsum=pl.col(entropy).sum(),
    )


def merge_moments(partials: pl.DataFrame, group_cols: Sequence[str]) -> pl.DataFrame:
    """Combine per-chunk moments (Chan et al.'s parallel variance) into mean, std, n, entropy.

    std is the sample standard deviation (ddof 1; null for n < 2); entropy the mean entropy of
    the units' query rows.
    """
    keys = list(group_cols)
    total = pl.col("n").sum()
    grand = (pl.col("n") * pl.col("mean")).sum() / total
    with_grand = partials.with_columns(_grand=grand.over(keys, mapping_strategy="group_to_rows") if keys else grand)
    merged = with_grand.group_by(keys, maintain_order=True).agg(
        mean=pl.col("_grand").first(),
        _m2=(pl.col("m2") + pl.col("n") * (pl.col("mean") - pl.col("_grand")) ** 2).sum(),
        n=total,
        entropy=pl.col("hsum").sum() / total,
    ) if keys else with_grand.select(
        mean=pl.col("_grand").first(),
        _m2=(pl.col("m2") + pl.col("n") * (pl.col("mean") - pl.col("_grand")) ** 2).sum(),
        n=total,
        entropy=pl.col("hsum").sum() / total,
    )
    std = pl.when(pl.col("n") > 1).then((pl.col("_m2") / (pl.col("n") - 1)).clip(lower_bound=0).sqrt())
    return merged.with_columns(std=std).select(*keys, "mean", "std", "n", "entropy")
