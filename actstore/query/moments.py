"""Streamed first and second moments of feature rows: count, sum and Gram matrix, chunk by chunk.

What a linear probe (LDA) and PCA need from data that does not fit in memory: one pass adds
each chunk's rows; the d x d Gram matrix is small next to the rows. Sums are taken around a
fixed shift (the mean of the first rows added) in float64, so that the centred second moment
G - s s^T / n does not lose its digits to a large common offset (residual streams carry one).
"""

from __future__ import annotations

import numpy as np


class Moments:
    """n, shift c, s = sum(x - c) and G = sum((x - c)(x - c)^T) of the rows added so far."""

    def __init__(self, d: int, shift: np.ndarray | None = None) -> None:
        self.d = d
        self.n = 0
        self.shift = shift
        self.sum = np.zeros(d)
        self.gram = np.zeros((d, d))

    def add(self, x: np.ndarray) -> np.ndarray:
        """Add rows x [row, d]; returns them shifted (x - c, float64) for per-class sums."""
        x = np.asarray(x, dtype=np.float64)
        if self.shift is None:
            if not x.shape[0]:
                return x
            self.shift = x.mean(axis=0)
        xs = x - self.shift
        self.n += xs.shape[0]
        self.sum += xs.sum(axis=0)
        self.gram += xs.T @ xs
        return xs

    def minus(self, other: "Moments") -> "Moments":
        """The moments of the rows added here but not to `other` (a subset of them, added with the same shift)."""
        if other.n and (self.shift is None or other.shift is None or not np.array_equal(self.shift, other.shift)):
            raise ValueError("Moments.minus: the subset was not summed around the same shift")
        out = Moments(self.d, self.shift)
        out.n, out.sum, out.gram = self.n - other.n, self.sum - other.sum, self.gram - other.gram
        return out

    def centred(self, x: np.ndarray) -> np.ndarray:
        """Rows x [row, d] shifted by c (the coordinates the sums are in)."""
        shift = self.shift if self.shift is not None else np.zeros(self.d)
        return np.asarray(x, dtype=np.float64) - shift

    @property
    def mean(self) -> np.ndarray:
        shift = self.shift if self.shift is not None else np.zeros(self.d)
        return shift + self.sum / max(self.n, 1)

    def scatter(self) -> np.ndarray:
        """sum((x - mean)(x - mean)^T) [d, d]: the centred second moment."""
        if self.n == 0:
            return np.zeros((self.d, self.d))
        return self.gram - np.outer(self.sum, self.sum) / self.n


__all__ = ["Moments"]
