"""The meta tables (examples, tokens, outputs, and topk where stored) as one Parquet part per chunk.

Parts are written atomically (temporary file, fsync, rename) and deterministically (same frame,
same bytes: no timestamps), so a resumed ingest rewrites a lost part byte for byte. On an
object store a part is encoded in memory and put in one request (atomic by itself).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import polars as pl

from actstore.errors import StoreCorruptError, UnknownColumnError
from actstore.store.commits import read_file
from actstore.store.fs import RemotePath, StorePath, children, relative
from actstore.store.layout import META, META_TABLES, OPTIONAL_META_TABLES, part_path

if TYPE_CHECKING:
    from actstore.store.integrity import Ledger


def part_bytes(df: pl.DataFrame) -> bytes:
    """The bytes of a part holding `df` (what write_part writes)."""
    buf = io.BytesIO()
    df.write_parquet(buf, compression="zstd", compression_level=3, statistics=True)
    return buf.getvalue()


def write_part(df: pl.DataFrame, path: StorePath) -> None:
    """Write one part atomically."""
    if isinstance(path, RemotePath):
        path.write_bytes(part_bytes(df))
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        df.write_parquet(tmp, compression="zstd", compression_level=3, statistics=True)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def part_schema(path: StorePath) -> dict[str, pl.DataType]:
    """The Parquet schema of a part (local or remote)."""
    return pl.read_parquet_schema(io.BytesIO(path.read_bytes()) if isinstance(path, RemotePath) else path)


def checked_part(ledger: "Ledger", table: str, k: int) -> bytes:
    """The bytes of committed part k of a meta table, checked against its commit record (size and
    sha256); StoreCorruptError if absent, not a regular file, or different."""
    path = part_path(ledger.root, table, k)
    data = read_file(path)
    ledger.check_bytes(relative(path, ledger.root), data, "meta part")
    if data is None:  # a committed part always has a record; this only guards the decoder
        raise StoreCorruptError(f"committed meta part {path} is missing; run `actstore verify {ledger.root}`")
    return data


def read_parts(ledger: "Ledger", table: str, n_chunks: int, columns: Sequence[str] | None = None) -> pl.DataFrame:
    """Rows of the first `n_chunks` (committed) parts of a meta table, in example order (only
    `columns`, in that order, when given).

    Each part's bytes are read once, checked against its commit record (size and sha256), and
    only then decoded, so a damaged part never reaches the Parquet reader.
    """
    frames = list(iter_parts(ledger, table, n_chunks, columns))
    if not frames:
        empty = _empty(ledger.root, table)
        return empty if columns is None else empty.select(checked_columns(empty.schema, table, columns))
    return pl.concat(frames, how="vertical") if len(frames) > 1 else frames[0]


def iter_parts(ledger: "Ledger", table: str, n_chunks: int, columns: Sequence[str] | None = None
               ) -> Iterator[pl.DataFrame]:
    """The first `n_chunks` parts of a meta table one at a time, each checked before it is decoded;
    with `columns`, only those are decoded (UnknownColumnError naming one a part lacks)."""
    if table not in (*META_TABLES, *OPTIONAL_META_TABLES):
        raise ValueError(f"unknown meta table {table!r}")
    for k in range(n_chunks):
        yield read_part(ledger, table, k, columns)


def read_part(ledger: "Ledger", table: str, k: int, columns: Sequence[str] | None = None) -> pl.DataFrame:
    """Committed part k of a meta table (the rows of chunk k), checked before it is decoded; with
    `columns`, only those are decoded (UnknownColumnError naming one the part lacks)."""
    raw = io.BytesIO(checked_part(ledger, table, k))
    if columns is None:
        return pl.read_parquet(raw)
    wanted = checked_columns(pl.read_parquet_schema(raw), table, columns)
    raw.seek(0)
    return pl.read_parquet(raw, columns=wanted)


def checked_columns(schema: Mapping[str, Any], table: str, columns: Sequence[str]) -> list[str]:
    """`columns` as a list; UnknownColumnError naming the first that meta `table`'s `schema` lacks."""
    for c in columns:
        if c not in schema:
            raise UnknownColumnError(f"meta/{table} has no column {c!r} (columns: {', '.join(schema)})")
    return list(columns)


# the columns every store has, for tables with no committed rows and no part to copy a schema from
BASE_SCHEMAS: dict[str, dict[str, pl.DataType | type[pl.DataType]]] = {
    "examples": {"example_id": pl.Int64, "split": pl.String, "text": pl.String, "tokens": pl.List(pl.Int64),
                 "length": pl.Int64, "answer_positions": pl.List(pl.Int64), "answer_tokens": pl.List(pl.Int64),
                 "counter_tokens": pl.List(pl.Int64), "corrupted_tokens": pl.List(pl.Int64)},
    "tokens": {"example_id": pl.Int64, "pos": pl.Int64, "token_id": pl.Int64, "str_token": pl.String,
               "role": pl.String},
    "outputs": {"example_id": pl.Int64, "answer_idx": pl.Int64, "answer_pos": pl.Int64, "correct_token": pl.Int64,
                "counter_token": pl.Int64, "correct_logit": pl.Float32, "counter_logit": pl.Float32,
                "logit_diff": pl.Float32, "prob": pl.Float32, "rank": pl.Int64, "loss": pl.Float32,
                "correct": pl.Boolean, "corrupted_correct_logit": pl.Float32, "corrupted_counter_logit": pl.Float32,
                "corrupted_logit_diff": pl.Float32, "corrupted_loss": pl.Float32},
    "topk": {"example_id": pl.Int64, "answer_idx": pl.Int64, "rank": pl.Int64, "token_id": pl.Int64,
             "str_token": pl.String, "logit": pl.Float32, "prob": pl.Float32},
}


def _empty(root: StorePath, table: str) -> pl.DataFrame:
    """An empty frame with the table's schema: from any (uncommitted) part present, else the base columns."""
    for p in children(root / META / table, "part-*.parquet"):
        try:
            return pl.DataFrame(schema=part_schema(p))
        except (OSError, pl.exceptions.PolarsError):
            continue
    return pl.DataFrame(schema=BASE_SCHEMAS[table])
