"""`actstore direction`: derive, save, list and export named residual-stream directions.

    actstore direction fit-ln     STORE --name N (--token T [--minus T2] | --vector F.npy | --from NAME)
                                  [--ln ln_final|ln1|ln2] [--layer L] [--pos SEL] [--where LABEL=VALUE]
    actstore direction through-ov STORE --name N --head L.H --from NAME|F.npy [--ln fit|none] [--pos SEL]
    actstore direction save       STORE --name N (--vector F.npy | --token T [--minus T2] | --svd SPEC
                                  [--component K] [--side left|right]) [--final-ln]
    actstore direction list       STORE
    actstore direction export     STORE NAME [-o FILE.npy | --format ...]
    actstore direction remove     STORE NAME

A saved direction is then read by name wherever a direction is taken ('name:N' or plain N).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from actstore.cli.attention import add_where_option, parse_where
from actstore.cli.output import add_output_options, output_format, write_table

if TYPE_CHECKING:
    import numpy as np

    from actstore.store.reader import Store


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("direction", help="derive, save, list and export named residual-stream directions",
                       description="Named directions saved in the store (STORE/directions/), usable by name "
                                   "wherever a direction is taken. fit-ln pulls a direction back through a linear "
                                   "fit of a LayerNorm (seed 002's 'unbalanced' direction); through-ov through a "
                                   "head's OV and its ln1 fit (seed 002's pre-head direction).")
    kinds = p.add_subparsers(dest="direction_kind", metavar="ACTION", required=True)

    f = kinds.add_parser("fit-ln", help="fit a LayerNorm linearly and save a direction pulled back through it",
                         description="Least-squares linear fit of a LayerNorm over the store's examples at --pos; "
                                     "the direction given (read after the LayerNorm) is pulled back to its input as "
                                     "coef^T d and saved. Prints the fit (n rows, r2).")
    _common(f)
    _source(f, allow_from=True)
    f.add_argument("--ln", choices=("ln_final", "ln1", "ln2"), default="ln_final",
                   help="which LayerNorm (default ln_final; ln1/ln2 need --layer)")
    f.add_argument("--layer", type=int, default=None, help="the LayerNorm's layer (ln1, ln2)")
    f.add_argument("--pos", default=None, metavar="SEL", help="positions or roles to fit at (default: all)")
    add_where_option(f)
    f.set_defaults(handler=run_fit_ln)

    t = kinds.add_parser("through-ov", help="pull a direction back through a head's OV (and its ln1 fit)",
                         description="d' = coef_ln1^T W_V W_O d for head L.H (--ln fit, the seed's pre-head "
                                     "direction, ln1 fitted at --pos: the key position the head reads), or "
                                     "W_V W_O d (--ln none).")
    _common(t)
    t.add_argument("--head", required=True, metavar="L.H", help="the head, e.g. 2.0")
    t.add_argument("--from", dest="source", required=True, metavar="NAME|FILE.npy",
                   help="the direction at the head's output: a saved direction or a .npy vector")
    t.add_argument("--ln", choices=("fit", "none"), default="fit", help="fit the head's ln1 (default) or not")
    t.add_argument("--pos", default=None, metavar="SEL", help="positions the ln1 fit uses (default: all)")
    add_where_option(t)
    t.set_defaults(handler=run_through_ov)

    s = kinds.add_parser("save", help="save a vector, an unembedding difference or a singular vector by name")
    _common(s)
    _source(s, allow_from=False)
    s.add_argument("--svd", default=None, metavar="SPEC", help="a singular vector of this matrix (actstore weights)")
    s.add_argument("--component", type=int, default=None, help="with --svd: which singular vector (default 0)")
    s.add_argument("--side", choices=("left", "right"), default=None, help="with --svd: rows' or columns' (right)")
    s.add_argument("--final-ln", action="store_true",
                   help="queries read it like an unembedding column (centred, over the final LayerNorm scale)")
    s.set_defaults(handler=run_save)

    ls = kinds.add_parser("list", help="the saved directions: name, d_model, norm, how each was made")
    ls.add_argument("store", help="store directory")
    add_output_options(ls)
    ls.set_defaults(handler=run_list)

    e = kinds.add_parser("export", help="a saved direction as a table (dim, value) or a .npy file (-o F.npy)")
    e.add_argument("store", help="store directory")
    e.add_argument("name", help="the saved direction")
    add_output_options(e)
    e.set_defaults(handler=run_export)

    r = kinds.add_parser("remove", help="delete a saved direction")
    r.add_argument("store", help="store directory")
    r.add_argument("name", help="the saved direction")
    r.set_defaults(handler=run_remove)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help="store directory")
    p.add_argument("--name", required=True, help="name to save the direction under")
    p.add_argument("--force", action="store_true", help="replace a saved direction of that name")
    add_output_options(p)


def _source(p: argparse.ArgumentParser, allow_from: bool) -> None:
    p.add_argument("--token", type=int, default=None, help="the direction W_U[:, TOKEN] (an output token id)")
    p.add_argument("--minus", type=int, default=None, help="with --token: minus W_U[:, MINUS]")
    p.add_argument("--vector", default=None, metavar="FILE.npy", help="a [d_model] vector saved with numpy.save")
    if allow_from:
        p.add_argument("--from", dest="source", default=None, metavar="NAME", help="a saved direction")


def _given_vector(store: Store, args: argparse.Namespace) -> tuple[np.ndarray, dict[str, Any]] | None:
    """The vector --token/--minus, --vector or --from gives (exactly one of them), or None if none."""
    from actstore.errors import InvalidParameterError
    from actstore.query.directions import parse_direction
    from actstore.query.ln_fit import unembed_direction
    from actstore.store.directions import load_direction

    given = [flag for flag, v in (("--token", args.token), ("--vector", args.vector),
                                  ("--from", getattr(args, "source", None))) if v is not None]
    if args.minus is not None and args.token is None:
        raise InvalidParameterError("--minus needs --token")
    if len(given) > 1:
        raise InvalidParameterError(f"give one of --token, --vector, --from; got {' and '.join(given)}")
    if not given:
        return None
    if args.token is not None:
        return unembed_direction(store, args.token, args.minus), {"token": args.token, "minus": args.minus}
    if args.vector is not None:
        d = parse_direction(_npy(args.vector), store.arch.d_model)
        assert d.vector is not None
        return d.vector, {"vector": args.vector}
    return load_direction(store.path, args.source).vector, {"from": args.source}


def _npy(path: str) -> str:
    """`path` if it names a readable .npy file; one error line otherwise."""
    from pathlib import Path

    import numpy as np

    from actstore.errors import InvalidParameterError

    if not Path(path).is_file():
        raise InvalidParameterError(f"--vector {path!r} is not a file; save a [d_model] vector with numpy.save")
    try:
        np.load(path, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError, EOFError) as e:
        raise InvalidParameterError(f"--vector {path!r} is not a readable .npy array ({e})") from None
    return path


def _saved_row(saved: Any) -> dict[str, Any]:
    import json

    info = dict(saved.info)
    return {"name": saved.name, "kind": info.pop("kind", None), "d_model": int(saved.vector.size),
            "norm": saved.norm, "final_ln": saved.final_ln, "r2": info.pop("r2", None), "n": info.pop("n", None),
            "info": json.dumps(info, sort_keys=True), "created": saved.created}


def _write_saved(args: argparse.Namespace, saved: Any) -> None:
    import polars as pl

    write_table(pl.DataFrame([_saved_row(saved)]), args)


def run_fit_ln(args: argparse.Namespace) -> int:
    from actstore.errors import InvalidParameterError
    from actstore.query.ln_fit import fit_layernorm
    from actstore.query.selectors import parse_selector
    from actstore.store import open_store
    from actstore.store.directions import check_name, save_direction

    output_format(args)
    check_name(args.name)
    store = open_store(args.store)
    given = _given_vector(store, args)
    if given is None:
        raise InvalidParameterError("fit-ln needs the direction after the LayerNorm: --token T [--minus T2], "
                                    "--vector FILE.npy or --from NAME")
    vector, made_from = given
    if args.ln == "ln_final" and args.layer is not None:
        raise InvalidParameterError("--layer applies to --ln ln1 / ln2 only")
    pos = parse_selector(args.pos)
    fit = fit_layernorm(store, args.ln, args.layer, pos, parse_where(args.where, store))
    saved = save_direction(store.path, args.name, fit.pull_back(vector), overwrite=args.force,
                           info={"kind": "fit-ln", **made_from, **fit.info(pos)})
    _write_saved(args, saved)
    return 0


def run_through_ov(args: argparse.Namespace) -> int:
    from actstore.errors import InvalidParameterError
    from actstore.query.directions import parse_direction
    from actstore.query.ln_fit import through_ov
    from actstore.query.selectors import parse_selector
    from actstore.store import open_store
    from actstore.store.directions import check_name, save_direction

    output_format(args)
    check_name(args.name)
    store = open_store(args.store)
    d = parse_direction(args.source, store.arch.d_model, store=store)
    if d.vector is None:
        raise InvalidParameterError(f"--from {args.source!r} is a per-example logit direction; give a saved "
                                    "direction or a .npy vector (e.g. save one with `direction save --token`)")
    pos = parse_selector(args.pos)
    vector, fit = through_ov(store, d.vector, args.head, args.ln, pos, parse_where(args.where, store))
    info = {"kind": "through-ov", "from": args.source, "head": args.head, "ln_fit": args.ln}
    if fit is not None:
        info |= fit.info(pos)
    saved = save_direction(store.path, args.name, vector, overwrite=args.force, info=info)
    _write_saved(args, saved)
    return 0


def run_save(args: argparse.Namespace) -> int:
    from actstore.errors import InvalidParameterError
    from actstore.query.weights import singular_vector
    from actstore.store import open_store
    from actstore.store.directions import check_name, save_direction

    output_format(args)
    check_name(args.name)
    if args.svd is None and (args.component is not None or args.side is not None):
        raise InvalidParameterError("--component and --side apply to --svd only")
    store = open_store(args.store)
    given = _given_vector(store, args)
    if (given is None) == (args.svd is None):
        raise InvalidParameterError("give exactly one of --token, --vector, --svd")
    if given is None:
        comp, side = args.component or 0, args.side or "right"
        vector = singular_vector(store, args.svd, comp, side)
        if vector.size != store.arch.d_model:
            raise InvalidParameterError(f"--svd {args.svd!r}: its {side} singular vectors have {vector.size} entries, "
                                        f"not d_model ({store.arch.d_model}); take the other --side")
        given = vector, {"svd": args.svd, "component": comp, "side": side}
    vector, made_from = given
    saved = save_direction(store.path, args.name, vector, final_ln=args.final_ln, overwrite=args.force,
                           info={"kind": "save", **made_from})
    _write_saved(args, saved)
    return 0


def run_list(args: argparse.Namespace) -> int:
    import polars as pl

    from actstore.store import open_store
    from actstore.store.directions import list_directions

    output_format(args)
    store = open_store(args.store)
    rows = [_saved_row(s) for s in list_directions(store.path)]
    schema = {"name": pl.String, "kind": pl.String, "d_model": pl.Int64, "norm": pl.Float64, "final_ln": pl.Boolean,
              "r2": pl.Float64, "n": pl.Int64, "info": pl.String, "created": pl.String}
    write_table(pl.DataFrame(rows, schema=schema), args)
    return 0


def run_export(args: argparse.Namespace) -> int:
    import sys

    import numpy as np
    import polars as pl

    from actstore.outputs import atomic_output
    from actstore.store import open_store
    from actstore.store.directions import load_direction

    npy = args.output is not None and args.output.lower().endswith(".npy")
    if npy:
        from actstore.errors import InvalidParameterError
        from actstore.outputs import check_output_path

        if args.format is not None or args.limit is not None:
            raise InvalidParameterError("-o FILE.npy writes the whole vector; drop --format / --limit")
        check_output_path(args.output)
    else:
        output_format(args)
    store = open_store(args.store)
    saved = load_direction(store.path, args.name)
    if npy:
        with atomic_output(args.output) as f:
            np.save(f, saved.vector, allow_pickle=False)
        print(f"wrote direction {saved.name!r} ({saved.vector.size} values) to {args.output}", file=sys.stderr)
        return 0
    write_table(pl.DataFrame({"name": [saved.name] * saved.vector.size,
                              "dim": np.arange(saved.vector.size, dtype=np.int64), "value": saved.vector}), args)
    return 0


def run_remove(args: argparse.Namespace) -> int:
    import sys

    from actstore.store import open_store
    from actstore.store.directions import remove_direction

    store = open_store(args.store)
    remove_direction(store.path, args.name)
    print(f"removed direction {args.name!r}", file=sys.stderr)
    return 0
