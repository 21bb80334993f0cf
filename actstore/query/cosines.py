"""Cosine tables between sets of residual-stream vectors (seed 002: v_L and v_R against the
input directions of the MLP neurons).

A vector set is named by a matrix spec (query/weights.py) one of whose axes is d_model; its
vectors run along the other axis:

  W_in:L        each neuron's input direction (the columns of W_in)       ids: neurons
  W_out:L       each neuron's output direction (the rows of W_out)        ids: neurons
  W_E, W_pos    token / position embeddings                               ids: tokens / positions
  W_U           unembedding columns                                       ids: tokens
  W_E@OV:L.H    each token's image under head L.H's OV circuit (seed 002's v_L, v_R, up to the
                LayerNorm's scale, which a cosine does not see)           ids: tokens
  W_E@OV:A>B    the same through a path of heads; W_pos@... over positions
  OV:L.H@W_U    the direction each output token reads through the head     ids: tokens
  W_Q:L.H ...   a head's read-in (W_Q, W_K, W_V columns) or write-out (W_O rows) directions

or a direction saved in the store, 'dir:NAME' (also 'name:NAME'), or in Python a mapping
{label: vector [d_model]}.

    cosine_table(store, 'W_E@OV:0.0', 'W_in:0', left_ids=[3, 4])
        -> left, left_id, right, right_id, cosine       (one row per pair, left-major)

left_id / right_id is null for a named vector. A vector of norm zero has a null cosine. For
reference, the squared cosine of a fixed vector with a random direction averages 1 / d_model
(seed 002's baseline).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from actstore.errors import InvalidParameterError
from actstore.query.circuits import as_weights
from actstore.query.directions import SAVED_PREFIX
from actstore.query.weights import Ids, parse_spec, spec_axes, weight_matrix
from actstore.store.directions import load_direction

DIM_AXES = ("dim", "in_dim", "out_dim", "q_dim", "k_dim")
DIR_PREFIXES = ("dir:", SAVED_PREFIX)
VectorsSpec = str | Mapping[str, Any]


@dataclass(frozen=True)
class VectorSet:
    """Vectors [n, d_model] float64, the set's label, and each vector's id (None for named vectors)."""

    label: str
    ids: np.ndarray | None
    vectors: np.ndarray
    names: tuple[str, ...] = ()  # for named vectors: one label each


def vector_set(source: Any, spec: VectorsSpec, ids: Ids = None) -> list[VectorSet]:
    """The vectors a spec names (see the module doc): one set, or one per named vector."""
    w = as_weights(source)
    d_model = w.arch.d_model
    if isinstance(spec, Mapping):
        if ids is not None:
            raise InvalidParameterError("ids select vectors of a weight; a mapping of named vectors takes none")
        return [_named(str(k), v, d_model) for k, v in spec.items()]
    if not isinstance(spec, str):
        raise InvalidParameterError(f"vector set must be a spec string or a mapping name -> vector, got "
                                    f"{type(spec).__name__}")
    prefix = next((p for p in DIR_PREFIXES if spec.startswith(p)), None)
    if prefix is not None:
        if ids is not None:
            raise InvalidParameterError(f"{spec}: a saved direction is one vector; it takes no ids")
        if not hasattr(source, "path"):
            raise InvalidParameterError(f"{spec}: a saved direction needs a store to read it from")
        saved = load_direction(source.path, spec[len(prefix):])
        return [_named(spec, saved.vector, d_model)]
    parsed = parse_spec(spec, w.arch)
    row_axis, col_axis = spec_axes(parsed)
    if (row_axis in DIM_AXES) == (col_axis in DIM_AXES):
        what = "both" if row_axis in DIM_AXES else "neither"
        raise InvalidParameterError(f"{spec}: {what} of its axes ({row_axis}, {col_axis}) is d_model, so it names no "
                                    "set of residual-stream vectors; end a product in W_E / W_pos / W_U on one side, "
                                    "e.g. W_E@OV:0.0")
    if row_axis in DIM_AXES:  # vectors are the columns
        m = weight_matrix(w, parsed, cols=ids)
        return [VectorSet(spec, m.col_ids, m.dense().T)]
    m = weight_matrix(w, parsed, rows=ids)
    return [VectorSet(spec, m.row_ids, m.dense())]


def _named(label: str, vector: Any, d_model: int) -> VectorSet:
    v = np.asarray(vector, dtype=np.float64).ravel()
    if v.shape != (d_model,) or not np.isfinite(v).all():
        raise InvalidParameterError(f"vector {label!r}: expected {d_model} finite numbers (d_model), got shape "
                                    f"{np.shape(vector)}")
    return VectorSet(label, None, v[None, :], (label,))


def cosine_table(source: Any, left: VectorsSpec, right: VectorsSpec, left_ids: Ids = None,
                 right_ids: Ids = None) -> pl.DataFrame:
    """Cosine similarity of every left vector with every right vector (see the module doc)."""
    lefts = vector_set(source, left, left_ids)
    rights = vector_set(source, right, right_ids)
    frames = []
    for a in lefts:
        for b in rights:
            cos = _unit(a.vectors) @ _unit(b.vectors).T  # [n_a, n_b], NaN for a zero vector
            na, nb = cos.shape
            frames.append(pl.DataFrame({
                "left": [a.label] * (na * nb),
                "left_id": pl.Series(np.repeat(a.ids, nb) if a.ids is not None else [None] * (na * nb),
                                     dtype=pl.Int64),
                "right": [b.label] * (na * nb),
                "right_id": pl.Series(np.tile(b.ids, na) if b.ids is not None else [None] * (na * nb),
                                      dtype=pl.Int64),
                "cosine": cos.ravel()}).with_columns(pl.col("cosine").fill_nan(None)))
    return pl.concat(frames)


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, x / np.where(norm > 0, norm, 1.0), np.nan)
