"""`actstore dla`, `actstore logit-lens` and `actstore circuit`: attribution tables and weight circuits."""

from __future__ import annotations

import argparse

from typing import TYPE_CHECKING, Any

from actstore.cli.args import non_negative_int
from actstore.cli.attention import add_where_option, int_list, parse_where
from actstore.cli.cluster import add_cluster_options, cluster_client
from actstore.cli.output import add_output_options, output_format, write_frames, write_table

if TYPE_CHECKING:
    import polars as pl

    from actstore.store.reader import Store

# circuit flags and the kinds that use them (others would silently ignore them)
CIRCUIT_FLAGS = {"layer": ("ov", "qk", "virtual-ov", "pos-qk", "virtual-pattern"),
                 "head": ("ov", "qk", "virtual-ov", "pos-qk", "virtual-pattern"),
                 "to": ("virtual-ov", "virtual-pattern"),
                 "over": ("qk",), "mode": ("composition",), "tokens": ("ov", "qk", "virtual-ov"),
                 "key_scale": ("pos-qk",), "constant_tokens": ("pos-qk",), "per_example": ("virtual-pattern",),
                 "where": ("pos-qk", "virtual-pattern")}
CIRCUIT_KINDS = ("ov", "qk", "virtual-ov", "composition", "pos-qk", "virtual-pattern")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dla", help="direct logit attribution per example, position and component",
                       description="Direct logit attribution by component, from the stored activations (cached "
                                   "under STORE/derived/), at the answer positions or any --pos, toward the answer "
                                   "or any --target. Components sum to the logit minus b_U.")
    p.add_argument("store", help="store directory")
    p.add_argument("--level", choices=("layer", "head", "neuron", "path"), default="head",
                   help="granularity: layer, head (default), neuron, or path through later heads")
    add_readout_options(p)
    p.add_argument("--mean", action="store_true",
                   help="one row per component and answer (or position, token): mean, std, n, 95%% interval over "
                        "examples")
    add_output_options(p)
    add_cluster_options(p)
    p.set_defaults(handler=run_dla)

    p = sub.add_parser("logit-lens", help="accumulated residual after each stage, read on the answer direction",
                       description="Accumulated residual per stage on the answer direction (or any --target), at "
                                   "the answer positions or any --pos; values leave out b_U.")
    p.add_argument("store", help="store directory")
    add_readout_options(p)
    p.add_argument("--ln", choices=("cached", "recompute"), default="cached",
                   help="final LayerNorm scale of the full stream (cached, default) or recomputed per stage")
    p.add_argument("--mean", action="store_true", help="one row per stage and answer: mean, std, n, 95%% interval")
    add_output_options(p)
    add_cluster_options(p)
    p.set_defaults(handler=run_logit_lens)

    p = sub.add_parser("circuit", help="weight circuits: full OV / QK of a head, virtual OV, composition scores, "
                                       "positional QK with the mean query, virtual attention patterns",
                       description="Circuits from the store's weights as a long table (row, col, value; token "
                                   "strings where the store has seen the token). pos-qk: a head's positional QK "
                                   "with the mean query, causal mask and softmax (seed 003); virtual-pattern: the "
                                   "attention pattern of --layer/--head composed into --to (seed 000), from the "
                                   "stored patterns. More weight algebra: actstore weights.")
    p.add_argument("store", help="store directory")
    p.add_argument("--kind", choices=CIRCUIT_KINDS, default="ov")
    p.add_argument("--layer", type=int, default=None, help="head's layer (ov, qk, virtual-ov's first head)")
    p.add_argument("--head", type=int, default=None, help="head index (ov, qk, virtual-ov's first head)")
    p.add_argument("--to", type=int, nargs=2, metavar=("LAYER", "HEAD"), default=None,
                   help="virtual-ov: the second (later) head")
    p.add_argument("--over", choices=("tokens", "positions"), default=None,
                   help="qk: over tokens (default) or positions")
    p.add_argument("--mode", choices=("Q", "K", "V"), default=None,
                   help="composition: Q-, K- (default) or V-composition")
    p.add_argument("--tokens", default=None, metavar="IDS",
                   help="comma-separated token ids (or positions) to restrict rows and columns to")
    p.add_argument("--key-scale", choices=("mean", "position"), default=None,
                   help="pos-qk: fold keys through the mean ln1 scale over all positions (mean, default, as seed "
                        "003) or at each key position")
    p.add_argument("--constant-tokens", action="store_true", default=None,
                   help="pos-qk: add the embedding of a token every example has at that position to the key")
    p.add_argument("--per-example", action="store_true", default=None,
                   help="virtual-pattern: one row per example instead of the mean over examples")
    add_where_option(p)
    add_output_options(p)
    p.set_defaults(handler=run_circuit)


def add_readout_options(p: argparse.ArgumentParser) -> None:
    """--target / --direction / --pos / --answer / --final-ln, shared by dla and logit-lens."""
    p.add_argument("--target", default=None, metavar="correct|diff|ID|ID,ID,...|EXPR|NAME",
                   help="what to read: the correct token's logit (default), correct minus counterfactual (diff), a "
                        "token id, a comma-separated list of ids (one row per token), an expression such as "
                        "'W_U[:,7] - W_U[:,3]' (W_U columns, W_E / W_pos rows, numbers, + - * /), or a direction "
                        "saved in the store")
    p.add_argument("--direction", default=None, metavar="FILE.npy|name:NAME",
                   help="read this vector [d_model] instead of a --target: as it is (component . v), or after the "
                        "final LayerNorm with --final-ln")
    p.add_argument("--pos", default=None, metavar="SEL",
                   help="read at these positions instead of the answer positions: a position (negative counts from "
                        "each example's end), a role (END, '=', a0, ...), a comma-separated list, or 'all'")
    p.add_argument("--answer", type=non_negative_int, default=0,
                   help="with --pos: the answer whose tokens correct / diff read (default 0)")
    p.add_argument("--final-ln", action="store_true",
                   help="a --direction vector is read like an unembedding column (centred, divided by the final "
                        "LayerNorm scale)")


def readout_params(args: argparse.Namespace) -> dict[str, Any]:
    """The derived-table parameters of the read-out options (one-line errors for contradictions)."""
    from actstore.errors import InvalidParameterError
    from actstore.query.selectors import parse_selector

    if args.direction is not None and args.target is not None:
        raise InvalidParameterError("--target and --direction both name what to read; pass one")
    params: dict[str, Any] = {"target": args.direction if args.direction is not None else args.target or "correct"}
    if args.pos is not None:
        if not args.pos.strip():
            raise InvalidParameterError("--pos is empty; name a position, a role or 'all'")
        params["pos"] = parse_selector(args.pos)
    if args.answer:
        params["answer"] = args.answer
    if args.final_ln:
        params["final_ln"] = True
    return params


def mean_keys(table: pl.DataFrame, params: dict[str, Any]) -> list[str]:
    """--mean's group keys: the item columns, the target (and token), and the answer or, at --pos, the
    role where the selector names roles, else the position."""
    pos = params.get("pos")
    items = [pos] if isinstance(pos, (int, str)) else list(pos or [])
    where = "answer_idx" if pos is None else "role" if any(isinstance(i, str) and i != "all" for i in items) \
        else "pos"
    keys = ("target", "token", where, "component", "layer", "head", "neuron", "source", "stage")
    return [k for k in keys if k in table.columns]


def run_dla(args: argparse.Namespace) -> int:
    output_format(args)  # a bad -o fails before the query runs
    _readout_table(args, "dla", {"level": args.level, **readout_params(args)})
    return 0


def run_logit_lens(args: argparse.Namespace) -> int:
    output_format(args)
    _readout_table(args, "logit_lens", {"ln": args.ln, **readout_params(args)})
    return 0


def _readout_table(args: argparse.Namespace, table: str, params: dict[str, Any]) -> None:
    """The per-example table streamed to the output (through the derived/ cache), or with --mean its
    statistics from per-chunk partials; on a cluster with --workers / --scheduler."""
    from actstore.query import streamed
    from actstore.query.summary import GroupSpec
    from actstore.store import open_store

    store = open_store(args.store)
    with cluster_client(args) as client:
        if args.mean:
            _, plan = streamed.plan_for(store, table, params)
            spec = GroupSpec(keys=tuple(mean_keys(plan.empty(), params)))
            write_table(streamed.summary(store, table, params, spec, client), args)
        else:
            frames, empty = streamed.rows(store, table, params, client)
            write_frames(frames, empty, args)


def run_circuit(args: argparse.Namespace) -> int:
    import polars as pl

    from actstore.errors import InvalidParameterError
    from actstore.query import circuits
    from actstore.query.options import CircuitOver
    from actstore.store import open_store

    output_format(args)
    check_circuit_flags(args)
    ids = int_list(args.tokens, "--tokens")
    store = open_store(args.store)
    if args.kind == "composition":
        write_table(circuits.composition_scores(store, args.mode or "K"), args)
        return 0
    if args.kind in ("pos-qk", "virtual-pattern"):
        write_table(_attention_circuit(args, store), args)
        return 0
    if args.layer is None or args.head is None:
        raise InvalidParameterError(f"circuit --kind {args.kind} needs --layer and --head")
    over: CircuitOver = args.over or "tokens"  # argparse choices
    if args.kind == "ov":
        table = circuits.ov_circuit(store, args.layer, args.head, tokens=ids, outputs=ids)
    elif args.kind == "qk":
        table = circuits.qk_circuit(store, args.layer, args.head, over=over, queries=ids, keys=ids)
    else:
        if args.to is None:
            raise InvalidParameterError("circuit --kind virtual-ov needs --to LAYER HEAD (the second head)")
        table = circuits.virtual_ov(store, (args.layer, args.head), tuple(args.to), tokens=ids, outputs=ids)
    if not (args.kind == "qk" and over == "positions"):  # name the token ids the store's examples use
        names = store.tokens.select(pl.col("token_id").alias("id"), pl.col("str_token").alias("s")).unique("id")
        row, col = table.columns[:2]
        for side in (row, col):
            table = table.join(names.rename({"id": side, "s": f"{side}_str"}), on=side, how="left",
                               maintain_order="left")
        table = table.select(row, col, f"{row}_str", f"{col}_str", "value")
    write_table(table, args)
    return 0


def _attention_circuit(args: argparse.Namespace, store: Store) -> pl.DataFrame:
    """pos-qk or virtual-pattern (they read stored activations as well as weights)."""
    from actstore.errors import InvalidParameterError
    from actstore.query.attention_circuits import positional_attention, virtual_pattern

    where = parse_where(args.where, store)
    if args.layer is None:
        raise InvalidParameterError(f"circuit --kind {args.kind} needs --layer")
    if args.kind == "pos-qk":
        return positional_attention(store, args.layer, args.head, key_scale=args.key_scale or "mean",
                                    constant_tokens=bool(args.constant_tokens), where=where)
    if args.head is None or args.to is None:
        raise InvalidParameterError("circuit --kind virtual-pattern needs --layer, --head (the first head) and "
                                    "--to LAYER HEAD (the second)")
    return virtual_pattern(store, (args.layer, args.head), tuple(args.to),
                           aggregate=None if args.per_example else "mean", where=where)


def check_circuit_flags(args: argparse.Namespace) -> None:
    """Refuse a flag that --kind does not use (it would be silently ignored)."""
    from actstore.errors import InvalidParameterError

    for flag, kinds in CIRCUIT_FLAGS.items():
        if getattr(args, flag) is not None and args.kind not in kinds:
            name = flag.replace("_", "-")
            raise InvalidParameterError(f"--{name} does not apply to circuit --kind {args.kind} (only to "
                                        f"{', '.join(kinds)}); drop it")
