"""The rows a neuron query yields per chunk, their table schema, and the streamed top-k over them.

A leaf module: `neurons` (which computes the rows) and `neuron_stats` (which aggregates them)
both import it, and it imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from actstore.query.tables import ColumnType

SCHEMA: dict[str, ColumnType] = {"example_id": pl.Int64, "pos": pl.Int64, "layer": pl.Int64, "neuron": pl.Int64,
                                  "activation": pl.Float32, "projection": pl.Float64}


@dataclass
class NeuronRows:
    """The neuron values of one chunk's selected rows.

    example_id, pos: [row]; activation: [row, d_mlp] float32; projection: [row, d_mlp] float64
    """

    example_id: np.ndarray
    pos: np.ndarray
    activation: np.ndarray
    projection: np.ndarray

    def frame(self, layer: int) -> pl.DataFrame:
        """Long rows (example, pos, neuron) in that order."""
        rows, d_mlp = self.activation.shape
        return pl.DataFrame({
            "example_id": np.repeat(self.example_id.astype(np.int64), d_mlp),
            "pos": np.repeat(self.pos.astype(np.int64), d_mlp),
            "layer": np.full(rows * d_mlp, layer, dtype=np.int64),
            "neuron": np.tile(np.arange(d_mlp, dtype=np.int64), rows),
            "activation": self.activation.reshape(-1),
            "projection": self.projection.reshape(-1),
        }, schema=SCHEMA)


class TopK:
    """The k rows per neuron with the largest `rank_by` value ('-name': the smallest)."""

    def __init__(self, k: int, rank_by: str = "projection") -> None:
        self.k = k
        self.sign = -1.0 if rank_by.startswith("-") else 1.0
        self.value = rank_by.lstrip("-")
        self.best: NeuronRows | None = None  # arrays [k' <= k, d_mlp]; example_id / pos per (slot, neuron)

    def add(self, rows: NeuronRows) -> None:
        """Merge one chunk's rows (example_id, pos: [row]; values [row, d_mlp])."""
        d_mlp = rows.activation.shape[1]
        ids = np.broadcast_to(rows.example_id[:, None], (rows.example_id.size, d_mlp))
        pos = np.broadcast_to(rows.pos[:, None], ids.shape)
        cand: tuple[np.ndarray, ...] = (ids, pos, rows.activation, rows.projection)
        if self.best is not None:  # earlier rows first: a stable sort keeps them ahead on ties
            cand = tuple(np.concatenate([old, new]) for old, new in zip(
                (self.best.example_id, self.best.pos, self.best.activation, self.best.projection), cand))
        key = cand[2] if self.value == "activation" else cand[3]
        order = np.argsort(-self.sign * key.astype(np.float64), axis=0, kind="stable")[: self.k]  # [k', d_mlp]
        picked = [np.take_along_axis(a, order, axis=0) for a in cand]
        self.best = NeuronRows(*picked)

    def merge(self, other: "TopK") -> None:
        """Fold in the TopK of later rows (another chunk's): as if its rows had been added here."""
        if other.best is None:
            return
        if self.best is None:
            self.best = other.best
            return
        cand = tuple(np.concatenate([getattr(self.best, f), getattr(other.best, f)])
                     for f in ("example_id", "pos", "activation", "projection"))
        key = cand[2] if self.value == "activation" else cand[3]
        order = np.argsort(-self.sign * key.astype(np.float64), axis=0, kind="stable")[: self.k]
        self.best = NeuronRows(*[np.take_along_axis(a, order, axis=0) for a in cand])

    def frame(self, layer: int) -> pl.DataFrame:
        """Rows sorted by neuron then rank (1 = best): the neurons table's columns plus rank."""
        schema = SCHEMA | {"rank": pl.Int64}
        if self.best is None:
            return pl.DataFrame(schema=schema)
        k, d_mlp = self.best.activation.shape
        t = lambda a: a.T.reshape(-1)  # noqa: E731  [slot, neuron] -> neuron-major
        return pl.DataFrame({
            "example_id": t(self.best.example_id).astype(np.int64), "pos": t(self.best.pos).astype(np.int64),
            "layer": np.full(k * d_mlp, layer, dtype=np.int64), "neuron": np.repeat(np.arange(d_mlp), k),
            "activation": t(self.best.activation), "projection": t(self.best.projection),
            "rank": np.tile(np.arange(1, k + 1), d_mlp),
        }, schema=schema)
