"""`actstore info STORE` and `actstore verify STORE`."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print a store's manifest, sizes per array, compression ratio, example count")
    p.add_argument("store", help="store directory")
    p.add_argument("--json", action="store_true", help="print everything as JSON")
    p.set_defaults(handler=run_info)

    p = sub.add_parser("verify", help="check every committed chunk's checksum, the meta tables and the decomposition")
    p.add_argument("store", help="store directory")
    p.set_defaults(handler=run_verify)


def run_info(args: argparse.Namespace) -> int:
    from actstore.store.info import format_info, store_info

    info = store_info(args.store)
    if args.json:
        info = dict(info, arrays=[dict(vars(a), ratio=a.ratio) for a in info["arrays"]])
        print(json.dumps(info, indent=1, default=str))
    else:
        print(format_info(info))
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from actstore.store.verify import verify

    report = verify(args.store)
    for line in report.lines():
        print(line, file=sys.stderr if line.startswith(("BAD", "INCOMPLETE")) else sys.stdout)
    return 0 if report.passed else 1
