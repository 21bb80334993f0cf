"""`actstore attention`: attention probabilities by position or role, raw or aggregated."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

import polars as pl

from actstore.cli.output import add_output_options, write_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "attention", help="attention probabilities from query positions/roles to key positions/roles",
        description="Attention probabilities per layer and head from the stored patterns. Raw: one row per "
                    "(example, layer, head, q_pos, k_pos). With --aggregate mean or --by: per group, the mean, "
                    "std and count of the attention mass a query row puts on the selected keys, and the mean "
                    "row entropy (nats). Selectors are positions (negative: from each example's end), role "
                    "names (END, IO, '=', a0, open, ...) or comma-separated lists of them.")
    p.add_argument("store", help="store directory")
    p.add_argument("--layers", default=None, metavar="L[,L...]", help="layers (default: all)")
    p.add_argument("--heads", default=None, metavar="H[,H...]", help="heads within each layer (default: all)")
    p.add_argument("--query", default=None, metavar="SEL", help="query positions or roles, e.g. END or 0 or =")
    p.add_argument("--key", default=None, metavar="SEL", help="key positions or roles, e.g. IO,S1 or a0,a1,a2,a3")
    p.add_argument("--aggregate", choices=("mean",), default=None, help="aggregate over examples (implied by --by)")
    p.add_argument("--by", default=None, metavar="COL[,COL...]",
                   help="group columns besides layer and head: k_role, k_pos, q_role, q_pos, example_id or labels "
                        "such as carry_2")
    add_where_option(p)
    add_output_options(p)
    p.set_defaults(handler=run_attention)


def add_where_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--where", action="append", default=None, metavar="LABEL=VALUE",
                   help="keep examples whose label equals VALUE (repeat: all must hold; the same label twice: any "
                        "of the values)")


def parse_where(pairs: list[str] | None) -> dict[str, Any] | None:
    """['carry_2=true', 'failure=both', 'failure=none'] -> {'carry_2': [True], 'failure': ['both', 'none']}."""
    if not pairs:
        return None
    from actstore.cli import parse_params

    out: dict[str, list[Any]] = {}
    for pair in pairs:
        for key, value in parse_params([pair]).items():
            out.setdefault(key, []).append(value)
    return dict(out)


def int_list(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    from actstore.errors import InvalidParameterError

    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise InvalidParameterError(f"{what} expects comma-separated integers, got {text!r}") from None


def run_attention(args: argparse.Namespace) -> int:
    from actstore.query.attention import RAW_SCHEMA, attention, attention_frames
    from actstore.query.selectors import parse_selector
    from actstore.store import open_store

    store = open_store(args.store)
    by = [c.strip() for c in args.by.split(",") if c.strip()] if args.by else None
    common = dict(layers=int_list(args.layers, "--layers"), heads=int_list(args.heads, "--heads"),
                  query=parse_selector(args.query), key=parse_selector(args.key), where=parse_where(args.where))
    if args.aggregate is None and not by:  # raw rows: streamed, the table may not fit in memory
        write_frames(attention_frames(store, **common), pl.DataFrame(schema=RAW_SCHEMA), args)
    else:
        write_table(attention(store, aggregate=args.aggregate, by=by, **common), args)
    return 0


def write_frames(frames: Iterable[pl.DataFrame], empty: pl.DataFrame, args: argparse.Namespace) -> None:
    """Write a table that arrives chunk by chunk, as write_table would write it whole.

    CSV, JSON lines and Parquet are written as the chunks come (memory holds one chunk), to -o
    FILE through a temporary file, or to stdout; 'table' and --limit collect (up to --limit rows).
    """
    import sys
    from pathlib import Path

    from actstore.errors import InvalidParameterError

    out = Path(args.output) if args.output else None
    fmt = args.format or ({".parquet": "parquet", ".csv": "csv", ".json": "json"}.get(out.suffix, "csv") if out
                          else "table" if sys.stdout.isatty() else "csv")
    if fmt == "table" or args.limit is not None:
        got, n = [], 0
        for frame in frames:
            got.append(frame)
            n += frame.height
            if args.limit is not None and n >= args.limit:
                break
        write_table(pl.concat(got) if got else empty, args)
        return
    if fmt == "parquet" and out is None:
        raise InvalidParameterError("--format parquet needs -o FILE (Parquet is binary)")
    if out is not None and not out.parent.exists():
        raise InvalidParameterError(f"output directory {str(out.parent)!r} does not exist")
    tmp = out.with_name(out.name + ".tmp") if out is not None else None
    rows = 0
    if fmt == "parquet":
        from actstore.query.tables import write_parquet_frames

        written = write_parquet_frames(frames, tmp)
        if written is None:  # no frame came: an empty table with the query's columns
            empty.write_parquet(tmp)
        rows = written or 0
    else:
        sink = open(tmp, "w", encoding="utf-8") if tmp is not None else sys.stdout
        try:
            first = True
            for frame in frames:
                sink.write(frame.write_csv(include_header=first) if fmt == "csv" else frame.write_ndjson())
                first = False
                rows += frame.height
            if first and fmt == "csv":
                sink.write(empty.write_csv())
        finally:
            if tmp is not None:
                sink.close()
    if out is not None and tmp is not None:
        tmp.replace(out)
        print(f"wrote {rows} rows to {out}", file=sys.stderr)
