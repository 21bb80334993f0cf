"""Shared output options for commands that print a table: --format, -o and --limit.

`write_table` writes a whole table; `write_frames` one that arrives chunk by chunk. Both write
-o FILE atomically (actstore.outputs): a full disk or a read-only directory gives one error line
and leaves no partial file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from typing import BinaryIO

import polars as pl

from actstore.cli.args import non_negative_int
from actstore.errors import InvalidParameterError
from actstore.outputs import atomic_output, check_output_path

FORMATS = ("table", "csv", "json", "parquet")
SUFFIX_FORMATS = {".parquet": "parquet", ".csv": "csv", ".json": "json"}


def add_output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="output format (default: from -o's extension, else table on a terminal, else csv; "
                        "parquet needs -o)")
    p.add_argument("-o", "--output", default=None, help="write to this file instead of stdout")
    p.add_argument("--limit", type=non_negative_int, default=None, help="print at most this many rows")


def output_format(args: argparse.Namespace) -> str:
    """The format to write in: --format, else -o's extension, else table on a terminal, else csv.

    Checks -o before any query runs: an explicit --format that contradicts a known extension,
    parquet to stdout, a directory or a missing parent directory are errors.
    """
    out = check_output_path(args.output) if args.output is not None else None
    implied = SUFFIX_FORMATS.get(out.suffix.lower()) if out is not None else None
    fmt = args.format or implied or ("csv" if out is not None else "table" if sys.stdout.isatty() else "csv")
    if implied and args.format and args.format != implied:
        raise InvalidParameterError(f"--format {args.format} contradicts -o {args.output!r} (a {implied} file "
                                    "name); drop --format or change the extension")
    if fmt == "parquet" and out is None:
        raise InvalidParameterError("--format parquet needs -o FILE (Parquet is binary)")
    return fmt


def write_table(df: pl.DataFrame, args: argparse.Namespace) -> None:
    """Write `df` as the user asked: to stdout or a file, as a table, CSV, JSON or Parquet."""
    fmt = output_format(args)
    if fmt == "csv":
        check_csv_columns(df)
    if args.limit is not None:
        df = df.head(args.limit)
    if args.output is None:
        _print(df, fmt)
        return
    with atomic_output(args.output) as f:
        _write(df, fmt, f)
    print(f"wrote {df.height} rows to {args.output}", file=sys.stderr)


def write_frames(frames: Iterable[pl.DataFrame], empty: pl.DataFrame, args: argparse.Namespace) -> None:
    """Write a table that arrives chunk by chunk, as write_table would write it whole.

    CSV, JSON lines and Parquet are written as the chunks come (memory holds one chunk), to -o
    FILE atomically, or to stdout; 'table' and --limit collect (up to --limit rows). `empty` gives
    the columns when no chunk comes.
    """
    fmt = output_format(args)
    if fmt == "table" or args.limit is not None:
        write_table(_collect(frames, empty, args.limit), args)
        return
    if args.output is None:
        _stream(frames, empty, fmt, sys.stdout.write)
        return
    with atomic_output(args.output) as f:
        rows = _stream(frames, empty, fmt, lambda text: f.write(text.encode()), f)
    print(f"wrote {rows} rows to {args.output}", file=sys.stderr)


def check_csv_columns(df: pl.DataFrame) -> None:
    """InvalidParameterError naming the columns CSV cannot hold (lists, arrays, structs)."""
    nested = [name for name, dtype in df.schema.items() if dtype.is_nested()]
    if nested:
        raise InvalidParameterError(f"CSV cannot hold the nested column(s) {', '.join(nested)}; use --format json "
                                    "or parquet, or select other columns")


def _collect(frames: Iterable[pl.DataFrame], empty: pl.DataFrame, limit: int | None) -> pl.DataFrame:
    got, n = [], 0
    for frame in frames:
        if limit is not None and n >= limit:
            break
        got.append(frame)
        n += frame.height
    return pl.concat(got) if got else empty


def _stream(frames: Iterable[pl.DataFrame], empty: pl.DataFrame, fmt: str, emit: Callable[[str], object],
            sink: BinaryIO | None = None) -> int:
    """Write `frames` as csv or json lines through `emit`, or as parquet into `sink`; returns the rows."""
    if fmt == "parquet" and sink is not None:
        from actstore.query.tables import write_parquet_frames

        written = write_parquet_frames(frames, sink)  # type: ignore[arg-type]  # pyarrow takes a file too
        if written is None:  # no frame came: an empty table with the query's columns
            empty.write_parquet(sink)
        return written or 0
    rows, first = 0, True
    for frame in frames:
        emit(frame.write_csv(include_header=first) if fmt == "csv" else frame.write_ndjson())
        first = False
        rows += frame.height
    if first and fmt == "csv":
        emit(empty.write_csv())
    return rows


def _write(df: pl.DataFrame, fmt: str, f: BinaryIO) -> None:
    if fmt == "parquet":
        df.write_parquet(f)
    elif fmt == "csv":
        df.write_csv(f)
    elif fmt == "json":
        df.write_ndjson(f)
    else:
        f.write((_render(df) + "\n").encode())


def _print(df: pl.DataFrame, fmt: str) -> None:
    if fmt == "csv":
        sys.stdout.write(df.write_csv())
    elif fmt == "json":
        sys.stdout.write(df.write_ndjson())
    else:
        print(_render(df))


def _render(df: pl.DataFrame) -> str:
    with pl.Config(tbl_rows=max(df.height, 1), tbl_cols=-1, fmt_str_lengths=60, tbl_width_chars=200):
        return str(df)


__all__ = ["FORMATS", "add_output_options", "output_format", "write_frames", "write_table"]
