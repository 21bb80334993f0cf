"""`actstore weights`: weight algebra as tables (matrices, SVD, cosines, Fourier basis).

    actstore weights matrix  STORE SPEC [--rows IDS] [--cols IDS]
    actstore weights svd     STORE SPEC [--k K] [--values]
    actstore weights cosine  STORE LEFT RIGHT [--left-ids IDS] [--right-ids IDS]
    actstore weights fourier STORE SPEC [--over AXIS] [--ids IDS] [--spectrum]

SPEC names a matrix (actstore.query.weights): 'OV:1.0', 'QK:1.0', 'OV:0.0>1.0' (a path of heads),
'K:0.0>1.0', 'W_E@OV:1.0@W_U', 'W_pos@K:0.0>1.0@W_E', 'W_U', 'W_in:0', ... IDS: '0,3,5-9'.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from actstore.cli.args import positive_int
from actstore.cli.output import add_output_options, output_format, write_table

if TYPE_CHECKING:
    import polars as pl

    from actstore.store.reader import Store

SPEC_HELP = ("matrix: OV:L.H, QK:L.H, OV:A>B>... (path), K:A>B / Q:A>B / V:A>B (composition), optionally "
             "START@...@END with W_E, W_pos, W_U (e.g. W_E@OV:1.0@W_U), or a stored weight: W_E, W_pos, W_U, "
             "W_in:L, W_out:L, W_Q:L.H, W_K:L.H, W_V:L.H, W_O:L.H")
TOKEN_AXES = ("token", "output", "q_token", "k_token")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weights", help="weight algebra as tables: W_OV / W_QK, paths, composition, SVD, cosines, "
                                       "Fourier basis",
                       description="Weight algebra from the store's processed weights, as tidy tables (no "
                                   "activations read). " + SPEC_HELP + ".")
    kinds = p.add_subparsers(dest="weights_kind", metavar="KIND", required=True)

    m = kinds.add_parser("matrix", help="a matrix as a long table (row id, column id, value)",
                         description="The matrix SPEC names, one row per cell; token axes get their strings.")
    m.add_argument("store", help="store directory")
    m.add_argument("spec", metavar="SPEC", help=SPEC_HELP)
    m.add_argument("--rows", default=None, metavar="IDS", help="row ids to keep, e.g. 0,3,5-9 (default all)")
    m.add_argument("--cols", default=None, metavar="IDS", help="column ids to keep (default all)")
    add_output_options(m)
    m.set_defaults(handler=run_matrix)

    s = kinds.add_parser("svd", help="singular values and vectors of a matrix",
                         description="Singular values and vectors of the matrix SPEC names: one row per vector "
                                     "entry (component, singular_value, side, axis, index, value); products of heads "
                                     "stay factored (rank <= d_head).")
    s.add_argument("store", help="store directory")
    s.add_argument("spec", metavar="SPEC", help=SPEC_HELP)
    s.add_argument("--k", type=positive_int, default=None, help="the top K singular values (default all)")
    s.add_argument("--values", action="store_true", help="singular values only (component, singular_value)")
    s.add_argument("--rows", default=None, metavar="IDS", help="row ids to keep")
    s.add_argument("--cols", default=None, metavar="IDS", help="column ids to keep")
    add_output_options(s)
    s.set_defaults(handler=run_svd)

    c = kinds.add_parser("cosine", help="cosine similarity between two sets of residual-stream vectors",
                         description="Cosine of every LEFT vector with every RIGHT vector. A set is a SPEC with one "
                                     "d_model axis (W_in:0 = neuron input directions, W_E@OV:0.0 = token images "
                                     "under head 0.0's OV, W_U, W_out:1, ...) or a saved direction dir:NAME.")
    c.add_argument("store", help="store directory")
    c.add_argument("left", metavar="LEFT", help="vector set, e.g. W_E@OV:0.0 or dir:unbalanced")
    c.add_argument("right", metavar="RIGHT", help="vector set, e.g. W_in:0")
    c.add_argument("--left-ids", default=None, metavar="IDS", help="which LEFT vectors (token / neuron ids)")
    c.add_argument("--right-ids", default=None, metavar="IDS", help="which RIGHT vectors")
    add_output_options(c)
    c.set_defaults(handler=run_cosine)

    f = kinds.add_parser("fourier", help="a matrix in the Fourier basis along its token or position axis",
                         description="Seed 003's Fourier view: the matrix SPEC names, projected along one axis on "
                                     "the basis const, cos 1, sin 1, ... over --ids in order (e.g. W_U --ids 0-9).")
    f.add_argument("store", help="store directory")
    f.add_argument("spec", metavar="SPEC", help=SPEC_HELP)
    f.add_argument("--over", default=None, metavar="AXIS",
                   help="axis to transform along (default: the one that is not d_model)")
    f.add_argument("--ids", default=None, metavar="IDS", help="ids along that axis, in order (default all)")
    f.add_argument("--spectrum", action="store_true", help="magnitude and phase of the real FFT instead")
    add_output_options(f)
    f.set_defaults(handler=run_fourier)


def id_list(text: str | None, what: str) -> list[int] | None:
    """'0,3,5-9' -> [0, 3, 5, 6, 7, 8, 9]; None stays None; anything else is one error line."""
    if text is None:
        return None
    from actstore.errors import InvalidParameterError

    out: list[int] = []
    for part in (t.strip() for t in text.split(",")):
        if not part:
            continue
        lo, dash, hi = part.partition("-")
        try:
            if dash and lo.strip():
                a, b = int(lo), int(hi)
                if b < a or b - a > 10_000_000:
                    raise ValueError
                out.extend(range(a, b + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise InvalidParameterError(f"{what} expects comma-separated ids or ranges such as 0,3,5-9, got "
                                        f"{text!r}") from None
    if not out:
        raise InvalidParameterError(f"{what} is empty; give ids such as 0,3,5-9, or leave it out for all")
    return out


def with_token_strings(table: pl.DataFrame, store: Store) -> pl.DataFrame:
    """A matrix table (two id columns, value) with '<axis>_str' columns after the ids for every
    token axis (the strings of tokens the store's examples use; null for others)."""
    import polars as pl

    axes = [c for c in table.columns[:2] if c in TOKEN_AXES]
    if not axes:
        return table
    names = store.tokens.select(pl.col("token_id").alias("id"), pl.col("str_token").alias("s")).unique("id")
    for axis in axes:
        table = table.join(names.rename({"id": axis, "s": f"{axis}_str"}), on=axis, how="left", maintain_order="left")
    return table.select(*table.columns[:2], *[f"{a}_str" for a in axes], "value")


def run_matrix(args: argparse.Namespace) -> int:
    from actstore.query.weights import matrix_table
    from actstore.store import open_store

    output_format(args)
    rows, cols = id_list(args.rows, "--rows"), id_list(args.cols, "--cols")
    store = open_store(args.store)
    write_table(with_token_strings(matrix_table(store, args.spec, rows, cols), store), args)
    return 0


def run_svd(args: argparse.Namespace) -> int:
    from actstore.query.weights import svd_table
    from actstore.store import open_store

    output_format(args)
    rows, cols = id_list(args.rows, "--rows"), id_list(args.cols, "--cols")
    store = open_store(args.store)
    write_table(svd_table(store, args.spec, k=args.k, rows=rows, cols=cols, vectors=not args.values), args)
    return 0


def run_cosine(args: argparse.Namespace) -> int:
    from actstore.query.cosines import cosine_table
    from actstore.store import open_store

    output_format(args)
    left_ids, right_ids = id_list(args.left_ids, "--left-ids"), id_list(args.right_ids, "--right-ids")
    store = open_store(args.store)
    write_table(cosine_table(store, args.left, args.right, left_ids, right_ids), args)
    return 0


def run_fourier(args: argparse.Namespace) -> int:
    from actstore.query.fourier import weight_fourier
    from actstore.store import open_store

    output_format(args)
    ids = id_list(args.ids, "--ids")
    store = open_store(args.store)
    write_table(weight_fourier(store, args.spec, over=args.over, ids=ids, spectrum=args.spectrum), args)
    return 0
