"""A linear fit of a LayerNorm over a store's examples, and the directions it pulls back (seed 002).

The brackets seed treats a LayerNorm as the linear map that best predicts its output from its
input over a dataset (sklearn's `LinearRegression().fit(resid, normalized)`), and pulls a
direction d read after the LayerNorm back to its input as coef^T d: the 'unbalanced' direction
before the final LayerNorm is coef_final^T (W_U[:, 0] - W_U[:, 1]); before head 2.0 it is
coef_ln1(2)^T W_V W_O (that direction).

    fit_layernorm(store, ln='ln_final', layer=None, pos=None, where=None) -> LnFit
    fit_ln_direction(store, d, ln, layer, pos, where) -> (d_before [d_model], LnFit)
    through_ov(store, d, head, ln='fit', pos=None, where=None) -> (d_before [d_model], LnFit | None)
    unembed_direction(store, token, minus=None) -> W_U[:, token] - W_U[:, minus]

The fit streams the store once, keeping only sums (n, sums, d_model x d_model cross products),
so it runs over any number of examples. Its inputs are the stream the LayerNorm reads at the
selected positions (query/residual.py: read if stored, else rebuilt from the components), centred
over d_model for LayerNorm (which ignores the mean, so the fit does too); its outputs are the
LayerNorm's output with the stored scale. The coefficients are the least-squares solution of
least norm (as LinearRegression's), r2 the mean over outputs of 1 - SS_res / SS_tot (its score).
Positions: `pos` is a selector (an int, a role, a list; None every real position); padding never
counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from actstore.errors import InvalidParameterError
from actstore.query.chunks import example_arrays, stream
from actstore.query.directions import parse_head
from actstore.query.readout import Weights
from actstore.query.residual import ResidualPlan
from actstore.query.selectors import Roles, Selector, example_filter, select_positions
from actstore.store.arch import Arch
from actstore.store.reader import Store

RCOND = 1e-12  # eigenvalues of the input covariance below this fraction of the largest count as zero


@dataclass(frozen=True)
class LnFit:
    """A LayerNorm's linear fit: output ~ coef @ input + intercept over n rows."""

    ln: str
    layer: int | None
    coef: np.ndarray       # [d_out, d_in]
    intercept: np.ndarray  # [d_out]
    r2: float
    n: int

    def pull_back(self, direction: np.ndarray) -> np.ndarray:
        """coef^T d: the input direction whose dot product with the input predicts d . output."""
        return self.coef.T @ np.asarray(direction, dtype=np.float64)

    def info(self, pos: Selector) -> dict[str, Any]:
        return {"ln": self.ln, "layer": self.layer, "pos": pos, "n": self.n, "r2": self.r2}


class _Sums:
    """Running sums for a least-squares fit of y [row, d] on x [row, d]."""

    def __init__(self, d: int) -> None:
        self.n = 0
        self.sx, self.sy = np.zeros(d), np.zeros(d)
        self.sxx, self.sxy = np.zeros((d, d)), np.zeros((d, d))
        self.syy = np.zeros(d)

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        self.n += x.shape[0]
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.sxx += x.T @ x
        self.sxy += x.T @ y
        self.syy += (y * y).sum(0)

    def solve(self) -> tuple[np.ndarray, np.ndarray, float]:
        """(coef [d_out, d_in], intercept [d_out], r2)."""
        n = self.n
        mx, my = self.sx / n, self.sy / n
        cxx = self.sxx - n * np.outer(mx, mx)
        cxy = self.sxy - n * np.outer(mx, my)
        b = np.linalg.pinv((cxx + cxx.T) / 2, rcond=RCOND, hermitian=True) @ cxy  # [d_in, d_out]
        ss_tot = self.syy - n * my * my
        ss_res = ss_tot - 2 * np.einsum("io,io->o", b, cxy) + np.einsum("io,ij,jo->o", b, cxx, b)
        ss_res = np.maximum(ss_res, 0.0)
        ok = ss_tot > 1e-12 * max(float(ss_tot.max()), 1e-300)
        r2 = np.where(ok, 1 - ss_res / np.where(ok, ss_tot, 1.0), np.where(ss_res <= 1e-12, 1.0, 0.0))
        return b.T, my - mx @ b, float(r2.mean())


def fit_layernorm(store: Store, ln: str = "ln_final", layer: int | None = None, pos: Selector = None,
                  where: pl.Expr | Mapping[str, Any] | None = None, *, use_stored: bool = True) -> LnFit:
    """Least-squares linear fit of LayerNorm `ln` (of `layer`) over the store's examples at `pos`.

    use_stored=False rebuilds the stream from its components even where the store holds it.
    """
    plan = ResidualPlan.build(store, ln, layer, use_stored)
    weights = Weights.from_store(store)
    arrays = example_arrays(store)
    width = int(store.manifest.width)
    roles = Roles.from_tokens(store.tokens, arrays.example_id.size, width) if _has_role(pos) else None
    keep = example_filter(store.examples, where)
    sums = _Sums(store.arch.d_model)
    selected: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for start, stop in store.chunks():
        codes = roles.codes[start:stop] if roles is not None else np.full((stop - start, width), -1, np.int16)
        mask = select_positions(pos, arrays.lengths[start:stop], codes, roles or Roles(codes, ()), width, "pos")
        if keep is not None:
            mask &= keep[start:stop, None]
        e, p = np.nonzero(mask)
        if e.size:
            selected[start] = (e, p)
    ranges = [(a, b) for a, b in store.chunks() if a in selected]
    for chunk in stream(store, [], list(plan.full_hooks), tokens=plan.needs_tokens, examples=arrays, ranges=ranges,
                        label=f"fit {plan.label}"):
        e, p = selected[chunk.start]
        x = plan.rows(weights, chunk, e, p)
        y = plan.output(weights, chunk, e, p, x)
        sums.add(weights.center(x) if store.arch.layer_norm else x, y)
    if sums.n < 2:
        raise InvalidParameterError(f"fitting {plan.label} needs at least 2 rows; pos={pos!r} (and where=) selected "
                                    f"{sums.n} in store {store.path}")
    coef, intercept, r2 = sums.solve()
    return LnFit(ln, plan.layer, coef, intercept, r2, sums.n)


def _has_role(pos: Selector) -> bool:
    items = [pos] if isinstance(pos, (int, str, np.integer)) or pos is None else list(pos)
    return any(isinstance(i, str) for i in items)


def fit_ln_direction(store: Store, direction: Any, ln: str = "ln_final", layer: int | None = None,
                     pos: Selector = None,
                     where: pl.Expr | Mapping[str, Any] | None = None) -> tuple[np.ndarray, LnFit]:
    """(coef^T d, the fit): direction d [d_model], read after LayerNorm `ln`, pulled back to its input."""
    d = _vector(direction, store.arch.d_model, "direction")
    fit = fit_layernorm(store, ln, layer, pos, where)
    return fit.pull_back(d), fit


def through_ov(store: Store, direction: Any, head: Any, ln: str = "fit", pos: Selector = None,
               where: pl.Expr | Mapping[str, Any] | None = None) -> tuple[np.ndarray, LnFit | None]:
    """Direction d [d_model] at head L.H's output pulled back to the residual stream the head reads.

    ln='fit' (seed 002's pre-head direction): coef_ln1(L)^T W_V W_O d with the head's ln1 fitted at
    `pos` (the key position the head reads; seed 002: 1 for head 2.0). ln='none': W_V W_O d, the
    direction at the LayerNorm's output (read it against inputs divided by their ln1 scale).
    """
    arch = store.arch
    layer, h = parse_head(head, arch.n_layers, arch.n_heads, what="head")
    d = _vector(direction, arch.d_model, "direction")
    weights = Weights.from_store(store)
    w_v = weights.f64(Arch.attn_weight(layer, "W_V"))[h]
    w_o = weights.f64(Arch.attn_weight(layer, "W_O"))[h]
    pulled = w_v @ (w_o @ d)
    if ln == "none":
        return pulled, None
    if ln != "fit":
        raise InvalidParameterError(f"ln must be 'fit' or 'none', got {ln!r}")
    fit = fit_layernorm(store, "ln1", layer, pos, where)
    return fit.pull_back(pulled), fit


def unembed_direction(store: Store, token: int, minus: int | None = None) -> np.ndarray:
    """W_U[:, token] (minus W_U[:, minus]): a direction read after the final LayerNorm."""
    w_u = Weights.from_store(store).param(Arch.W_U)
    for t in (token, minus):
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, np.integer))
                              or not 0 <= t < w_u.shape[1]):
            raise InvalidParameterError(f"token {t!r} is not an output token id in [0, {w_u.shape[1]})")
    d = w_u[:, token].astype(np.float64)
    return d - w_u[:, minus] if minus is not None else d


def _vector(v: Any, d_model: int, what: str) -> np.ndarray:
    arr = np.asarray(v, dtype=np.float64).ravel()
    if arr.shape != (d_model,) or not np.isfinite(arr).all():
        raise InvalidParameterError(f"{what}: expected {d_model} finite numbers (d_model), got shape {np.shape(v)}")
    return arr
