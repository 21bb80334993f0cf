"""`actstore neurons`: MLP neuron activations and their outputs projected on a direction."""

from __future__ import annotations

import argparse

from actstore.cli.args import positive_int
from actstore.cli.attention import add_where_option, int_list, parse_where
from actstore.cli.cluster import add_cluster_options, cluster_client
from actstore.cli.output import add_output_options, output_format, write_frames, write_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "neurons", help="per-neuron activation and output projected on the answer, diff or a vector direction",
        description="Each MLP neuron's activation (hook_post) and its output written onto a direction: the "
                    "answer's unembedding (answer), correct minus counterfactual (diff) or a .npy vector of "
                    "shape [d_model], with the stored LayerNorm scales; --through-head pulls the direction back "
                    "through a later head's OV circuit (as in the brackets seed). Default rows: the answer "
                    "positions. --top-k keeps the best rows per neuron; --correlate LABEL prints Pearson r per "
                    "neuron against a numeric label instead.")
    p.add_argument("store", help="store directory")
    p.add_argument("--layers", default=None, metavar="L[,L...]",
                   help="MLP layers (default: all, or those before --through-head)")
    p.add_argument("--direction", default="answer", metavar="answer|diff|FILE.npy|name:NAME",
                   help="direction to project on: answer (default), diff, a .npy vector or a direction saved in the "
                        "store (`actstore direction list`)")
    p.add_argument("--through-head", default=None, metavar="LAYER.HEAD",
                   help="pull the direction back through this head's OV (e.g. 2.0)")
    p.add_argument("--attention-weighted", action="store_true",
                   help="with --through-head: weight by the head's attention from the answer position to the row")
    p.add_argument("--pos", default=None, metavar="SEL",
                   help="positions or roles of the rows (default: the answer positions)")
    p.add_argument("--answer", type=int, default=0, help="with --pos: which answer's tokens/position to read (0)")
    p.add_argument("--final-ln", action="store_true", help="a vector direction reads the final LayerNorm scale too")
    p.add_argument("--top-k", type=positive_int, default=None, metavar="K", help="keep the K best rows per neuron")
    p.add_argument("--rank-by", choices=("projection", "activation", "-projection", "-activation"),
                   default=None, help="what --top-k ranks by ('-': smallest first; default projection)")
    p.add_argument("--correlate", default=None, metavar="LABEL",
                   help="print layer, neuron, r, n: Pearson r of each neuron's --value with this numeric label, "
                        "strongest |r| first")
    p.add_argument("--value", choices=("activation", "projection"), default="activation",
                   help="what --correlate correlates (default activation)")
    add_where_option(p)
    add_output_options(p)
    add_cluster_options(p)
    p.set_defaults(handler=run_neurons)


def run_neurons(args: argparse.Namespace) -> int:
    import polars as pl

    from actstore.query.neuron_stats import neuron_correlation
    from actstore.query.neurons import SCHEMA, mlp_layers, neuron_frames, neurons
    from actstore.query.options import RankBy
    from actstore.query.selectors import parse_selector
    from actstore.store import open_store

    output_format(args)  # a bad -o fails before the query runs
    check_flags(args)
    requested = int_list(args.layers, "--layers")
    store = open_store(args.store)
    layers = mlp_layers(store, requested or None, args.through_head)
    common = dict(direction=check_direction(args.direction), through_head=args.through_head,
                  pos=parse_selector(args.pos), answer=args.answer, final_ln=True if args.final_ln else None,
                  attention_weighted=args.attention_weighted, where=parse_where(args.where, store))
    with cluster_client(args) as client:
        if args.correlate is not None:
            table = neuron_correlation(store, layers, args.correlate, value=args.value, client=client, **common)
            write_table(table.sort(table["r"].abs().fill_nan(None), descending=True, nulls_last=True), args)
        elif args.top_k is not None:
            rank_by: RankBy = args.rank_by or "projection"  # argparse choices=RANK_BY
            write_table(neurons(store, layers, top_k=args.top_k, rank_by=rank_by, client=client, **common), args)
        else:  # every row: streamed, the table may not fit in memory (neuron_frames checks every layer first)
            write_frames(neuron_frames(store, layers, client=client, **common), pl.DataFrame(schema=SCHEMA), args)
    return 0


def check_flags(args: argparse.Namespace) -> None:
    """Refuse flags that the chosen mode would silently ignore."""
    from actstore.errors import InvalidParameterError

    if args.correlate is None and args.value != "activation":
        raise InvalidParameterError("--value applies to --correlate only")
    if args.correlate is not None and args.top_k is not None:
        raise InvalidParameterError("--top-k and --correlate do not combine; pick one")
    if args.rank_by is not None and args.top_k is None:
        raise InvalidParameterError("--rank-by applies to --top-k only; add --top-k K")


def check_direction(direction: str) -> str:
    """`direction` unchanged; a file that exists but is not a readable .npy array is an error naming it."""
    from pathlib import Path

    import numpy as np

    from actstore.errors import InvalidParameterError

    if direction in ("answer", "diff") or not Path(direction).is_file():
        return direction  # the query names unknown directions itself
    try:
        np.load(direction, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError, EOFError) as e:
        raise InvalidParameterError(f"--direction {direction!r} is not a readable .npy array ({e}); save one with "
                                    "numpy.save") from None
    return direction
