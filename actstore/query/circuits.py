"""Weight circuits from a store's processed weights (no activations), as tidy tables.

  ov_circuit(store, l, h)          W_E W_V W_O W_U          rows: token, output, value
  qk_circuit(store, l, h, over)    W_E W_Q W_K^T W_E^T      rows: query, key, value (token ids, or
                                   positions with over='positions': W_pos instead of W_E)
  virtual_ov(store, (l1, h1), (l2, h2))  W_E W_OV1 W_OV2 W_U: a token read by head 1, whose
                                   output head 2 reads and writes to the logits; rows: token, output, value
  composition_scores(store, kind)  Q-, K-, V-composition of every earlier head into every later
                                   one: |W_OV1 W_right| / (|W_OV1| |W_right|), Frobenius norms,
                                   W_right = W_QK2 (Q), W_QK2^T (K), W_OV2 (V) (Elhage et al. 2021;
                                   TransformerLens `all_composition_scores`)

Raw weights, as TransformerLens's FactoredMatrix circuits: no LayerNorm or attention scaling.
`source` is a store or a `Weights`. `tokens` / `outputs` restrict rows / columns to some token ids,
so that a big vocabulary never materialises a vocab x vocab matrix. `circuit_matrix(table)` turns a
circuit table back into its [row, column] matrix for linear algebra (eigenvalues, SVD).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from actstore.errors import InvalidParameterError
from actstore.query.readout import Weights
from actstore.store.arch import Arch
from actstore.query.options import COMPOSITION_KINDS, CircuitOver, CompositionKind

MAX_CELLS = 50_000_000  # refuse to build a bigger matrix without a token subset (400 MB of float64)


def as_weights(source: Any) -> Weights:
    """A Weights view of a store (or a Weights, returned as is)."""
    if isinstance(source, Weights):
        return source
    if hasattr(source, "param") and hasattr(source, "param_names") and hasattr(source, "config"):
        return Weights.from_store(source)
    raise InvalidParameterError(f"circuits need a store or a Weights, got {type(source).__name__}")


def _head(w: Weights, layer: int, head: int) -> None:
    for label, v, n in (("layer", layer, w.arch.n_layers), ("head", head, w.arch.n_heads)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < n:
            raise InvalidParameterError(f"{label} must be an integer in [0, {n}), got {v!r} "
                                        f"(model has {w.arch.n_layers} layers x {w.arch.n_heads} heads)")


def _ids(ids: Sequence[int] | np.ndarray | None, size: int, what: str) -> np.ndarray:
    if ids is None:
        return np.arange(size)
    out = np.asarray(ids, dtype=np.int64).ravel()
    if out.size and (out.min() < 0 or out.max() >= size):
        raise InvalidParameterError(f"{what} ids must lie in [0, {size}), got {int(out.min())}..{int(out.max())}")
    return out


def _check_size(rows: int, cols: int, hint: str) -> None:
    if rows * cols > MAX_CELLS:
        raise InvalidParameterError(f"a {rows} x {cols} circuit is too big to build whole; {hint}")


def _ov(w: Weights, layer: int, head: int) -> tuple[np.ndarray, np.ndarray]:
    """(W_V [d_model, d_head], W_O [d_head, d_model]) float64 of one head."""
    return w.f64(Arch.attn_weight(layer, "W_V"))[head], w.f64(Arch.attn_weight(layer, "W_O"))[head]


def ov_circuit(source: Any, layer: int, head: int, tokens: Sequence[int] | None = None,
               outputs: Sequence[int] | None = None) -> pl.DataFrame:
    """Full OV circuit of head L{layer}H{head}: one row per (source token, output token), value float64."""
    w = as_weights(source)
    _head(w, layer, head)
    w_e, w_u = w.param(Arch.W_E), w.param(Arch.W_U)
    rows = _ids(tokens, w_e.shape[0], "token")
    cols = _ids(outputs, w_u.shape[1], "output token")
    _check_size(rows.size, cols.size, "pass tokens= / outputs= (token ids) to restrict it")
    w_v, w_o = _ov(w, layer, head)
    m = ((w_e[rows].astype(np.float64) @ w_v) @ w_o) @ w_u[:, cols].astype(np.float64)  # [token, output]
    return _tidy(m, "token", rows, "output", cols)


def qk_circuit(source: Any, layer: int, head: int, over: CircuitOver = "tokens", queries: Sequence[int] | None = None,
               keys: Sequence[int] | None = None) -> pl.DataFrame:
    """Full QK circuit of head L{layer}H{head}: one row per (query, key), value the attention score
    (before scaling), float64.

    over: 'tokens' (embeddings W_E) or 'positions' (positional embeddings W_pos)
    """
    w = as_weights(source)
    _head(w, layer, head)
    if over == "tokens":
        emb = w.param(Arch.W_E)
    elif over == "positions":
        if not w.has(Arch.W_pos):
            raise InvalidParameterError("this model has no positional embedding matrix (rotary?); use over='tokens'")
        emb = w.param(Arch.W_pos)
    else:
        raise InvalidParameterError(f"over must be 'tokens' or 'positions', got {over!r}")
    q_ids = _ids(queries, emb.shape[0], "query")
    k_ids = _ids(keys, emb.shape[0], "key")
    _check_size(q_ids.size, k_ids.size, "pass queries= / keys= to restrict it")
    w_q = w.f64(Arch.attn_weight(layer, "W_Q"))[head]  # [d_model, d_head]
    w_k = w.f64(Arch.attn_weight(layer, "W_K"))[head]
    m = (emb[q_ids].astype(np.float64) @ w_q) @ (emb[k_ids].astype(np.float64) @ w_k).T  # [query, key]
    return _tidy(m, "query", q_ids, "key", k_ids)


def virtual_ov(source: Any, first: tuple[int, int], second: tuple[int, int], tokens: Sequence[int] | None = None,
               outputs: Sequence[int] | None = None) -> pl.DataFrame:
    """OV circuit of the virtual head first -> second (first's layer < second's): rows token, output, value."""
    w = as_weights(source)
    (l1, h1), (l2, h2) = first, second
    _head(w, l1, h1)
    _head(w, l2, h2)
    if l1 >= l2:
        raise InvalidParameterError(f"virtual_ov: the first head (layer {l1}) must come before the second (layer {l2})")
    w_e, w_u = w.param(Arch.W_E), w.param(Arch.W_U)
    rows = _ids(tokens, w_e.shape[0], "token")
    cols = _ids(outputs, w_u.shape[1], "output token")
    _check_size(rows.size, cols.size, "pass tokens= / outputs= (token ids) to restrict it")
    v1, o1 = _ov(w, l1, h1)
    v2, o2 = _ov(w, l2, h2)
    inner = ((o1 @ v2) @ o2)  # [d_head1, d_model]
    m = ((w_e[rows].astype(np.float64) @ v1) @ inner) @ w_u[:, cols].astype(np.float64)  # [token, output]
    return _tidy(m, "token", rows, "output", cols)


def _tidy(m: np.ndarray, row: str, rows: np.ndarray, col: str, cols: np.ndarray) -> pl.DataFrame:
    """[row, col] matrix -> one row per cell, row-major: row id, col id, value."""
    return pl.DataFrame({row: np.repeat(rows.astype(np.int64), cols.size),
                         col: np.tile(cols.astype(np.int64), rows.size), "value": m.ravel()})


def circuit_matrix(table: pl.DataFrame) -> np.ndarray:
    """The [row, column] float64 matrix of a circuit table (rows and columns in the table's order)."""
    if table.width != 3 or table.columns[2] != "value":
        raise InvalidParameterError(f"circuit_matrix needs a circuit table (two id columns, then value), got "
                                    f"columns {table.columns}")
    n_rows = table.get_column(table.columns[0]).n_unique()
    n_cols = table.get_column(table.columns[1]).n_unique()
    if n_rows * n_cols != table.height:
        raise InvalidParameterError(f"circuit_matrix: {table.height} rows are not a {n_rows} x {n_cols} grid")
    return table.get_column("value").to_numpy().reshape(n_rows, n_cols)


def composition_scores(source: Any, kind: CompositionKind = "K") -> pl.DataFrame:
    """Composition scores of every head pair (earlier -> later layer).

    columns: kind, src, dst, src_layer, src_head, dst_layer, dst_head, value (the score, float64)
    """
    if kind not in COMPOSITION_KINDS:
        raise InvalidParameterError(f"kind must be one of {', '.join(COMPOSITION_KINDS)}, got {kind!r}")
    w = as_weights(source)
    n, h = w.arch.n_layers, w.arch.n_heads
    w_q, w_k, w_v, w_o = (np.stack([w.f64(Arch.attn_weight(layer, s)) for layer in range(n)])
                          for s in ("W_Q", "W_K", "W_V", "W_O"))  # [layer, head, ...]
    # left: W_V1 W_O1; right: Ra Rb with Ra [d_model, d_head], Rb [d_head, d_model]
    ra, rb = {"Q": (w_q, np.swapaxes(w_k, -1, -2)), "K": (w_k, np.swapaxes(w_q, -1, -2)),
              "V": (w_v, w_o)}[kind]
    gram_la = np.einsum("lhmd,lhme->lhde", w_v, w_v)  # La^T La
    gram_lb = np.einsum("lhdm,lhem->lhde", w_o, w_o)  # Lb Lb^T
    gram_ra = np.einsum("lhmd,lhme->lhde", ra, ra)
    gram_rb = np.einsum("lhdm,lhem->lhde", rb, rb)
    left_norm = np.sqrt(np.einsum("lhde,lhed->lh", gram_la, gram_lb))
    right_norm = np.sqrt(np.einsum("lhde,lhed->lh", gram_ra, gram_rb))
    rows: dict[str, list[Any]] = {k: [] for k in ("src_layer", "src_head", "dst_layer", "dst_head", "value")}
    for l1 in range(n):
        for l2 in range(l1 + 1, n):
            m = np.einsum("hdm,gme->hgde", w_o[l1], ra[l2])  # Lb1 Ra2: [head1, head2, d_head1, d_head2]
            # |La M Rb|^2 = tr(M^T (La^T La) M (Rb Rb^T))
            sq = np.einsum("hgde,hdf,hgfk,gke->hg", m, gram_la[l1], m, gram_rb[l2])
            score = np.sqrt(np.maximum(sq, 0.0)) / left_norm[l1][:, None] / right_norm[l2][None, :]
            for a in range(h):
                for b in range(h):
                    for k, v in zip(rows, (l1, a, l2, b, float(score[a, b]))):
                        rows[k].append(v)
    df = pl.DataFrame(rows, schema={"src_layer": pl.Int64, "src_head": pl.Int64, "dst_layer": pl.Int64,
                                    "dst_head": pl.Int64, "value": pl.Float64})
    return df.select(
        pl.lit(kind).alias("kind"),
        pl.format("L{}H{}", "src_layer", "src_head").alias("src"),
        pl.format("L{}H{}", "dst_layer", "dst_head").alias("dst"),
        pl.all())
