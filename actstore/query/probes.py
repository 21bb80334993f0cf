"""`probe(store, label, hooks, pos)`: how well a linear probe reads a label from a hook at a position.

    probe(store, label, hooks=None, pos=None, *, test_fraction=0.2, seed=0, shrinkage=None,
          bins=None, max_classes=32, where=None)

One row per (hook, position item, label): hook, layer, pos, label, train_acc, test_acc, n,
n_train, n_test, n_classes, baseline, shrinkage. `baseline` is the test accuracy of always
answering the training set's most common class (what a probe must beat); test_acc and baseline
are null without a test row; `shrinkage` is the one the probe used.

hooks: None for every stored residual hook (else every hook_z), or names / short forms (see
probe_data.probe_hooks). pos: a position item or a list of them ('answer:0' by default; see
probe_data). label: an examples column or a list of them. Boolean and text labels are classes;
a numeric label with at most `max_classes` distinct values too; one with more is refused unless
`bins` cuts it into that many quantile bins (edges from all examples' values). Examples whose
label is null are left out. `bins` applies to the numeric labels only (booleans and text stay
classes).

The probe is linear discriminant analysis with a shrunk shared covariance (lda.py: exact and
closed-form in streamed sufficient statistics, scikit-learn's LinearDiscriminantAnalysis(
solver='lsqr', shrinkage=a)). Train and test examples are split by a hash of the example_id
(probe_data.holdout_mask): disjoint, and the same whatever the chunking. shrinkage=None picks a
from SHRINKAGES by accuracy on a validation split of the training examples (VALIDATION_FRACTION of
them, hashed like the test split, never the test examples): each a is fitted without the
validation rows and scored on them, the best (the strongest among ties) is refitted on every
training row; with too few training rows to hold some out, FALLBACK_SHRINKAGE. A number fixes a.

Two passes over each hook's chunks, in memory bounded by a chunk plus two d x d matrices per
(position, label null pattern): the first sums the statistics, the second counts correct
predictions of every shrinkage at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from actstore.errors import InvalidParameterError
from actstore.query.chunks import ExampleArrays
from actstore.query.lda import LDA, class_count, fit_lda
from actstore.query.moments import Moments
from actstore.query.probe_data import (
    PosSpec, feature_count, holdout_mask, hook_layer, probe_hooks, resolve_positions, stored_index, stream_rows)
from actstore.query.selectors import check_labels, example_filter
from actstore.store.reader import Store

MAX_CLASSES = 32
DEFAULT_TEST_FRACTION = 0.2
VALIDATION_FRACTION = 0.2
SHRINKAGES = (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 0.5)
FALLBACK_SHRINKAGE = 0.1

SCHEMA = {"hook": pl.String, "layer": pl.Int64, "pos": pl.String, "label": pl.String, "train_acc": pl.Float64,
          "test_acc": pl.Float64, "n": pl.Int64, "n_train": pl.Int64, "n_test": pl.Int64, "n_classes": pl.Int64,
          "baseline": pl.Float64, "shrinkage": pl.Float64}


# --- labels -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class LabelClasses:
    """A label as classes: codes [example] (-1 where null) into `names`."""

    label: str
    codes: np.ndarray
    names: tuple[str, ...]


def label_classes(examples: pl.DataFrame, label: str, bins: int | None = None,
                  max_classes: int = MAX_CLASSES) -> LabelClasses:
    """The classes of `label` (see the module doc); one-line errors for labels a classifier cannot take."""
    out = _classes(examples, label, bins, max_classes)
    seen = np.unique(out.codes[out.codes >= 0])
    if seen.size < 2:
        what = f"{bins} quantile bins of it hold" if bins is not None else "its examples hold"
        raise InvalidParameterError(f"probe label {label!r}: {what} {seen.size} distinct value(s); a probe needs "
                                    "two classes")
    return out


def _classes(examples: pl.DataFrame, label: str, bins: int | None, max_classes: int) -> LabelClasses:
    check_labels(examples, [label], "probe label")
    col = examples.get_column(label)
    dtype = col.dtype
    if dtype.is_float():
        col = col.fill_nan(None)
    if bins is not None:
        if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 2:
            raise InvalidParameterError(f"bins must be an integer >= 2, got {bins!r}")
        if not dtype.is_numeric() or dtype == pl.Boolean:
            raise InvalidParameterError(f"bins cuts numeric labels; {label!r} is {dtype}")
        return _binned(label, col, int(bins))
    values = col.drop_nulls().unique().sort()
    if values.len() > max_classes:
        hint = ("pass bins=N to probe quantile bins of it" if dtype.is_numeric() and dtype != pl.Boolean
                else "pick a label with fewer values")
        raise InvalidParameterError(f"probe label {label!r} has {values.len()} distinct values, more than the "
                                    f"{max_classes} classes a probe takes; {hint}")
    codes = col.replace_strict(values, pl.int_range(values.len(), eager=True), default=-1,
                               return_dtype=pl.Int64).to_numpy()
    return LabelClasses(label, np.asarray(codes, dtype=np.int64), tuple(str(v) for v in values.to_list()))


def _binned(label: str, col: pl.Series, bins: int) -> LabelClasses:
    values = col.cast(pl.Float64).to_numpy()
    ok = ~np.isnan(values)
    if not ok.any():
        raise InvalidParameterError(f"probe label {label!r} has no value to bin")
    edges = np.unique(np.quantile(values[ok], np.linspace(0, 1, bins + 1)))
    inner = edges[1:-1]
    codes = np.where(ok, np.searchsorted(inner, np.where(ok, values, 0.0), side="right"), -1).astype(np.int64)
    bounds = [-np.inf, *inner, np.inf]
    names = tuple(f"[{lo:g}, {hi:g})" for lo, hi in zip(bounds[:-1], bounds[1:]))
    return LabelClasses(label, codes, names)


# --- the query --------------------------------------------------------------------------------

def probe(store: Store, label: str | Sequence[str], hooks: str | Sequence[str] | None = None, pos: PosSpec = None, *,
          test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = 0, shrinkage: float | None = None,
          bins: int | None = None, max_classes: int = MAX_CLASSES,
          where: pl.Expr | Mapping[str, Any] | None = None) -> pl.DataFrame:
    """Train and test accuracy of a linear probe per (hook, position, label) (see the module doc)."""
    labels = [label] if isinstance(label, str) else list(label)
    if not labels or not all(isinstance(x, str) for x in labels):
        raise InvalidParameterError(f"label: expected a label name or a list of them, got {label!r}")
    if shrinkage is not None and (isinstance(shrinkage, bool) or not isinstance(shrinkage, (int, float))
                                  or not 0 <= shrinkage <= 1):
        raise InvalidParameterError(f"shrinkage must be a number in [0, 1] (or None: chosen by validation), "
                                    f"got {shrinkage!r}")
    examples = store.examples
    check_labels(examples, labels, "probe label")
    numeric = [name for name in labels if examples.schema[name].is_numeric() and examples.schema[name] != pl.Boolean]
    if bins is not None and not numeric:
        raise InvalidParameterError(f"bins cuts numeric labels; none of {', '.join(labels)} is numeric")
    classes = [label_classes(examples, name, bins if name in numeric else None, max_classes)
               for name in dict.fromkeys(labels)]
    names = probe_hooks(store, hooks)
    arrays = ExampleArrays.from_examples(examples, store.n_answers)
    items = resolve_positions(store, pos, arrays)
    test = holdout_mask(arrays.example_id, test_fraction, seed)
    val = holdout_mask(arrays.example_id, VALIDATION_FRACTION, seed, "validation") & ~test
    kept = example_filter(examples, where)
    keep = np.ones(arrays.example_id.size, dtype=bool) if kept is None else kept
    # labels null on the same examples share one Gram matrix
    groups: dict[bytes, list[LabelClasses]] = {}
    for lc in classes:
        groups.setdefault(np.packbits(lc.codes >= 0).tobytes(), []).append(lc)
    grid = SHRINKAGES if shrinkage is None else (float(shrinkage),)
    rows: list[dict[str, Any]] = []
    for hook in names:
        index = [stored_index(store, hook, item, arrays) for item in items]
        d = feature_count(store, hook)
        cells = [[_Cell(d, group, test, val, grid, validate=shrinkage is None) for group in groups.values()]
                 for _ in items]
        for per_item in stream_rows(store, hook, index, keep, arrays, f"probe {hook} (fit)"):
            for (ex, x), row in zip(per_item, cells):
                for cell in row:
                    cell.add(ex, x)
        for item, row in zip(items, cells):
            for cell in row:
                cell.fit(f"at {hook} pos {item.name}")
        for per_item in stream_rows(store, hook, index, keep, arrays, f"probe {hook} (test)"):
            for (ex, x), row in zip(per_item, cells):
                for cell in row:
                    cell.score(ex, x)
        layer = hook_layer(hook)
        for item, row in zip(items, cells):
            results = {r["label"]: r for cell in row for r in cell.results()}
            rows.extend({"hook": hook, "layer": layer, "pos": item.name, **results[lc.label]} for lc in classes)
    return pl.DataFrame(rows, schema=SCHEMA)


class _Cell:
    """One position item x one group of labels (null on the same examples): the training statistics
    (all training rows, and the validation rows among them), the fitted probes, the hit counts."""

    def __init__(self, d: int, labels: list[LabelClasses], test: np.ndarray, val: np.ndarray,
                 grid: Sequence[float], validate: bool) -> None:
        self.labels, self.test, self.val, self.grid, self.validate = labels, test, val, list(grid), validate
        self.valid = labels[0].codes >= 0
        self.train, self.held = Moments(d), Moments(d)  # held: the validation rows among the training rows
        self.sums = [np.zeros((len(lc.names), d)) for lc in labels]
        self.held_sums = [np.zeros((len(lc.names), d)) for lc in labels]
        self.counts = [np.zeros(len(lc.names), dtype=np.int64) for lc in labels]
        self.held_counts = [np.zeros(len(lc.names), dtype=np.int64) for lc in labels]
        self.models: list[list[LDA]] = []        # per label, one per shrinkage: fitted on every training row
        self.inner: list[list[LDA] | None] = []  # per label: fitted without the validation rows (None: can't)
        # per label, per shrinkage: correct predictions on [training rows, test rows, validation rows]
        self.hits = [np.zeros((len(self.grid), 3), dtype=np.int64) for _ in labels]
        self.n = [np.zeros(3, dtype=np.int64) for _ in labels]
        self.test_counts = [np.zeros(len(lc.names), dtype=np.int64) for lc in labels]

    def add(self, ex: np.ndarray, x: np.ndarray) -> None:
        sel = self.valid[ex] & ~self.test[ex]
        xs = self.train.add(x[sel])
        held = self.val[ex[sel]]
        self.held.shift = self.train.shift
        self.held.add(x[sel][held])
        for k, lc in enumerate(self.labels):
            onehot = (lc.codes[ex[sel]][:, None] == np.arange(len(lc.names))).astype(np.float64)
            self.sums[k] += onehot.T @ xs
            self.held_sums[k] += onehot[held].T @ xs[held]
            self.counts[k] += onehot.sum(axis=0).astype(np.int64)
            self.held_counts[k] += onehot[held].sum(axis=0).astype(np.int64)

    def fit(self, where: str) -> None:
        inner = self.train.minus(self.held)
        for k, lc in enumerate(self.labels):
            what = f"probe {lc.label} {where}"
            self.models.append(fit_lda(self.train, self.sums[k], self.counts[k], self.grid, what))
            rest = self.counts[k] - self.held_counts[k]
            can = self.validate and self.held.n > 0 and class_count(rest) >= 2
            self.inner.append(fit_lda(inner, self.sums[k] - self.held_sums[k], rest, self.grid, what) if can else None)

    def score(self, ex: np.ndarray, x: np.ndarray) -> None:
        sel = self.valid[ex]
        ex, x = ex[sel], x[sel]
        is_test, is_val = self.test[ex], self.val[ex]
        for k, lc in enumerate(self.labels):
            y = lc.codes[ex]
            self.n[k] += [int((~is_test).sum()), int(is_test.sum()), int(is_val.sum())]
            self.test_counts[k] += np.bincount(y[is_test], minlength=len(lc.names))
            for j, model in enumerate(self.models[k]):
                right = model.predict(x) == y
                self.hits[k][j, :2] += [int(right[~is_test].sum()), int(right[is_test].sum())]
            inner = self.inner[k]
            if inner is not None and is_val.any():
                for j, model in enumerate(inner):
                    self.hits[k][j, 2] += int((model.predict(x[is_val]) == y[is_val]).sum())

    def results(self) -> list[dict[str, Any]]:
        out = []
        for k, lc in enumerate(self.labels):
            if len(self.grid) == 1:
                j = 0
            elif self.inner[k] is not None:
                best = self.hits[k][:, 2]
                j = int(np.flatnonzero(best == best.max())[-1])  # the strongest shrinkage among the best
            else:  # too few training rows to hold some out: a fixed moderate shrinkage
                j = self.grid.index(FALLBACK_SHRINKAGE)
            n_train, n_test = int(self.n[k][0]), int(self.n[k][1])
            majority = int(np.argmax(self.counts[k]))  # the most common training class
            out.append({"label": lc.label, "train_acc": self.hits[k][j, 0] / n_train,
                        "test_acc": self.hits[k][j, 1] / n_test if n_test else None,
                        "n": n_train + n_test, "n_train": n_train, "n_test": n_test,
                        "n_classes": int(self.models[k][j].classes.size),
                        "baseline": self.test_counts[k][majority] / n_test if n_test else None,
                        "shrinkage": self.grid[j]})
        return out


__all__ = ["DEFAULT_TEST_FRACTION", "LabelClasses", "MAX_CLASSES", "SCHEMA", "SHRINKAGES", "label_classes", "probe"]
