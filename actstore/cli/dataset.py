"""`actstore dataset TASK`: write a task's examples to Parquet."""

from __future__ import annotations

import argparse
from pathlib import Path

from actstore.cli import parse_params
from actstore.datasets import TASKS, get_task
from actstore.errors import InvalidParameterError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dataset", help="write a task's examples (tokens, answers, labels) to Parquet")
    p.add_argument("task", help=f"one of: {', '.join(TASKS)}")
    p.add_argument("--n", type=int, default=1000, help="number of examples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="task parameter, repeatable")
    p.add_argument("-o", "--output", required=True, help="output .parquet file")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if not out.parent.is_dir():
        raise InvalidParameterError(f"cannot write {str(out)!r}: {str(out.parent)!r} is not an existing directory")
    if out.is_dir():
        raise InvalidParameterError(f"cannot write {str(out)!r}: it is a directory; give a .parquet file path")
    data = get_task(args.task, **parse_params(args.param)).generate(args.n, args.seed)
    tmp = out.with_name(out.name + ".tmp")
    try:
        data.to_frame().write_parquet(tmp)
        tmp.replace(out)  # never leave a half-written file under the real name
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise InvalidParameterError(f"cannot write {str(out)!r}: {e.strerror or e}") from None
    print(f"wrote {len(data)} {args.task} examples to {out}")
    return 0
