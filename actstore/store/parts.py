"""The meta tables (examples, tokens, outputs) as one Parquet part per chunk.

Parts are written atomically (temporary file, fsync, rename) and deterministically (same frame,
same bytes: no timestamps), so a resumed ingest rewrites a lost part byte for byte.
"""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl

from actstore.errors import StoreCorruptError
from actstore.store.layout import META, META_TABLES, part_path


def write_part(df: pl.DataFrame, path: Path) -> None:
    """Write one part atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    df.write_parquet(tmp, compression="zstd", compression_level=3, statistics=True)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_table(root: Path, table: str, n_chunks: int) -> pl.DataFrame:
    """Rows of the first `n_chunks` (committed) parts of a meta table, in example order."""
    if table not in META_TABLES:
        raise ValueError(f"unknown meta table {table!r}")
    paths = [part_path(root, table, k) for k in range(n_chunks)]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise StoreCorruptError(f"committed meta part {missing[0]} is missing; run `actstore verify {root}`")
    if not paths:
        return _empty(root, table)
    return pl.read_parquet(paths)


# the columns every store has, for tables with no committed rows and no part to copy a schema from
BASE_SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "examples": {"example_id": pl.Int64, "split": pl.String, "text": pl.String, "tokens": pl.List(pl.Int64),
                 "length": pl.Int64, "answer_positions": pl.List(pl.Int64), "answer_tokens": pl.List(pl.Int64),
                 "counter_tokens": pl.List(pl.Int64)},
    "tokens": {"example_id": pl.Int64, "pos": pl.Int64, "token_id": pl.Int64, "str_token": pl.String,
               "role": pl.String},
    "outputs": {"example_id": pl.Int64, "answer_idx": pl.Int64, "answer_pos": pl.Int64, "correct_token": pl.Int64,
                "counter_token": pl.Int64, "correct_logit": pl.Float32, "counter_logit": pl.Float32,
                "logit_diff": pl.Float32, "prob": pl.Float32, "rank": pl.Int64, "loss": pl.Float32,
                "correct": pl.Boolean},
}


def _empty(root: Path, table: str) -> pl.DataFrame:
    """An empty frame with the table's schema: from any (uncommitted) part present, else the base columns."""
    for p in sorted((root / META / table).glob("part-*.parquet")):
        try:
            return pl.DataFrame(schema=pl.read_parquet_schema(p))
        except (OSError, pl.exceptions.PolarsError):
            continue
    return pl.DataFrame(schema=BASE_SCHEMAS[table])
