"""`actstore ingest`: run a model over a task dataset and store the activations."""

from __future__ import annotations

import argparse
import sys

from actstore.cli import parse_params
from actstore.cli.args import non_negative_int, worker_count


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ingest", help="run a model over a task dataset and store its activations (resumable)",
        description="Run MODEL over N examples of TASK and stream the chosen activations into a store. "
                    "Rerunning the same command resumes after the last committed chunk; rerunning it with a larger "
                    "--n grows the store (its first examples are the same).")
    p.add_argument("--task", required=True,
                   help="task name (addition, list_update, brackets, ioi, days; prompts reads your file: "
                        "--param file=PATH.jsonl|csv, see docs/prompts.md)")
    p.add_argument("--model", required=True, help="model spec, e.g. zoo:addition")
    p.add_argument("--n", type=int, required=True,
                   help="number of examples (a larger --n on a store of the same run appends the next examples)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    p.add_argument("--out", required=True, help="store directory (created; resumed if it holds this run)")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="task parameter, repeatable")
    p.add_argument("--hooks", nargs="+", metavar="HOOK",
                   help="TransformerLens hook names, short forms (z, pattern, post, resid_post, scale) meaning "
                        "every layer, or 'default'; a ':answer' or ':all' suffix sets that hook's positions "
                        "(default: hook_z, hook_pattern, mlp hook_post, every LayerNorm hook_scale)")
    p.add_argument("--positions", choices=("all", "answer"), default="all",
                   help="positions stored for hooks without a suffix (LayerNorm scales: always all)")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="stored dtype (default float16)")
    p.add_argument("--chunk", type=int, default=None, help="examples per chunk (default: about 64 MiB per chunk)")
    p.add_argument("--batch", type=int, default=64, help="examples per forward pass (default 64)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--top-k", type=non_negative_int, default=None, metavar="K",
                   help="keep the K most likely output tokens at each answer in meta/topk (token, logit, prob); "
                        "0 keeps none (default 10, or the whole output vocabulary if smaller)")
    p.add_argument("--no-outputs", dest="outputs", action="store_false",
                   help="keep no meta/outputs, topk or twin baselines: each forward pass stops after the deepest "
                        "stored hook (faster when the hooks are early; DLA still works from meta/examples)")
    p.add_argument("--no-twins", dest="twins", action="store_false",
                   help="skip the corrupted twins' forward pass (one pass per batch instead of two for a task with "
                        "twins): meta/outputs' corrupted_* baseline columns are then null")
    p.add_argument("--overwrite", action="store_true", help="replace a store of a different run at --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    dist = p.add_mutually_exclusive_group()
    dist.add_argument("--shard", metavar="I/N",
                      help="write only chunks k with k %% N == I; start shards 0/N .. N-1/N by hand (any machines "
                           "sharing the store's directory, in any order); the last to finish completes the store")
    dist.add_argument("--workers", type=worker_count, metavar="N",
                      help="run N shards on a local Dask cluster of N single-threaded processes (one per GPU where "
                           "there are several: shard i on cuda:(i mod GPUs)); each loads the model from its spec")
    dist.add_argument("--scheduler", metavar="ADDRESS",
                      help="run one shard on each worker of the Dask cluster at ADDRESS (tcp://host:port)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from actstore.ingest import ingest
    from actstore.ingest.cluster import ingest_on_cluster

    kwargs = dict(hooks=args.hooks, positions=args.positions, dtype=args.dtype, chunk=args.chunk, batch=args.batch,
                  device=args.device, task_params=parse_params(args.param), overwrite=args.overwrite,
                  top_k=args.top_k, outputs=args.outputs, twins=args.twins)
    if args.workers is not None or args.scheduler is not None:
        store = ingest_on_cluster(args.task, args.model, args.n, args.seed, args.out, workers=args.workers,
                                  scheduler=args.scheduler, **kwargs)
    else:
        store = ingest(args.task, args.model, args.n, args.seed, args.out, quiet=args.quiet, shard=args.shard,
                       **kwargs)
    if args.shard is not None and not store.finished:
        if not args.quiet:
            print(f"shard {args.shard} done: {store.n_examples} of {store.manifest.n} examples committed in a row "
                  f"in {store.path}; the store is finished once every shard is", file=sys.stderr)
        return 0
    if not args.quiet:
        dec = store.manifest.decomposition or {}
        err = f"{dec['max_abs_error']:.3g}" if "max_abs_error" in dec else dec.get("status", "-")
        chunks = store.manifest.n_chunks
        print(f"stored {store.n_examples} examples x {len(store.hooks)} hooks in {store.path} "
              f"({chunks} chunk{'s' if chunks != 1 else ''} of {store.chunk_size}); decomposition max error {err}",
              file=sys.stderr)
    return 0
