"""`actstore chart KIND STORE -o FILE` and `actstore report STORE -o report.html`."""

from __future__ import annotations

import argparse
import sys
import time

from actstore.cli.args import float_in, positive_int
from actstore.errors import InvalidParameterError

# make_chart option -> the flag that sets it
FLAGS = {"target": "--target", "group_by": "--group-by", "heads": "--heads", "layer": "--layer", "head": "--head",
         "query_role": "--query-role", "key_roles": "--key-roles", "x": "--x", "color": "--color",
         "which": "--neurons", "direction": "--direction", "through_head": "--through-head", "pos": "--pos",
         "top": "--top", "sweep": "--sweep", "matrix": "--matrix"}
CHART_FORMATS = ".html (Vega inlined, works offline), .png or .svg"


def _heads(text: str) -> list[tuple[int, int]]:
    """'1.0,1.2' or 'L1H0,L1H2' -> [(1, 0), (1, 2)]."""
    out = []
    for part in text.split(","):
        p = part.strip().upper().removeprefix("L").replace("H", ".")
        layer, sep, head = p.partition(".")
        if not sep or not layer.isdigit() or not head.isdigit():
            raise argparse.ArgumentTypeError(f"bad head {part!r}: write LAYER.HEAD or LlayerHhead, e.g. 1.0 or L1H0")
        out.append((int(layer), int(head)))
    return out


def _neurons(text: str) -> list[int] | str:
    if text == "sum":
        return text
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--neurons takes 'sum' or comma-separated ids, got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    from actstore.charts.kinds import KIND_HELP

    kinds = "\n".join(f"  {name:16s} {text}" for name, text in KIND_HELP.items())
    p = sub.add_parser("chart", help="draw one chart of a store to HTML / PNG / SVG",
                       description=f"Draw one chart of a store.\n\nkinds:\n{kinds}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", help="chart kind (listed above)")
    p.add_argument("store", help="store directory")
    p.add_argument("-o", "--output", required=True, help=f"output file: {CHART_FORMATS}")
    p.add_argument("--target", choices=("correct", "diff"), help="DLA / logit lens target (default: diff where the "
                   "task has counterfactual tokens, else correct)")
    p.add_argument("--group-by", help="example label to split by (dla-split, attention-roles, logit-lens, accuracy)")
    p.add_argument("--heads", type=_heads,
                   help="heads to draw, e.g. 1.0,1.2 (default: all, or the 12 with largest DLA)")
    p.add_argument("--layer", type=int, help="layer (neurons, circuits; attention, attention-roles: its heads)")
    p.add_argument("--head", type=int, help="head (circuits)")
    p.add_argument("--query-role", help="query token role (attention-roles; default END for IOI, else the role at the "
                   "first answer position)")
    p.add_argument("--key-roles", type=lambda s: s.split(","), help="key roles to show, comma-separated")
    p.add_argument("--x", help="numeric label on the x axis (neurons)")
    p.add_argument("--color", help="label to colour points by (neurons)")
    p.add_argument("--neurons", type=_neurons, help="neuron ids (comma-separated) or 'sum' for the layer total")
    p.add_argument("--direction", help="neurons: 'answer', 'diff' or a .npy direction file (default answer)")
    p.add_argument("--through-head", help="neurons: pull the direction back through this head's OV, e.g. 2.0")
    p.add_argument("--pos", type=lambda v: int(v) if v.lstrip("-").isdigit() else v,
                   help="neurons: position or token role to read (default: the answer positions)")
    p.add_argument("--top", type=positive_int, help="bars (dla) or neurons to keep, largest first")
    p.add_argument("--matrix", help="weights, weight-svd, weight-fourier: a matrix spec, e.g. 'W_E@OV:1.0@W_U', "
                   "'K:0.0>1.0', 'W_U' (see docs/weights.md)")
    p.add_argument("--sweep", help="sweep: the stored sweep's id (see `actstore info` or the sweeps SQL view)")
    p.add_argument("--scale", type=float_in(0, 10), default=None, help="PNG resolution multiplier, up to 10 "
                   "(default 2)")
    p.set_defaults(handler=run_chart)

    r = sub.add_parser("report", help="write one self-contained HTML report of a store's standard charts")
    r.add_argument("store", help="store directory")
    r.add_argument("-o", "--output", required=True, help="output .html file")
    r.add_argument("--title", help="page title (default: task x model)")
    r.set_defaults(handler=run_report)


def run_chart(args: argparse.Namespace) -> int:
    from actstore.charts.export import chart_format, save_chart
    from actstore.outputs import check_output_path
    from actstore.charts.kinds import KIND_HELP

    if args.kind not in KIND_HELP:
        raise InvalidParameterError(f"unknown chart kind {args.kind!r}; kinds: {', '.join(KIND_HELP)}")
    from actstore.charts.standard import make_chart
    from actstore.store import open_store

    fmt = chart_format(args.output)  # a bad -o fails before any query runs
    check_output_path(args.output)
    if args.scale is not None and fmt != "png":
        raise InvalidParameterError(f"--scale applies to .png output only, not {args.output!r}")
    options = chart_options(args)
    store = open_store(args.store)
    start = time.perf_counter()
    chart = make_chart(store, args.kind, **options)
    out = save_chart(chart, args.output, scale=args.scale or 2.0)
    print(f"wrote {args.kind} chart of {store.path} to {out} ({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    return 0


def chart_options(args: argparse.Namespace) -> dict[str, object]:
    """make_chart's options from the flags; a flag the kind does not use, or an empty one, is an error."""
    from actstore.charts.standard import kind_options

    from actstore.cli.neurons import check_direction

    options = {name: getattr(args, flag.removeprefix("--").replace("-", "_")) for name, flag in FLAGS.items()}
    used = kind_options(args.kind)
    for name, value in options.items():
        if value is None:
            continue
        if name not in used:
            flags = " ".join(FLAGS[u] for u in used) or "none"
            raise InvalidParameterError(f"{FLAGS[name]} does not apply to chart {args.kind} (its options: {flags})")
        if value == "" or value == [""]:
            raise InvalidParameterError(f"{FLAGS[name]} is empty")
    if options["direction"] is not None:
        check_direction(options["direction"])
    return options


def run_report(args: argparse.Namespace) -> int:
    from actstore.charts.page import check_report_path
    from actstore.charts.report import build_report
    from actstore.store import open_store

    check_report_path(args.output)
    store = open_store(args.store)
    start = time.perf_counter()
    out = build_report(store, args.output, title=args.title)
    print(f"wrote report of {store.path} to {out} ({out.stat().st_size / 1e6:.1f} MB, "
          f"{time.perf_counter() - start:.1f} s)", file=sys.stderr)
    return 0
