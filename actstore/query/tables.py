"""Tidy long tables from per-chunk value arrays: one row per (example, answer, item).

Item columns (component, layer, head, ...) come from a small frame built once per query and
gathered per chunk, so building a long table costs a gather, not a Python loop per row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

ColumnType = pl.DataType | type[pl.DataType]  # pl.Int64 or pl.Int64(): what a schema takes
ANSWER_KEYS: dict[str, ColumnType] = {"example_id": pl.Int64, "answer_idx": pl.Int64, "answer_pos": pl.Int64}


def item_frame(columns: Mapping[str, Sequence[object]], schema: Mapping[str, ColumnType]) -> pl.DataFrame:
    """The per-item columns (e.g. component, layer, head), one row per item, typed by `schema`."""
    return pl.DataFrame({k: list(v) for k, v in columns.items()}, schema=dict(schema))


def long_frame(example_id: np.ndarray, answer_pos: np.ndarray, items: pl.DataFrame, values: np.ndarray,
               constants: Mapping[str, object] | None = None, value_name: str = "value") -> pl.DataFrame:
    """Rows (example, answer, item) in that order.

    example_id: [example]; answer_pos: [example, answer]; values: [example, answer, item]
    constants:  columns holding one value for every row (e.g. target), placed after answer_pos
    """
    e, a, k = values.shape
    idx = np.tile(np.arange(k), e * a)
    head = pl.DataFrame({
        "example_id": np.repeat(np.asarray(example_id, dtype=np.int64), a * k),
        "answer_idx": np.tile(np.repeat(np.arange(a, dtype=np.int64), k), e),
        "answer_pos": np.repeat(np.asarray(answer_pos, dtype=np.int64).ravel(), k),
    })
    for name, value in (constants or {}).items():
        head = head.with_columns(pl.lit(value, dtype=pl.String if isinstance(value, str) else None).alias(name))
    body = items[idx] if k else items.clear()
    return pl.concat([head, body, pl.DataFrame({value_name: values.reshape(-1).astype(np.float64)})],
                     how="horizontal")


def empty_frame(items: pl.DataFrame, constants: Mapping[str, ColumnType], value_name: str = "value") -> pl.DataFrame:
    """A typed empty table with the same columns as `long_frame` would give."""
    schema = dict(ANSWER_KEYS) | dict(constants) | dict(items.schema) | {value_name: pl.Float64}
    return pl.DataFrame(schema=schema)


def write_parquet_frames(frames: Iterable[pl.DataFrame], path: Path) -> int | None:
    """Write frames that arrive one by one (e.g. a raw table, chunk by chunk) into one Parquet
    file, memory holding one frame; each is cast to the first frame's schema. Returns the rows
    written, or None when no frame came (then nothing is written)."""
    writer, rows = None, 0
    try:
        for frame in frames:
            arrow = frame.to_arrow(compat_level=pl.CompatLevel.oldest())
            if writer is None:
                writer = pq.ParquetWriter(path, arrow.schema, compression="zstd", compression_level=1)
            writer.write_table(arrow.cast(writer.schema))
            rows += frame.height
    finally:
        if writer is not None:
            writer.close()
    return None if writer is None else rows
