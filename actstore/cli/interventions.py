"""`actstore patch` and `actstore ablate`: intervention sweeps run with the store's model, stored in the store.

Both print one row per target, answer and metric (mean over examples, the clean and corrupted
baselines, the normalised score, n and a 95% interval); --per-example prints the stored rows.
The full table is the SQL view `interventions` afterwards. --workers N / --scheduler ADDRESS
compute the sweep's parts on Dask workers (this process writes them; the same bytes).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from actstore.cli.args import positive_int
from actstore.cli.cluster import add_cluster_options, cluster_client
from actstore.cli.output import add_output_options, output_format, write_table

HOOK_HELP = "resid_pre, resid_mid, resid_post, attn_out, mlp_out (by layer); z, q, k, v, pattern (by head)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("patch", help="activation / path / attribution patching with the store's model, stored",
                       description="Patch activations between each example and its corrupted twin, target by "
                                   "target, with the model the store was ingested with (reloaded from its manifest; "
                                   "its weights must match). Results are stored in STORE/interventions/ and are the "
                                   "SQL view `interventions`; rerunning the same sweep resumes it or reads it back.")
    p.add_argument("store", help="store directory")
    p.add_argument("--hook", default=None, help=f"what to patch: {HOOK_HELP} (default resid_pre; z for --path-to)")
    p.add_argument("--grain", default=None,
                   help="layer, layer,pos, head or head,pos (default: layer,pos for layer hooks, head for head hooks)")
    p.add_argument("--pos", default=None, help="positions of a ',pos' grain: indices or roles, e.g. S2,END "
                                               "(default: every position)")
    p.add_argument("--mode", choices=("denoise", "noise"), default=None,
                   help="denoise: corrupted run, clean activation patched in (default); noise: the reverse "
                        "(default for --path-to)")
    p.add_argument("--method", choices=("exact", "atp"), default="exact",
                   help="exact patching (default) or attribution patching (gradient x difference, all targets "
                        "in one forward and backward pass)")
    p.add_argument("--path-to", default=None, metavar="RECEIVERS",
                   help="path patching from every sender head to 'logits' or to heads LAYER.HEAD,...")
    p.add_argument("--receiver-input", choices=("q", "k", "v"), default=None,
                   help="with --path-to heads: which input of the receivers takes the path (default q)")
    _common(p)
    p.set_defaults(handler=run_patch)

    p = sub.add_parser("ablate", help="zero, mean or resample ablation with the store's model, stored",
                       description="Ablate each target on the clean examples with the model the store was ingested "
                                   "with. Means come from the store's activations when the hook is stored, else from "
                                   "one pass of the model. Results are the SQL view `interventions`.")
    p.add_argument("store", help="store directory")
    p.add_argument("--hook", default="z", help=f"what to ablate: {HOOK_HELP} (default z)")
    p.add_argument("--grain", default=None, help="layer, layer,pos, head or head,pos (default: layer / head)")
    p.add_argument("--pos", default=None, help="positions of a ',pos' grain: indices or roles")
    p.add_argument("--method", choices=("zero", "mean", "resample"), default="mean",
                   help="replace with zeros, a mean (default) or another example's activation")
    p.add_argument("--mean-over", default=None,
                   help="mean ablation groups: all, pos (default), role or label:COLUMN")
    p.add_argument("--seed", type=int, default=0, help="resampling order (default 0)")
    _common(p)
    p.set_defaults(handler=run_ablate)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metric", default=None,
                   help="comma-separated: logit_diff, correct_logit, logprob, loss (default: all the task supports)")
    p.add_argument("--examples", type=positive_int, default=None, help="the first N examples (default: all)")
    p.add_argument("--model", default=None, help="model spec to use instead of the manifest's (weights must match)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--batch", type=positive_int, default=None, help="examples per forward pass (default 16)")
    p.add_argument("--rows", type=positive_int, default=None,
                   help="rows per patched forward pass, examples x variants (default 512)")
    p.add_argument("--part", type=positive_int, default=None,
                   help="examples per stored part: the unit of resuming and of work on --workers (default 256)")
    p.add_argument("--per-example", action="store_true", help="print every stored row, not the per-target summary")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_output_options(p)
    add_cluster_options(p, "sweep's parts", "each at this process's torch thread count")  # written here: same bytes


def _options(args: argparse.Namespace, store: Any) -> dict[str, Any]:
    from actstore.interventions.spec import METRICS

    opts: dict[str, Any] = {"examples": args.examples, "model": args.model, "device": args.device,
                               "quiet": args.quiet}
    if args.metric is not None:
        opts["metrics"] = tuple(m.strip() for m in args.metric.split(","))
    else:
        ex = store.examples
        has_counter = ex.height > 0 and ex["counter_tokens"].null_count() == 0
        opts["metrics"] = METRICS if has_counter else tuple(m for m in METRICS if m != "logit_diff")
    if args.batch is not None:
        opts["batch"] = args.batch
    if args.rows is not None:
        opts["rows"] = args.rows
    if args.part is not None:
        opts["part"] = args.part
    return opts


def _default_grain(hook: str) -> str:
    from actstore.interventions.spec import HEAD_HOOKS

    return "head" if hook in HEAD_HOOKS else "layer,pos"


def run_patch(args: argparse.Namespace) -> int:
    from actstore.errors import InvalidParameterError
    from actstore.interventions import attribution_patch, patch, path_patch
    from actstore.store import open_store

    output_format(args)
    store = open_store(args.store)
    opts = _options(args, store)
    if args.path_to is not None:
        if args.method != "exact" or args.pos is not None or args.grain not in (None, "head") \
                or args.hook not in (None, "z"):
            raise InvalidParameterError("--path-to sweeps sender heads (hook z, grain head, every position); "
                                        "drop --method/--pos/--grain/--hook")
        if args.receiver_input is not None and args.path_to.strip() == "logits":
            raise InvalidParameterError("--receiver-input applies to receiver heads, not to --path-to logits")
        with cluster_client(args) as client:
            rows = path_patch(store, args.path_to, args.receiver_input or "q", mode=args.mode or "noise",
                              client=client, **opts)
    else:
        if args.receiver_input is not None:
            raise InvalidParameterError("--receiver-input applies to path patching; add --path-to RECEIVERS")
        hook = args.hook or "resid_pre"
        grain = args.grain or _default_grain(hook)
        if args.method == "atp":
            opts.pop("rows", None)
            with cluster_client(args) as client:
                rows = attribution_patch(store, hook, grain, pos=args.pos, mode=args.mode or "denoise",
                                         client=client, **opts)
            _report_agreement(store, rows)
        else:
            with cluster_client(args) as client:
                rows = patch(store, hook, grain, pos=args.pos, mode=args.mode or "denoise", client=client, **opts)
    _write(rows, args)
    return 0


def run_ablate(args: argparse.Namespace) -> int:
    from actstore.interventions import ablate
    from actstore.store import open_store

    output_format(args)
    store = open_store(args.store)
    opts = _options(args, store)
    with cluster_client(args) as client:
        rows = ablate(store, args.hook, args.grain or _default_grain(args.hook).split(",")[0], method=args.method,
                      mean_over=args.mean_over, pos=args.pos, seed=args.seed, client=client, **opts)
    _write(rows, args)
    return 0


def _write(rows: Any, args: argparse.Namespace) -> None:
    from actstore.query.interventions import summary

    write_table(rows if args.per_example else summary(rows), args)


def _report_agreement(store: Any, atp_rows: Any) -> None:
    """After attribution patching: its rank agreement with a stored exact sweep of the same targets, if any."""
    import polars as pl

    from actstore.query.interventions import agreement, interventions, sweeps

    atp = atp_rows if isinstance(atp_rows, pl.DataFrame) else None
    if atp is None or atp.height == 0:
        return
    table = sweeps(store)
    spec = table.filter(pl.col("sweep") == atp["sweep"][0]).row(0, named=True)
    same = table.filter((pl.col("kind") == "patch") & pl.col("complete") & (pl.col("hook") == spec["hook"])
                        & (pl.col("grain") == spec["grain"]) & (pl.col("mode") == spec["mode"])
                        & (pl.col("start") == spec["start"]) & (pl.col("stop") == spec["stop"])
                        & (pl.col("pos").eq_missing(spec["pos"])))
    if same.height == 0:
        print(f"actstore patch: note: no exact sweep of {spec['hook']} by {spec['grain']} on these examples to "
              "compare with; run it without --method atp to measure the agreement", file=sys.stderr)
        return
    exact = interventions(store, same["sweep"][0])
    a = agreement(atp, exact)
    if a["spearman"] is not None:
        print(f"actstore patch: attribution vs exact patching ({a['metric']}, {a['n_targets']} targets): "
              f"Spearman {a['spearman']:.3f}, Pearson {a['pearson']:.3f}", file=sys.stderr)
