"""Tables compared across issue 14's change of head DLA's sums (float32 einsum -> exact float64 products in a fixed
order, query/head_dot.py): the same rows and keys, and values within float32 rounding of the table's largest."""

from __future__ import annotations

import numpy as np
import polars as pl


def within_rounding(new: pl.DataFrame, old: pl.DataFrame, rel: float = 1e-5) -> bool:
    """Every column but `value` equal; `value`'s NaN and inf where old has them, finite values within rel x the
    largest finite |value| of old."""
    if new.schema != old.schema or new.height != old.height or not new.drop("value").equals(old.drop("value")):
        return False
    a, b = new["value"].to_numpy(), old["value"].to_numpy()
    finite = np.isfinite(b)
    if not np.array_equal(np.isnan(a), np.isnan(b)) or not np.array_equal(a[np.isinf(b)], b[np.isinf(b)]):
        return False
    scale = float(np.abs(b[finite]).max()) if finite.any() else 0.0
    return bool(np.all(np.abs(a[finite] - b[finite]) <= rel * scale))
