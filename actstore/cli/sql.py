"""`actstore sql STORE "SELECT ..." [--attach b=OTHER]` and `actstore breakdown STORE --group-by LABEL`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from actstore.cli.cluster import add_cluster_options, cluster_client
from actstore.cli.output import add_output_options, write_table

TABLES = {"dla": "dla", "logit-lens": "logit_lens", "attention": "attention", "neurons": "neurons"}


def add_derived_options(p: argparse.ArgumentParser) -> None:
    """Parameters of the derived tables a command computes (or a query names)."""
    p.add_argument("--dla-level", choices=("layer", "head", "neuron", "path"), default=None,
                   help="granularity of the dla table (default head)")
    p.add_argument("--target", choices=("correct", "diff"), default=None,
                   help="dla / logit_lens toward the correct logit or correct minus counterfactual (default correct)")
    p.add_argument("--ln", choices=("cached", "recompute"), default=None,
                   help="logit_lens: final LayerNorm scale of the full stream (cached) or recomputed per stage")


def derived_params(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    dla: dict[str, Any] = {}
    lens: dict[str, Any] = {}
    if args.dla_level:
        dla["level"] = args.dla_level
    if args.target:
        dla["target"] = lens["target"] = args.target
    if args.ln:
        lens["ln"] = args.ln
    return {k: v for k, v in (("dla", dla), ("logit_lens", lens)) if v}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sql", help="run DuckDB SQL over a store: views examples, tokens, outputs, dla, logit_lens, "
                                   "attention, neurons",
                       description="Run DuckDB SQL over a store. Views: examples, tokens, outputs (meta tables) and "
                                   "the derived tables dla, logit_lens, attention, neurons, computed on first use and "
                                   "cached under STORE/derived/. Read-only and confined to the store: one SELECT "
                                   "(or DESCRIBE/SUMMARIZE) over these views; files, extensions, ATTACH, SET and "
                                   "writes are refused. Write a result with -o FILE. --attach b=OTHER adds a "
                                   "second store's views as b.examples, b.dla, ...")
    p.add_argument("store", help="store directory")
    p.add_argument("query", help='SQL, e.g. "SELECT component, avg(value) FROM dla GROUP BY component"')
    p.add_argument("--attach", action="append", default=None, metavar="ALIAS=STORE",
                   help="also read the store at STORE, its views as ALIAS.examples, ALIAS.dla, ... "
                        "(repeat for several)")
    add_derived_options(p)
    add_output_options(p)
    p.set_defaults(handler=run_sql)

    p = sub.add_parser("breakdown", help="a query table split by example labels: mean, std, n, 95%% interval",
                       description="Group a query table (dla by default) by example labels and summarise its values: "
                                   "mean, std, n and a 95% Student-t interval per label and component.")
    p.add_argument("store", help="store directory")
    p.add_argument("--group-by", action="append", required=True, metavar="LABEL",
                   help="label column of the examples to split by (repeat for several)")
    p.add_argument("--of", choices=tuple(TABLES), default="dla", help="which table to split (default dla)")
    p.add_argument("--input", default=None, metavar="FILE",
                   help="split this table file (Parquet, or CSV if it ends in .csv; with example_id to join labels) "
                        "instead of a derived one; read batch by batch, here")
    p.add_argument("--value", default=None, help="value column (default: value, or projection for neurons)")
    add_derived_options(p)
    add_output_options(p)
    add_cluster_options(p)
    p.set_defaults(handler=run_breakdown)


def run_sql(args: argparse.Namespace) -> int:
    from actstore.query.sql import sql
    from actstore.store import open_store

    attach = attach_pairs(args.attach)
    store = open_store(args.store)
    write_table(sql(store, args.query, params=derived_params(args), attach=attach).pl(), args)
    return 0


def attach_pairs(pairs: list[str] | None) -> dict[str, str]:
    """`['b=path/to/B']` -> {'b': 'path/to/B'}; the aliases are checked by the query layer."""
    from actstore.errors import InvalidParameterError

    out: dict[str, str] = {}
    for pair in pairs or []:
        alias, sep, path = pair.partition("=")
        if not sep or not alias or not path:
            raise InvalidParameterError(f"--attach expects ALIAS=STORE (e.g. b=other_store), got {pair!r}")
        if alias in out:
            raise InvalidParameterError(f"--attach {alias!r} is given twice")
        out[alias] = path
    return out


def run_breakdown(args: argparse.Namespace) -> int:
    from actstore.errors import InvalidParameterError
    from actstore.query import streamed
    from actstore.query.breakdown_file import breakdown_file
    from actstore.query.summary import GroupSpec
    from actstore.store import open_store

    if args.value is not None and not args.value.strip():
        raise InvalidParameterError("--value is empty; name a numeric column of the table (default: value)")
    if args.input and (args.workers is not None or args.scheduler is not None):
        raise InvalidParameterError("--workers / --scheduler run a store's chunks on a cluster; --input FILE is read "
                                    "here, batch by batch: drop them")
    store = open_store(args.store)
    if args.input:
        write_table(breakdown_file(Path(args.input), args.group_by, store, value=args.value), args)
        return 0
    table_name = TABLES[args.of]  # per-chunk partials, never the whole table
    value = args.value or ("projection" if table_name == "neurons" else "value")
    spec = GroupSpec(by=tuple(args.group_by), value=value)
    with cluster_client(args) as client:
        write_table(streamed.summary(store, table_name, derived_params(args).get(table_name), spec, client), args)
    return 0
