"""`actstore unlock URL`: remove the lock object a killed writer left beside a remote store."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("unlock", help="remove the write lock a killed ingest or sweep left on a remote store "
                                      "(only when no writer is running)")
    p.add_argument("store", help="store URL, e.g. s3://bucket/store")
    p.set_defaults(handler=run_unlock)


def run_unlock(args: argparse.Namespace) -> int:
    from actstore.store.lock import break_lock

    held = break_lock(args.store)
    if held is None:
        print(f"{args.store}: not locked", file=sys.stderr)
    else:
        print(f"{args.store}: removed {held}", file=sys.stderr)
    return 0
