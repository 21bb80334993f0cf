"""`actstore attention`: attention probabilities by position or role, raw or aggregated."""

from __future__ import annotations

import argparse
from typing import Any

import polars as pl

from actstore.cli.cluster import add_cluster_options, cluster_client
from actstore.cli.output import add_output_options, output_format, write_frames, write_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "attention", help="attention probabilities from query positions/roles to key positions/roles",
        description="Attention probabilities per layer and head from the stored patterns. Raw: one row per "
                    "(example, layer, head, q_pos, k_pos). With --aggregate mean or --group-by: per group, the mean, "
                    "std and count of the attention mass a query row puts on the selected keys, and the mean "
                    "row entropy (nats). Selectors are positions (negative: from each example's end), role "
                    "names (END, IO, '=', a0, open, ...) or comma-separated lists of them.")
    p.add_argument("store", help="store directory")
    p.add_argument("--layers", default=None, metavar="L[,L...]", help="layers (default: all)")
    p.add_argument("--heads", default=None, metavar="H[,H...]", help="heads within each layer (default: all)")
    p.add_argument("--query", default=None, metavar="SEL", help="query positions or roles, e.g. END or 0 or =")
    p.add_argument("--key", default=None, metavar="SEL", help="key positions or roles, e.g. IO,S1 or a0,a1,a2,a3")
    p.add_argument("--aggregate", choices=("mean",), default=None,
                   help="aggregate over examples (implied by --group-by)")
    p.add_argument("--group-by", default=None, metavar="COL[,COL...]",
                   help="group columns besides layer and head: k_role, k_pos, q_role, q_pos, example_id or labels "
                        "such as carry_2")
    add_where_option(p)
    add_output_options(p)
    add_cluster_options(p)
    p.set_defaults(handler=run_attention)


def add_where_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--where", action="append", default=None, metavar="LABEL=VALUE",
                   help="keep examples whose label equals VALUE (repeat: all must hold; the same label twice: any "
                        "of the values)")


def parse_where(pairs: list[str] | None, store: Any) -> dict[str, list[Any]] | None:
    """['carry_2=true', 'failure=both', 'failure=none'] -> {'carry_2': [True], 'failure': ['both', 'none']}.

    Each value is parsed as its column's type in the store's examples; a value that is not of that
    type, or a text value no example has, is an InvalidParameterError naming the column.
    """
    if not pairs:
        return None
    from actstore.errors import InvalidParameterError

    examples = store.examples
    out: dict[str, list[Any]] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise InvalidParameterError(f"--where expects LABEL=VALUE, got {pair!r}")
        value = where_value(key, raw, examples) if key in examples.columns else raw
        out.setdefault(key, []).append(value)
    return out


def where_value(column: str, raw: str, examples: pl.DataFrame) -> Any:
    """`raw` parsed as the type of `examples[column]`, else InvalidParameterError saying the type."""
    from actstore.errors import InvalidParameterError

    dtype = examples.schema[column]
    bad = f"--where {column}={raw!r}: label {column} is of type {dtype}"
    if dtype == pl.Boolean:
        if raw.lower() not in ("true", "false"):
            raise InvalidParameterError(f"{bad}; give true or false")
        return raw.lower() == "true"
    if dtype.is_integer() or dtype.is_float():
        try:
            return int(raw) if dtype.is_integer() else float(raw)
        except ValueError:
            raise InvalidParameterError(f"{bad}; give {'an integer' if dtype.is_integer() else 'a number'}") from None
    if dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum):
        values = examples[column].cast(pl.String).unique().sort().to_list()
        if raw not in values:
            shown = ", ".join(map(str, values[:12])) + (", ..." if len(values) > 12 else "")
            raise InvalidParameterError(f"--where {column}={raw!r}: no example has that value; values: {shown}")
        return raw
    raise InvalidParameterError(f"{bad}; --where filters boolean, number and text labels only")


def int_list(text: str | None, what: str) -> list[int] | None:
    """'0,2' -> [0, 2]; None stays None (all); empty or non-integer text is an InvalidParameterError."""
    if text is None:
        return None
    from actstore.errors import InvalidParameterError

    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise InvalidParameterError(f"{what} expects comma-separated integers, got {text!r}") from None
    if not values:
        raise InvalidParameterError(f"{what} is empty; give comma-separated integers, or leave it out for all")
    return values


def name_list(text: str | None, what: str) -> list[str] | None:
    """'a, b' -> ['a', 'b']; None stays None; an empty list is an InvalidParameterError."""
    if text is None:
        return None
    from actstore.errors import InvalidParameterError

    names = [c.strip() for c in text.split(",") if c.strip()]
    if not names:
        raise InvalidParameterError(f"{what} is empty; give comma-separated names, or leave it out")
    return names


def run_attention(args: argparse.Namespace) -> int:
    from actstore.query.attention import RAW_SCHEMA, attention, attention_frames
    from actstore.query.selectors import parse_selector
    from actstore.store import open_store

    output_format(args)  # a bad -o fails before the query runs
    by = name_list(args.group_by, "--group-by")
    layers, heads = int_list(args.layers, "--layers"), int_list(args.heads, "--heads")
    store = open_store(args.store)
    common: dict[str, Any] = dict(layers=layers, heads=heads, query=parse_selector(args.query),
                                  key=parse_selector(args.key), where=parse_where(args.where, store))
    with cluster_client(args) as client:
        if args.aggregate is None and not by:  # raw rows: streamed, the table may not fit in memory
            write_frames(attention_frames(store, client=client, **common), pl.DataFrame(schema=RAW_SCHEMA), args)
        else:
            write_table(attention(store, aggregate=args.aggregate, group_by=by, client=client, **common), args)
    return 0
