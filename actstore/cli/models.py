"""`actstore train NAME` (rebuild a zoo model) and `actstore eval` (accuracy on fresh examples)."""

from __future__ import annotations

import argparse
import sys

from actstore.cli import parse_params
from actstore.cli.args import non_negative_int, positive_int, thread_count
from actstore.cli.output import add_output_options, output_format, write_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a zoo model from scratch (seeded, CPU-friendly)")
    p.add_argument("name", metavar="NAME", help="zoo model name, e.g. addition (an unknown name lists the zoo)")
    p.add_argument("--steps", type=positive_int, default=None, help="training steps (default: the zoo's setting)")
    p.add_argument("--seed", type=non_negative_int, default=None, help="initialisation seed (default: the zoo's, 0)")
    p.add_argument("-o", "--output", default=None,
                   help="output directory (default zoo-runs/NAME-seedS-stepsN); existing weights are not replaced")
    p.add_argument("--install", action="store_true",
                   help="also replace the shipped zoo weights, if every accuracy target is met")
    p.add_argument("--eval-n", type=positive_int, default=4000,
                   help="fresh examples per accuracy target (default 4000)")
    p.add_argument("--threads", type=thread_count, default=None,
                   help="torch threads, at most the machine's CPUs (default: the zoo's setting, 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_train)

    e = sub.add_parser("eval", help="a model's accuracy on fresh task examples, overall and by label")
    e.add_argument("--task", required=True, help="task name (addition, list_update, brackets, ioi, days)")
    e.add_argument("--model", required=True, help="model spec: zoo:NAME, a checkpoint directory, or gpt2-small")
    e.add_argument("--n", type=int, default=2000, help="number of examples (default 2000)")
    e.add_argument("--seed", type=int, default=1, help="data seed, below 10000 (training uses >= 10000; default 1)")
    e.add_argument("--param", action="append", metavar="KEY=VALUE", help="task parameter, repeatable")
    e.add_argument("--group-by", action="append", metavar="LABEL",
                   help="label column to split by (default: the task's)")
    e.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    add_output_options(e)
    e.set_defaults(handler=run_eval)


def run_train(args: argparse.Namespace) -> int:
    from actstore.models.train import train

    result = train(args.name, steps=args.steps, seed=args.seed, out=args.output, install=args.install,
                   progress=not args.quiet, eval_n=args.eval_n, threads=args.threads)
    rec = result.record
    print(f"trained zoo:{args.name} in {rec['training']['wall_seconds']:.0f} s, final loss "
          f"{rec['training']['final_loss']:.4g}; wrote {result.weights} and {result.record_path}")
    for r in rec["eval"]:
        extra = "" if r["logit_diff"] is None else f", mean logit diff {r['logit_diff']:.2f}"
        by = "".join(f", by {k}: " + " ".join(f"{v}={a:.3f}" for v, a in d.items()) for k, d in r.get("by", {}).items())
        print(f"  {r['task']}: accuracy {r['accuracy']:.4f} on {r['n']} fresh examples (seed {r['seed']})"
              f"{extra}{by} -> {'target met' if r['ok'] else 'TARGET MISSED'}")
    if result.installed:
        print(f"installed as zoo:{args.name}")
    elif args.install:
        print(f"not installed: zoo:{args.name} missed its accuracy target", file=sys.stderr)
    return 0 if result.ok else 1


def run_eval(args: argparse.Namespace) -> int:
    from actstore.models import evaluate, load_model

    output_format(args)  # a bad -o fails before the model loads
    model = load_model(args.model, device=args.device)
    table = evaluate(model, args.task, n=args.n, seed=args.seed, params=parse_params(args.param),
                     group_by=args.group_by)
    write_table(table, args)
    return 0
