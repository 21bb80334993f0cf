"""`actstore compare A B`: per-component DLA of one store against another, paired by example."""

from __future__ import annotations

import argparse

from actstore.cli.output import add_output_options, output_format, write_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="per-component DLA of store A against store B on the same examples: "
                                       "mean in each, mean change, 95%% interval",
                       description="Compare the direct logit attribution of two stores that hold the same examples "
                                   "(two models or checkpoints on one task; or, with --corrupted, one model's clean "
                                   "examples in A and their corrupted twins in B). One row per component and "
                                   "answer: mean in A, mean in B, mean change B - A with its 95% interval paired "
                                   "by example, n; largest |change| first. Stores that do not cover the same "
                                   "examples (task, task parameters, seed, tokens, answers) are refused.")
    p.add_argument("a", metavar="A", help="first store directory")
    p.add_argument("b", metavar="B", help="second store directory (the change is B - A)")
    p.add_argument("--level", choices=("head", "layer"), default="head",
                   help="components: heads (default) or whole layers")
    p.add_argument("--target", choices=("correct", "diff"), default="correct",
                   help="the correct token's logit, or correct minus counterfactual (default correct)")
    p.add_argument("--corrupted", action="store_true",
                   help="B holds the corrupted twins of A's examples (e.g. ingested with --param corrupt=abc), "
                        "run through the same model")
    add_output_options(p)
    p.set_defaults(handler=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    from actstore.query.compare import compare
    from actstore.store import open_store

    output_format(args)  # a bad -o fails before anything is computed
    a, b = open_store(args.a), open_store(args.b)
    write_table(compare(a, b, level=args.level, target=args.target, corrupted=args.corrupted), args)
    return 0
