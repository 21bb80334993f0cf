"""`pca(store, hook, pos, k, color)`: principal components of a hook's value at one position.

    pca(store, hook=None, pos=None, k=2, color=None, where=None) -> PCA

Rows: each example's value of `hook` at position item `pos` (probe_data: a position, a role,
'answer:J'; default 'answer:0'), every other axis flattened (hook_z: head x d_head). hook None
is the deepest stored residual hook (else the last hook_z). Examples without the position, or
outside `where`, are left out.

Streamed in two passes with bounded memory: the first sums the rows' mean and d x d covariance
(Moments, float64), whose eigenvectors are the components; the second projects each row on the
top k. `PCA.scores`: example_id, pc1 .. pck, then the `color` label column(s) (their values, for
colouring); `PCA.variance`: component, variance (the covariance's eigenvalue, n - 1 in the
denominator), ratio (of the total variance), cumulative. Each component's sign is fixed so that
its largest-magnitude loading is positive (the same components as numpy.linalg.svd of the
centred rows, up to that sign).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from actstore.errors import InvalidParameterError
from actstore.query.chunks import ExampleArrays
from actstore.query.moments import Moments
from actstore.query.probe_data import (
    PosItem, feature_count, probe_hooks, resolve_positions, stored_index, stream_rows)
from actstore.query.selectors import check_labels, example_filter
from actstore.store.reader import Store

VARIANCE_SCHEMA = {"component": pl.Int64, "variance": pl.Float64, "ratio": pl.Float64, "cumulative": pl.Float64}


@dataclass(frozen=True)
class PCA:
    """Principal components of one hook at one position."""

    hook: str
    pos: str                 # the position item as tables show it ('answer:0', '=', '3')
    scores: pl.DataFrame     # example_id, pc1 .. pck, color labels
    variance: pl.DataFrame   # component, variance, ratio, cumulative
    components: np.ndarray   # [k, features] unit rows
    mean: np.ndarray         # [features]


def default_hook(store: Store) -> str:
    """The hook a PCA reads by default: the last of the probe's default hooks (the deepest residual)."""
    return probe_hooks(store)[-1]


def pca(store: Store, hook: str | None = None, pos: PosItem | None = None, k: int = 2,
        color: str | Sequence[str] | None = None, where: pl.Expr | Mapping[str, Any] | None = None) -> PCA:
    """Top `k` principal components of `hook` at `pos` over the examples (see the module doc)."""
    name = default_hook(store) if hook is None else _one_hook(store, hook)
    if isinstance(pos, (list, tuple)) or pos == "all":
        raise InvalidParameterError(f"pca reads one position; got pos={pos!r} (give one position, role or "
                                    "'answer:J')")
    labels = [] if color is None else [color] if isinstance(color, str) else list(color)
    check_labels(store.examples, labels, "pca color")
    d = feature_count(store, name)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= d:
        raise InvalidParameterError(f"pca k={k!r}: expected a number of components in 1..{d} (the features of "
                                    f"{name} at one position)")
    examples = store.examples
    arrays = ExampleArrays.from_examples(examples, store.n_answers)
    (item,) = resolve_positions(store, pos, arrays)
    index = [stored_index(store, name, item, arrays)]
    kept = example_filter(examples, where)
    keep = np.ones(arrays.example_id.size, dtype=bool) if kept is None else kept

    moments = Moments(d)
    for ((_, x),) in stream_rows(store, name, index, keep, arrays, f"pca {name} (covariance)"):
        moments.add(x)
    if moments.n < 2:
        raise InvalidParameterError(f"pca of {name} at pos {item.name}: {moments.n} example(s) have that position; "
                                    "principal components need two")
    lam, vec = np.linalg.eigh(moments.scatter() / (moments.n - 1))
    lam, vec = np.clip(lam[::-1], 0.0, None), vec[:, ::-1]
    top = vec[:, :k].T.copy()  # [k, F]
    flip = np.sign(top[np.arange(k), np.argmax(np.abs(top), axis=1)])
    top *= np.where(flip == 0, 1.0, flip)[:, None]
    mean = moments.mean

    ids, parts = [], []
    for ((ex, x),) in stream_rows(store, name, index, keep, arrays, f"pca {name} (scores)"):
        ids.append(arrays.example_id[ex])
        parts.append((x - mean) @ top.T)
    score = np.concatenate(parts) if parts else np.zeros((0, k))
    table = pl.DataFrame({"example_id": np.concatenate(ids) if ids else np.zeros(0, np.int64),
                          **{f"pc{j + 1}": score[:, j] for j in range(k)}})
    if labels:
        table = table.join(examples.select("example_id", *labels), on="example_id", how="left")
    total = float(lam.sum())
    ratio = lam[:k] / total if total > 0 else np.zeros(k)
    variance = pl.DataFrame({"component": np.arange(1, k + 1), "variance": lam[:k], "ratio": ratio,
                             "cumulative": np.cumsum(ratio)}, schema=VARIANCE_SCHEMA)
    return PCA(name, item.name, table, variance, top, mean)


def _one_hook(store: Store, hook: str) -> str:
    names = probe_hooks(store, hook)
    if len(names) != 1:
        raise InvalidParameterError(f"pca reads one hook; {hook!r} names {len(names)} ({', '.join(names[:4])}"
                                    f"{' ...' if len(names) > 4 else ''})")
    return names[0]


__all__ = ["PCA", "VARIANCE_SCHEMA", "default_hook", "pca"]
