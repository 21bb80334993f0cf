"""Shared output options for commands that print a table: --format and -o."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import polars as pl

from actstore.errors import InvalidParameterError

FORMATS = ("table", "csv", "json", "parquet")


def add_output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="output format (default: table on a terminal, else csv; parquet needs -o)")
    p.add_argument("-o", "--output", default=None, help="write to this file instead of stdout")
    p.add_argument("--limit", type=int, default=None, help="print at most this many rows")


def write_table(df: pl.DataFrame, args: argparse.Namespace) -> None:
    """Write `df` as the user asked: to stdout or a file, as a table, CSV, JSON or Parquet."""
    fmt = args.format
    out = Path(args.output) if args.output else None
    if fmt is None:
        fmt = {".parquet": "parquet", ".csv": "csv", ".json": "json"}.get(out.suffix, "csv") if out else (
            "table" if sys.stdout.isatty() else "csv")
    if args.limit is not None:
        df = df.head(args.limit)
    if fmt == "parquet" and out is None:
        raise InvalidParameterError("--format parquet needs -o FILE (Parquet is binary)")
    if out is not None:
        if not out.parent.exists():
            raise InvalidParameterError(f"output directory {str(out.parent)!r} does not exist")
        tmp = out.with_name(out.name + ".tmp")
        {"parquet": df.write_parquet, "csv": df.write_csv, "json": df.write_ndjson,
         "table": lambda p: Path(p).write_text(_render(df) + "\n")}[fmt](tmp)
        tmp.replace(out)
        print(f"wrote {df.height} rows to {out}", file=sys.stderr)
        return
    if fmt == "csv":
        sys.stdout.write(df.write_csv())
    elif fmt == "json":
        sys.stdout.write(df.write_ndjson())
    else:
        print(_render(df))


def _render(df: pl.DataFrame) -> str:
    with pl.Config(tbl_rows=max(df.height, 1), tbl_cols=-1, fmt_str_lengths=60, tbl_width_chars=200):
        return str(df)
