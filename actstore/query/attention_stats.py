"""Attention statistics over one chunk of stored patterns: pure numpy, no store.

The pattern of a layer is [example, head, query, key_pos]; its query axis holds either every
position (query entry i is position i) or the answer positions only (entry j is position
answer_pos[e, j]), so callers pass `q_pos`, the position of each query entry. Aggregation works
on the selected query *rows* gathered as [row, head, key_pos].

A query row's candidate keys are its example's real positions (k < length) and, for a causal
model, k <= q (later keys have probability 0 anyway). Selections of queries and keys are boolean
masks (see selectors.py). Aggregation works on *units*: one per (query row, head, key group),
its value the attention mass the row puts on the selected keys of that group (a single key
position, all keys of one role, or all selected keys). Units reduce per chunk to mergeable
moments per group key (n, mean, M2, entropy sum; `Moments`), so a store of any size aggregates
in one pass; `GroupKeys` packs a group's column codes into one int64.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from actstore.errors import InvalidParameterError

KEY_GROUPS = ("all", "pos", "role")  # how selected keys form units: together, per position, per role


def candidate_keys(q_pos: np.ndarray, lengths: np.ndarray, width: int, causal: bool) -> np.ndarray:
    """[..., key_pos] bool: keys a query can attend to (real, and k <= q if causal).

    q_pos: [...] position of each query (e.g. [example, query] or [row]); lengths: the same shape,
    its example's length.
    """
    k = np.arange(width)
    ok = k < np.asarray(lengths)[..., None]
    if causal:
        ok = ok & (k <= np.asarray(q_pos)[..., None])
    return ok


def selected_pairs(q_sel: np.ndarray, k_sel: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """[example, query, key_pos] bool: selected query rows x selected keys among the candidates.

    q_sel: [example, query]; k_sel: [example, key_pos]; candidates: [example, query, key_pos].
    """
    return q_sel[:, :, None] & k_sel[:, None, :] & candidates


def row_entropy(rows: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """[row, head] entropy (nats) of each query row over its candidate keys.

    rows: [row, head, key_pos] attention probabilities; candidates: [row, key_pos].
    """
    p = np.asarray(rows, dtype=np.float64) * candidates[:, None]
    logp = np.log(p, out=np.zeros_like(p), where=p > 0)
    return -np.einsum("rhk,rhk->rh", p, logp)


def raw_indices(pairs: np.ndarray, n_layers: int, n_heads: int) -> tuple[np.ndarray, ...]:
    """Indices (example, layer, head, query, key) of every selected pair, in that order.

    pairs: [example, query, key_pos] from `selected_pairs`; the same pairs in every layer and head.
    """
    e, q, k = pairs.shape
    return np.nonzero(np.broadcast_to(pairs[:, None, None], (e, n_layers, n_heads, q, k)))


def unit_masses(rows: np.ndarray, pairs: np.ndarray, key_group: str, key_roles: np.ndarray | None = None,
                n_roles: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Attention mass of each query row on each key group, and which units exist.

    rows: [row, head, key_pos] probabilities of the selected query rows; pairs: [row, key_pos] their
    selected keys. key_group: 'all' (one group: all selected keys), 'pos' (one group per key
    position) or 'role' (one group per key role code; key_roles [row, key_pos] codes, -1 -> group
    n_roles). Returns mass [row, head, group] float64 and exists [row, group] bool (a unit exists
    where the row has at least one selected key in the group).
    """
    p = np.asarray(rows, dtype=np.float64) * pairs[:, None]  # [row, head, key]
    if key_group == "all":
        return p.sum(axis=-1, keepdims=True), np.asarray(pairs.any(axis=-1, keepdims=True))
    if key_group == "pos":
        return p, pairs.copy()
    if key_group != "role" or key_roles is None:
        raise ValueError(f"key_group must be one of {KEY_GROUPS} (role needs key_roles), got {key_group!r}")
    group = np.where(key_roles < 0, n_roles, key_roles).astype(np.int64)  # [row, key]
    onehot = np.zeros((*group.shape, n_roles + 1))
    np.put_along_axis(onehot, group[..., None], 1.0, axis=-1)  # [row, key, group]
    onehot *= pairs[..., None]
    mass = np.matmul(p, onehot)  # [row, head, group]
    exists = np.asarray(onehot.any(axis=1))
    return mass, exists


class GroupKeys:
    """Group columns given as small integer codes, packed into one int64 key (mixed radix).

    radices: the number of codes of each column, most significant first; sorting keys sorts
    the groups by their columns' codes in that order.
    """

    def __init__(self, radices: Sequence[int], what: str = "groups") -> None:
        self.radices = [max(int(r), 1) for r in radices]
        if float(np.prod([float(r) for r in self.radices])) >= 2.0 ** 62:
            raise InvalidParameterError(f"{what}: too many possible groups ({' x '.join(map(str, self.radices))}); "
                                        f"group by fewer or coarser columns")

    def encode(self, codes: Sequence[np.ndarray]) -> np.ndarray:
        """[unit] keys from one [unit] code array per column."""
        key = np.zeros(np.asarray(codes[0]).shape, dtype=np.int64)
        for code, radix in zip(codes, self.radices):
            key = key * radix + np.asarray(code, dtype=np.int64)
        return key

    def decode(self, keys: np.ndarray) -> list[np.ndarray]:
        """One [group] code array per column."""
        out = []
        rest = np.asarray(keys, dtype=np.int64)
        for radix in reversed(self.radices):
            rest, code = np.divmod(rest, radix)
            out.append(code)
        return out[::-1]


@dataclass
class Moments:
    """Per group key: n, mean, m2 (sum of squared deviations from the mean), hsum (entropy sum)."""

    keys: np.ndarray
    n: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    hsum: np.ndarray

    @classmethod
    def of(cls, keys: np.ndarray, values: np.ndarray, entropy: np.ndarray) -> "Moments":
        """Moments of the units [unit] grouped by key."""
        uniq, inv = np.unique(keys, return_inverse=True)
        n = np.bincount(inv, minlength=uniq.size)
        mean = np.bincount(inv, values, minlength=uniq.size) / n
        m2 = np.bincount(inv, (values - mean[inv]) ** 2, minlength=uniq.size)
        return cls(uniq, n, mean, m2, np.bincount(inv, entropy, minlength=uniq.size))

    @classmethod
    def merge(cls, parts: Sequence["Moments"]) -> "Moments":
        """Combine moments of disjoint unit sets (Chan et al.'s parallel variance)."""
        keys = np.concatenate([p.keys for p in parts])
        n, mean, m2, hsum = (np.concatenate([getattr(p, f) for p in parts]) for f in ("n", "mean", "m2", "hsum"))
        uniq, inv = np.unique(keys, return_inverse=True)
        total = np.bincount(inv, n, minlength=uniq.size)
        grand = np.bincount(inv, n * mean, minlength=uniq.size) / total
        m2_all = np.bincount(inv, m2 + n * (mean - grand[inv]) ** 2, minlength=uniq.size)
        return cls(uniq, total.astype(np.int64), grand, m2_all, np.bincount(inv, hsum, minlength=uniq.size))

    def std(self) -> np.ndarray:
        """Sample standard deviation (ddof 1); NaN where n < 2."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.n > 1, np.sqrt(np.maximum(self.m2, 0) / (self.n - 1)), np.nan)

    def entropy(self) -> np.ndarray:
        return self.hsum / self.n
