"""Linear discriminant analysis from streamed sufficient statistics: the probe's classifier.

The statistics of the training rows are one `Moments` (count, shift c, Gram matrix of x - c)
and, per class, the sum of x - c and the count. From them, for shrinkage a in [0, 1]:

    W        = G - sum_k s_k s_k^T / n_k                (pooled within-class scatter)
    Sigma_a  = (1 - a) W / n + a (tr(W / n) / d) I       (shrunk toward a multiple of the identity)
    score_k  = (x - c) . Sigma_a^-1 m_k - m_k . Sigma_a^-1 m_k / 2 + log(n_k / n),   m_k = s_k / n_k

and the prediction is the best-scoring class (the shift c changes every score by the same
amount). With a = 0 a singular Sigma is pseudo-inverted (directions with eigenvalue below
d * eps * the largest are dropped, as numpy.linalg.lstsq does). This is the classifier of
scikit-learn's LinearDiscriminantAnalysis(solver='lsqr', shrinkage=a); one eigendecomposition
of Sigma serves a whole grid of shrinkages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from actstore.errors import InvalidParameterError
from actstore.query.moments import Moments


@dataclass(frozen=True)
class LDA:
    """A fitted probe: predict() gives class codes."""

    shift: np.ndarray      # [F]
    coef: np.ndarray       # [class, F] (the classes seen in training only)
    intercept: np.ndarray  # [class]
    classes: np.ndarray    # [class] the codes of the classes seen in training
    shrinkage: float

    def predict(self, x: np.ndarray) -> np.ndarray:
        scores = (np.asarray(x, dtype=np.float64) - self.shift) @ self.coef.T + self.intercept
        return self.classes[np.argmax(scores, axis=1)]


def class_count(counts: np.ndarray) -> int:
    return int((np.asarray(counts) > 0).sum())


def fit_lda(moments: Moments, class_sums: np.ndarray, class_n: np.ndarray, shrinkages: Sequence[float],
            what: str) -> list[LDA]:
    """One LDA per shrinkage from the training statistics: `moments` of the rows, per-class sums of
    x - shift [K, F] and counts [K] (classes with no row are left out). InvalidParameterError
    naming `what` with fewer than two classes."""
    present = np.flatnonzero(np.asarray(class_n) > 0)
    if present.size < 2 or moments.shift is None:
        raise InvalidParameterError(f"{what}: the training examples hold {present.size} class(es); a probe needs "
                                    f"two (pick another label or position, or more examples)")
    n, d = moments.n, moments.d
    sums, counts = class_sums[present], np.asarray(class_n, dtype=np.float64)[present]
    means = sums / counts[:, None]  # [K', F], shifted
    within = moments.gram - (sums.T / counts) @ sums
    cov = (within + within.T) / (2 * n)
    lam, vec = np.linalg.eigh(cov)
    lam = np.clip(lam, 0.0, None)
    top = float(lam[-1]) if lam.size else 0.0
    floor = top * d * np.finfo(np.float64).eps
    proj = vec.T @ means.T  # [F, K'] the class means in the eigenbasis
    prior = np.log(counts / n)
    out = []
    for a in shrinkages:
        shrunk = (1 - a) * lam + a * (float(lam.sum()) / d)
        keep = shrunk > (floor if a == 0 else 0.0)
        inv = np.where(keep, 1.0 / np.where(keep, shrunk, 1.0), 0.0)
        coef = (vec @ (inv[:, None] * proj)).T  # [K', F] = (Sigma_a^+ m_k)^T
        intercept = -0.5 * np.einsum("kf,kf->k", means, coef) + prior
        out.append(LDA(moments.shift, coef, intercept, present, float(a)))
    return out


__all__ = ["LDA", "class_count", "fit_lda"]
