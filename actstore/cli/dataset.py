"""`actstore dataset TASK`: write a task's examples to Parquet."""

from __future__ import annotations

import argparse

from actstore.cli import parse_params
from actstore.datasets import TASKS, get_task
from actstore.errors import InvalidParameterError
from actstore.outputs import atomic_output, check_output_path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dataset", help="write a task's examples (tokens, answers, labels) to Parquet")
    p.add_argument("task", help=f"one of: {', '.join(TASKS)}")
    p.add_argument("--n", type=int, default=1000, help="number of examples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="task parameter, repeatable")
    p.add_argument("-o", "--output", required=True, help="output .parquet file")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    out = check_output_path(args.output)
    if out.suffix.lower() != ".parquet":
        raise InvalidParameterError(f"-o {args.output!r} must end in .parquet (the dataset is written as Parquet)")
    data = get_task(args.task, **parse_params(args.param)).generate(args.n, args.seed)
    with atomic_output(out) as f:  # never a half-written file under the real name
        data.to_frame().write_parquet(f)
    print(f"wrote {len(data)} {args.task} examples to {args.output}")
    return 0
