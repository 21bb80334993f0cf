"""Weight algebra as tidy tables: any head's W_OV and W_QK, products along a path of heads, the
Q/K/V-composition matrices, stored weights as they are, and the SVD of any of them.

A matrix is named by a spec, `[START@]CORE[@END]`:

  OV:L.H             W_V W_O of head L.H                                   [d_model, d_model]
  OV:L.H>L.H>...     the product of each head's W_OV in turn: a virtual OV circuit of any length
                     (layers strictly increase: a head reads only earlier layers' outputs)
  V:A>B              V-composition, the same as OV:A>B
  QK:L.H             W_Q W_K^T of head L.H (query side x key side)         [d_model, d_model]
  K:A>B              K-composition of head A into the later head B: W_QK^B (W_OV^A)^T, a query of B
                     against what A read at the key position (seed 000's W_pos W_QK^1.0 W_OV^0.0T W_E^T
                     is 'W_pos@K:0.0>1.0@W_E')
  Q:A>B              Q-composition: W_OV^A W_QK^B, what A read, moved into B's query, against B's key
  W_E, W_pos, W_U, W_in:L, W_out:L, W_Q:L.H, W_K:L.H, W_V:L.H, W_O:L.H    a stored weight as it is
                     (per-head weights of that head)

START and END choose where a product begins and ends: START (the rows) is 'resid' (default: the
d_model directions themselves), 'W_E' / 'tokens' (token embeddings) or 'W_pos' / 'positions';
END (the columns) is 'resid' (default), 'W_U' / 'logits' for OV and V, or 'W_E' / 'W_pos' (the
key side) for QK, K and Q. So 'W_E@OV:1.0@W_U' is the full OV circuit of head 1.0 and
'W_E@OV:0.0>1.0@W_U' seed 000's virtual OV circuit.

Raw weights, as TransformerLens's FactoredMatrix circuits multiply them: no LayerNorm, biases or
attention scaling (for processed models the LayerNorm is folded in, up to its per-token scale).

Table columns are the two axes, then value. Axis names: OV / V rows in_dim | token | pos, columns
out_dim | output; QK / K / Q rows q_dim | q_token | q_pos, columns k_dim | k_token | k_pos; stored
weights by their axes (dim for d_model, token, pos, neuron, d_head). `to_matrix(table)` pivots a
table back into its [row, column] matrix. `svd_table` gives singular values and vectors; every
product of heads is kept factored (rank <= d_head), so its SVD never builds a d_model x d_model
(or vocabulary-sized) matrix.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from actstore.errors import InvalidParameterError
from actstore.query.circuits import MAX_CELLS, as_weights
from actstore.query.directions import parse_head
from actstore.query.readout import Weights
from actstore.store.arch import Arch

Ids = Sequence[int] | np.ndarray | None

STARTS = {"resid": "resid", "tokens": "tokens", "W_E": "tokens", "positions": "positions", "W_pos": "positions"}
OV_ENDS = {"resid": "resid", "logits": "logits", "W_U": "logits"}
HEAD_PRODUCTS = ("OV", "V", "QK", "K", "Q")
RAW = ("W_E", "W_pos", "W_U", "W_in", "W_out", "W_Q", "W_K", "W_V", "W_O")
RAW_DIMS = {"W_E": ("d_vocab", "d_model"), "W_pos": ("n_ctx", "d_model"), "W_U": ("d_model", "d_vocab_out"),
            "W_in": ("d_model", "d_mlp"), "W_out": ("d_mlp", "d_model"), "W_Q": ("d_model", "d_head"),
            "W_K": ("d_model", "d_head"), "W_V": ("d_model", "d_head"), "W_O": ("d_head", "d_model")}
AXIS = {"d_model": "dim", "d_vocab": "token", "d_vocab_out": "token", "n_ctx": "pos", "d_mlp": "neuron",
        "d_head": "d_head"}
SPEC_HELP = ("OV:L.H, OV:L.H>L.H>..., QK:L.H, K:A>B, Q:A>B, V:A>B (optionally START@...@END with W_E, W_pos, "
             "W_U or resid), or a stored weight W_E, W_pos, W_U, W_in:L, W_out:L, W_Q:L.H, W_K:L.H, W_V:L.H, W_O:L.H")


@dataclass(frozen=True)
class Spec:
    """A parsed matrix spec: core kind, its heads or layer, and the two ends."""

    text: str
    kind: str                       # OV, V, QK, K, Q or a raw weight name
    heads: tuple[tuple[int, int], ...] = ()
    layer: int | None = None
    start: str = "resid"
    end: str = "resid"

    @property
    def qk_like(self) -> bool:
        return self.kind in ("QK", "K", "Q")


@dataclass(frozen=True)
class WeightMatrix:
    """A matrix left @ right (right None: left is the whole matrix), with its axes' names and ids."""

    spec: str
    left: np.ndarray
    right: np.ndarray | None
    row_axis: str
    row_ids: np.ndarray
    col_axis: str
    col_ids: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.row_ids.size), int(self.col_ids.size)

    def dense(self) -> np.ndarray:
        """The [row, col] float64 matrix (refused beyond MAX_CELLS cells)."""
        n, m = self.shape
        if n * m > MAX_CELLS:
            raise InvalidParameterError(f"{self.spec} is a {n} x {m} matrix, too big to build whole; restrict its "
                                        f"rows / columns to some ids, or take its SVD (svd_table)")
        return self.left if self.right is None else self.left @ self.right

    def frame(self) -> pl.DataFrame:
        """One row per cell, row-major: row id, column id, value."""
        return tidy(self.dense(), self.row_axis, self.row_ids, self.col_axis, self.col_ids)

    def svd(self, k: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(U [rows, k], S [k], V [cols, k]) of the top k singular values (None: all non-trivial ones).

        Each pair is signed so that the largest-magnitude entry of its left vector is positive.
        """
        left, right = self.left, self.right
        if right is None or left.shape[1] >= min(self.shape):
            u, s, vt = np.linalg.svd(self.dense(), full_matrices=False)
            v = vt.T
        else:  # rank <= r: QR both factors, then an r x r SVD
            qa, ra = np.linalg.qr(left)
            qb, rb = np.linalg.qr(right.T)
            cu, s, cvt = np.linalg.svd(ra @ rb.T)
            u, v = qa @ cu, qb @ cvt.T
        k = s.size if k is None else min(int(k), s.size)
        u, s, v = u[:, :k], s[:k], v[:, :k]
        if k:
            flip = np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(k)])
            flip[flip == 0] = 1.0
            u, v = u * flip, v * flip
        return u, s, v


def parse_spec(text: str, arch: Arch) -> Spec:
    """A matrix spec (see the module doc) checked against the model's shape."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidParameterError(f"matrix spec {text!r}: expected {SPEC_HELP}")
    parts = [p.strip() for p in text.strip().split("@")]
    product = [i for i, p in enumerate(parts) if p.partition(":")[0].strip() in HEAD_PRODUCTS]
    if len(parts) > 3 or len(product) > 1:
        raise InvalidParameterError(f"matrix spec {text!r}: expected one matrix, at most START@ before it and @END "
                                    f"after it; {SPEC_HELP}")
    at = product[0] if product else 0
    if not product and len(parts) > 1:
        raise InvalidParameterError(f"matrix spec {text!r}: START@ / @END go around a product of heads (OV:, QK:, "
                                    f"K:, Q:, V:), and this has none (a stored weight is named alone); {SPEC_HELP}")
    before, core, after = parts[:at], parts[at], parts[at + 1:]
    if len(before) > 1 or len(after) > 1:
        raise InvalidParameterError(f"matrix spec {text!r}: at most one START@ before and one @END after the matrix")
    kind, _, arg = core.partition(":")
    kind = kind.strip()
    if kind in RAW:
        return _raw_spec(text, kind, arg.strip(), arch)
    if kind not in HEAD_PRODUCTS:
        raise InvalidParameterError(f"matrix spec {text!r}: unknown matrix {kind!r}; expected {SPEC_HELP}")
    heads = tuple(parse_head(h, arch.n_layers, arch.n_heads, what=f"matrix spec {text!r}: head")
                  for h in arg.split(">")) if arg.strip() else ()
    want = {"QK": 1, "K": 2, "Q": 2, "V": 2}.get(kind)
    if not heads or (want is not None and len(heads) != want):
        count = "one head or a path A>B>..." if want is None else f"{want} head{'s' * (want > 1)}"
        raise InvalidParameterError(f"matrix spec {text!r}: {kind} takes {count} (LAYER.HEAD, joined by '>')")
    for a, b in zip(heads, heads[1:]):
        if a[0] >= b[0]:
            raise InvalidParameterError(f"matrix spec {text!r}: head {a[0]}.{a[1]} must be in an earlier layer than "
                                        f"{b[0]}.{b[1]} (a head reads only earlier layers' outputs)")
    start = _end(text, before[0] if before else "resid", STARTS, "START")
    qk_like = kind in ("QK", "K", "Q")
    end = _end(text, after[0] if after else "resid", STARTS if qk_like else OV_ENDS, "END")
    for side in (start, end):
        if side == "positions" and arch.pos_embed not in ("standard", "shortformer"):
            raise InvalidParameterError(f"matrix spec {text!r}: the model has no positional embedding matrix W_pos "
                                        f"({arch.pos_embed} positions)")
    return Spec(text, kind, heads, None, start, end)


def _end(text: str, name: str, allowed: dict[str, str], what: str) -> str:
    if name not in allowed:
        raise InvalidParameterError(f"matrix spec {text!r}: {what} {name!r} must be one of {', '.join(allowed)}")
    return allowed[name]


def _raw_spec(text: str, kind: str, arg: str, arch: Arch) -> Spec:
    if kind in ("W_E", "W_pos", "W_U"):
        if arg:
            raise InvalidParameterError(f"matrix spec {text!r}: {kind} takes no layer")
        if kind == "W_pos" and arch.pos_embed not in ("standard", "shortformer"):
            raise InvalidParameterError(f"matrix spec {text!r}: the model has no W_pos ({arch.pos_embed} positions)")
        return Spec(text, kind)
    if kind in ("W_in", "W_out"):
        if not arch.has_mlp:
            raise InvalidParameterError(f"matrix spec {text!r}: the model is attention-only (no {kind})")
        if not re.fullmatch(r"\d+", arg) or not int(arg) < arch.n_layers:
            raise InvalidParameterError(f"matrix spec {text!r}: {kind} takes a layer in [0, {arch.n_layers}), "
                                        f"as {kind}:0")
        return Spec(text, kind, layer=int(arg))
    head = parse_head(arg, arch.n_layers, arch.n_heads, what=f"matrix spec {text!r}: head")
    return Spec(text, kind, heads=(head,))


def weight_matrix(source: Any, spec: str | Spec, rows: Ids = None, cols: Ids = None) -> WeightMatrix:
    """The matrix a spec names, its rows / columns restricted to some ids (None: all)."""
    w = as_weights(source)
    s = spec if isinstance(spec, Spec) else parse_spec(spec, w.arch)
    if s.kind in RAW:
        return _raw(w, s, rows, cols)
    row_axis, col_axis = spec_axes(s)
    if s.kind == "QK":
        (layer, head), = s.heads
        first_in, inner, last_out = _qk(w, layer, head)
    elif s.kind == "K":  # W_Q2 (W_K2^T W_O1^T) W_V1^T
        (l1, h1), (l2, h2) = s.heads
        w_q2, w_k2t = _qk(w, l2, h2)[::2]
        w_v1, w_o1 = _ov(w, l1, h1)
        first_in, inner, last_out = w_q2, [w_k2t @ w_o1.T], w_v1.T
    elif s.kind == "Q":  # W_V1 (W_O1 W_Q2) W_K2^T
        (l1, h1), (l2, h2) = s.heads
        w_v1, w_o1 = _ov(w, l1, h1)
        w_q2, w_k2t = _qk(w, l2, h2)[::2]
        first_in, inner, last_out = w_v1, [w_o1 @ w_q2], w_k2t
    else:  # OV / V: W_V1 (W_O1 W_V2) (W_O2 W_V3) ... W_On
        pairs = [_ov(w, layer, head) for layer, head in s.heads]
        first_in, last_out = pairs[0][0], pairs[-1][1]
        inner = [o @ v for (_, o), (v, _) in zip(pairs, pairs[1:])]
    left, row_ids = _read_in(w, s.start, rows, first_in, s.text)
    right = last_out
    for m in reversed(inner):
        right = m @ right
    right, col_ids = _read_out(w, s.end, cols, right, s.text)
    return WeightMatrix(s.text, left, right, row_axis, row_ids, col_axis, col_ids)


def spec_axes(s: Spec) -> tuple[str, str]:
    """(row axis, column axis) names of the matrix a parsed spec names."""
    if s.kind in RAW:
        return tuple(AXIS[d] for d in RAW_DIMS[s.kind])  # type: ignore[return-value]
    if s.qk_like:
        side = {"resid": "dim", "tokens": "token", "positions": "pos"}
        return f"q_{side[s.start]}", f"k_{side[s.end]}"
    return {"resid": "in_dim", "tokens": "token", "positions": "pos"}[s.start], {
        "resid": "out_dim", "logits": "output"}[s.end]


def _ov(w: Weights, layer: int, head: int) -> tuple[np.ndarray, np.ndarray]:
    return w.f64(Arch.attn_weight(layer, "W_V"))[head], w.f64(Arch.attn_weight(layer, "W_O"))[head]


def _qk(w: Weights, layer: int, head: int) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """(W_Q [d_model, d_head], no inner factors, W_K^T [d_head, d_model])."""
    return w.f64(Arch.attn_weight(layer, "W_Q"))[head], [], w.f64(Arch.attn_weight(layer, "W_K"))[head].T


def _embedding(w: Weights, side: str) -> np.ndarray:
    return w.param(Arch.W_E if side == "tokens" else Arch.W_pos)


def _read_in(w: Weights, side: str, ids: Ids, factor: np.ndarray, spec: str) -> tuple[np.ndarray, np.ndarray]:
    """[row, k]: the rows `side` feeds into `factor` [d_model, k], and the row ids."""
    if side == "resid":
        rows = check_ids(ids, factor.shape[0], f"{spec}: row")
        return factor[rows], rows
    emb = _embedding(w, side)
    rows = check_ids(ids, emb.shape[0], f"{spec}: row")
    return emb[rows].astype(np.float64) @ factor, rows


def _read_out(w: Weights, side: str, ids: Ids, factor: np.ndarray, spec: str) -> tuple[np.ndarray, np.ndarray]:
    """[k, col]: `factor` [k, d_model] read out onto `side`, and the column ids."""
    if side == "resid":
        cols = check_ids(ids, factor.shape[1], f"{spec}: column")
        return factor[:, cols], cols
    if side == "logits":
        w_u = w.param(Arch.W_U)
        cols = check_ids(ids, w_u.shape[1], f"{spec}: column")
        return factor @ w_u[:, cols].astype(np.float64), cols
    emb = _embedding(w, side)
    cols = check_ids(ids, emb.shape[0], f"{spec}: column")
    return factor @ emb[cols].astype(np.float64).T, cols


def _raw(w: Weights, s: Spec, rows: Ids, cols: Ids) -> WeightMatrix:
    if s.kind in ("W_E", "W_pos", "W_U"):
        m = w.param({"W_E": Arch.W_E, "W_pos": Arch.W_pos, "W_U": Arch.W_U}[s.kind])
    elif s.kind in ("W_in", "W_out"):
        assert s.layer is not None
        m = w.param(Arch.mlp_weight(s.layer, s.kind))  # type: ignore[arg-type]
    else:
        (layer, head), = s.heads
        m = w.param(Arch.attn_weight(layer, s.kind))[head]  # type: ignore[arg-type]
    row_axis, col_axis = spec_axes(s)
    row_ids = check_ids(rows, m.shape[0], f"{s.text}: row")
    col_ids = check_ids(cols, m.shape[1], f"{s.text}: column")
    if row_ids.size * col_ids.size > MAX_CELLS:
        raise InvalidParameterError(f"{s.text} restricted to {row_ids.size} x {col_ids.size} is too big to build "
                                    "whole; restrict its rows / columns to some ids")
    dense = m[np.ix_(row_ids, col_ids)].astype(np.float64)
    return WeightMatrix(s.text, dense, None, row_axis, row_ids, col_axis, col_ids)


def check_ids(ids: Ids, size: int, what: str) -> np.ndarray:
    """int64 ids in [0, size) (None: all of them); one-line errors for anything else."""
    if ids is None:
        return np.arange(size, dtype=np.int64)
    arr = np.asarray(ids)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise InvalidParameterError(f"{what} ids must be integers, got {list(np.ravel(arr))[:5]!r}")
    out = arr.astype(np.int64).ravel()
    if not out.size:
        raise InvalidParameterError(f"{what} ids are empty; give some ids, or None for all {size}")
    if out.min() < 0 or out.max() >= size:
        raise InvalidParameterError(f"{what} ids must lie in [0, {size}), got {int(out.min())}..{int(out.max())}")
    return out


def tidy(m: np.ndarray, row: str, rows: np.ndarray, col: str, cols: np.ndarray) -> pl.DataFrame:
    """[row, col] matrix -> one row per cell, row-major: row id, col id, value (float64)."""
    return pl.DataFrame({row: np.repeat(rows.astype(np.int64), cols.size),
                         col: np.tile(cols.astype(np.int64), rows.size),
                         "value": np.asarray(m, dtype=np.float64).ravel()})


def matrix_table(source: Any, spec: str, rows: Ids = None, cols: Ids = None) -> pl.DataFrame:
    """The matrix a spec names as a tidy table: row axis, column axis, value (see the module doc)."""
    return weight_matrix(source, spec, rows, cols).frame()


def ov_matrix(source: Any, layer: int, head: int) -> pl.DataFrame:
    """W_OV = W_V W_O of head L{layer}H{head}: in_dim, out_dim, value."""
    return matrix_table(source, f"OV:{layer}.{head}")


def qk_matrix(source: Any, layer: int, head: int) -> pl.DataFrame:
    """W_QK = W_Q W_K^T of head L{layer}H{head}: q_dim, k_dim, value."""
    return matrix_table(source, f"QK:{layer}.{head}")


def path_ov(source: Any, heads: Sequence[Any], start: str = "resid", end: str = "resid", rows: Ids = None,
            cols: Ids = None) -> pl.DataFrame:
    """The product of the heads' W_OV along a path (any length, layers increasing), from `start`
    ('resid', 'W_E', 'W_pos') to `end` ('resid', 'W_U'): e.g. path_ov(store, ['0.0', '1.0'], 'W_E', 'W_U')."""
    names = [h if isinstance(h, str) else f"{h[0]}.{h[1]}" for h in heads]
    return matrix_table(source, f"{start}@OV:{'>'.join(names)}@{end}", rows, cols)


def composition_matrix(source: Any, kind: str, first: Any, second: Any, query: str = "resid", key: str = "resid",
                       rows: Ids = None, cols: Ids = None) -> pl.DataFrame:
    """The kind ('Q', 'K', 'V') composition matrix of head `first` into the later head `second`.

    K and Q: rows the query side, columns the key side, each 'resid', 'W_E' or 'W_pos' (seed 000:
    composition_matrix(store, 'K', '0.0', '1.0', query='W_pos', key='W_E')). V: the virtual OV
    circuit first > second, from `query` ('resid', 'W_E', 'W_pos') to `key` ('resid' or 'W_U').
    """
    if kind not in ("Q", "K", "V"):
        raise InvalidParameterError(f"composition kind must be one of Q, K, V, got {kind!r}")
    a, b = (h if isinstance(h, str) else f"{h[0]}.{h[1]}" for h in (first, second))
    return matrix_table(source, f"{query}@{kind}:{a}>{b}@{key}", rows, cols)


def svd_table(source: Any, spec: str, k: int | None = None, rows: Ids = None, cols: Ids = None,
              vectors: bool = True) -> pl.DataFrame:
    """Singular values and vectors of the matrix a spec names.

    vectors=True: one row per entry of each singular vector: component, singular_value, side
    ('left': over the rows' axis, 'right': over the columns'), axis (that axis's name), index (the
    row / column id), value. vectors=False: component, singular_value. k: the top k (None: all).
    """
    if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
        raise InvalidParameterError(f"k must be a positive integer or None, got {k!r}")
    m = weight_matrix(source, spec, rows, cols)
    u, s, v = m.svd(k)
    n = s.size
    if not vectors:
        return pl.DataFrame({"component": np.arange(n, dtype=np.int64), "singular_value": s})
    parts = []
    for side, vec, axis, ids in (("left", u, m.row_axis, m.row_ids), ("right", v, m.col_axis, m.col_ids)):
        parts.append(pl.DataFrame({
            "component": np.repeat(np.arange(n, dtype=np.int64), ids.size),
            "singular_value": np.repeat(s, ids.size),
            "side": [side] * (n * ids.size), "axis": [axis] * (n * ids.size),
            "index": np.tile(ids, n), "value": vec.T.ravel()}))
    return pl.concat(parts).sort("component", maintain_order=True)


def singular_vector(source: Any, spec: str, component: int = 0, side: str = "right") -> np.ndarray:
    """One singular vector (float64) of the matrix a spec names; side 'left' (rows) or 'right' (columns)."""
    if side not in ("left", "right"):
        raise InvalidParameterError(f"side must be 'left' or 'right', got {side!r}")
    if isinstance(component, bool) or not isinstance(component, (int, np.integer)) or component < 0:
        raise InvalidParameterError(f"component must be a non-negative integer, got {component!r}")
    u, s, v = weight_matrix(source, spec).svd(int(component) + 1)
    if component >= s.size:
        raise InvalidParameterError(f"{spec} has {s.size} singular values; component {component} does not exist")
    return (u if side == "left" else v)[:, component].copy()


def to_matrix(table: pl.DataFrame, row: str | None = None, col: str | None = None,
              value: str = "value") -> np.ndarray:
    """Pivot a tidy table into a [row, column] float64 matrix (rows and columns in order of first
    appearance; default: the first two columns). A missing cell is NaN; a repeated one an error."""
    row = row or table.columns[0]
    col = col or table.columns[1]
    for name in (row, col, value):
        if name not in table.columns:
            raise InvalidParameterError(f"to_matrix: no column {name!r} in {table.columns}")
    r_uniq = table.get_column(row).unique(maintain_order=True)
    c_uniq = table.get_column(col).unique(maintain_order=True)
    r_idx = table.get_column(row).replace_strict(r_uniq, pl.Series(range(r_uniq.len())), return_dtype=pl.Int64)
    c_idx = table.get_column(col).replace_strict(c_uniq, pl.Series(range(c_uniq.len())), return_dtype=pl.Int64)
    flat = r_idx.to_numpy() * c_uniq.len() + c_idx.to_numpy()
    if np.unique(flat).size != flat.size:
        raise InvalidParameterError(f"to_matrix: some ({row}, {col}) pairs appear more than once; filter or "
                                    "aggregate the table first")
    out = np.full(r_uniq.len() * c_uniq.len(), np.nan)
    out[flat] = table.get_column(value).cast(pl.Float64).to_numpy()
    return out.reshape(r_uniq.len(), c_uniq.len())
