"""`actstore probe`: linear probe accuracy per hook, position and label; `actstore pca`: principal components."""

from __future__ import annotations

import argparse
import sys

from actstore.cli.args import int_at_least, positive_int
from actstore.cli.attention import add_where_option, name_list, parse_where
from actstore.cli.output import add_output_options, output_format, write_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "probe", help="linear probe accuracy of labels at stored hooks and positions (train/test split)",
        description="Train a linear probe (LDA, shrinkage chosen on a validation split of the training examples) "
                    "to read each --label from each hook at each position, and test it on held-out examples "
                    "(split by a hash of example_id). One row per (hook, pos, label): train_acc, test_acc, n, "
                    "n_train, n_test, n_classes, baseline (always answering the commonest training class), "
                    "shrinkage. Streams the store twice per hook; any size fits in memory.")
    p.add_argument("store", help="store directory")
    p.add_argument("--label", action="append", required=True, metavar="LABEL[,LABEL...]",
                   help="example label(s) to probe for, e.g. carry_0 (repeatable)")
    p.add_argument("--hooks", default=None, metavar="HOOK[,HOOK...]",
                   help="stored hooks, or short forms for every layer (resid_post, z); default: every stored "
                        "residual hook, else every hook_z")
    p.add_argument("--pos", default=None, metavar="SEL[,SEL...]",
                   help="positions to probe at, one row each: an index (negative: from each example's end), a "
                        "token role (=, END), answer:J, or 'all' (default: answer:0, the first answer position)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="share of examples held out for testing (0.2)")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the train/test split (0)")
    p.add_argument("--shrinkage", type=float, default=None,
                   help="fix the LDA shrinkage in [0, 1] (default: chosen on a validation split)")
    p.add_argument("--bins", type=int_at_least(2), default=None,
                   help="cut a numeric label with many values into this many quantile bins")
    p.add_argument("--max-classes", type=int_at_least(2), default=32,
                   help="most distinct values a label may have without --bins (32)")
    p.add_argument("--chart", default=None, metavar="FILE",
                   help="also draw test accuracy per hook to .html, .png or .svg")
    add_where_option(p)
    add_output_options(p)
    p.set_defaults(handler=run_probe)

    q = sub.add_parser(
        "pca", help="principal components of a hook at one position, with labels to colour by",
        description="Principal components of a stored hook's value at one position (other axes flattened), "
                    "streamed: one row per example with pc1..pcK and the --color labels, or with --variance the "
                    "variance each component explains. --chart draws pc1 vs pc2 coloured by the first label.")
    q.add_argument("store", help="store directory")
    q.add_argument("--hook", default=None, help="stored hook (default: the deepest stored residual hook, else the "
                                                "last hook_z)")
    q.add_argument("--pos", default=None, metavar="SEL",
                   help="one position: index, token role or answer:J (default answer:0)")
    q.add_argument("--color", default=None, metavar="LABEL[,LABEL...]", help="label column(s) to add (and colour by)")
    q.add_argument("--components", type=positive_int, default=2, metavar="K", help="components to keep (2)")
    q.add_argument("--variance", action="store_true", help="print the explained variance per component instead")
    q.add_argument("--chart", default=None, metavar="FILE", help="also draw pc1 vs pc2 to .html, .png or .svg")
    add_where_option(q)
    add_output_options(q)
    q.set_defaults(handler=run_pca)


def pos_items(text: str | None) -> list[int | str] | None:
    """'=,3,answer:1' -> ['=', 3, 'answer:1'] (ints where they parse); None stays None."""
    from actstore.errors import InvalidParameterError

    if text is None:
        return None
    items: list[int | str] = []
    for part in (t.strip() for t in text.split(",")):
        if not part:
            continue
        try:
            items.append(int(part))
        except ValueError:
            items.append(part)
    if not items:
        raise InvalidParameterError("--pos is empty; leave it out for the first answer position")
    return items


def check_chart(path: str | None) -> None:
    """A bad --chart path fails before the query runs."""
    if path is None:
        return
    from actstore.charts.export import chart_format
    from actstore.outputs import check_output_path

    chart_format(path)
    check_output_path(path)


def run_probe(args: argparse.Namespace) -> int:
    from actstore.query.probes import probe
    from actstore.store import open_store

    output_format(args)
    check_chart(args.chart)
    labels = [name for text in args.label for name in name_list(text, "--label") or []]
    store = open_store(args.store)
    table = probe(store, labels, hooks=name_list(args.hooks, "--hooks"), pos=pos_items(args.pos),
                  test_fraction=args.test_fraction, seed=args.seed, shrinkage=args.shrinkage, bins=args.bins,
                  max_classes=args.max_classes, where=parse_where(args.where, store))
    if args.chart is not None:
        from actstore.charts.export import save_chart
        from actstore.charts.probes import probe_accuracy

        print(f"wrote probe chart to {save_chart(probe_accuracy(table), args.chart)}", file=sys.stderr)
    write_table(table, args)
    return 0


def run_pca(args: argparse.Namespace) -> int:
    from actstore.errors import InvalidParameterError
    from actstore.query.pca import pca
    from actstore.store import open_store

    output_format(args)
    check_chart(args.chart)
    pos = pos_items(args.pos)
    if pos is not None and len(pos) != 1:
        raise InvalidParameterError(f"--pos: pca reads one position, got {args.pos!r}")
    if args.chart is not None and args.components < 2:
        raise InvalidParameterError("--chart draws pc1 against pc2: it needs --components 2 or more")
    colors = name_list(args.color, "--color")
    store = open_store(args.store)
    result = pca(store, args.hook, pos[0] if pos else None, k=args.components, color=colors,
                 where=parse_where(args.where, store))
    shares = ", ".join(f"pc{c} {r:.1%}" for c, r in result.variance.select("component", "ratio").iter_rows())
    print(f"pca of {result.hook} at pos {result.pos}: {result.scores.height} examples; variance explained: {shares}",
          file=sys.stderr)
    if args.chart is not None:
        from actstore.charts.export import save_chart
        from actstore.charts.probes import pca_scatter

        chart = pca_scatter(result.scores, result.variance, colors[0] if colors else None,
                            f"Principal components of {result.hook} at pos {result.pos}")
        print(f"wrote pca chart to {save_chart(chart, args.chart)}", file=sys.stderr)
    write_table(result.variance if args.variance else result.scores, args)
    return 0
