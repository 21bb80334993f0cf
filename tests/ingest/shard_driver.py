"""Run one ingest of the crash tests' tiny model in its own process: a shard of it, or the whole of it at
another n (for the growth tests to SIGKILL).

usage: python shard_driver.py OUT [--shard I/N] [--n N]
"""

from __future__ import annotations

import argparse

import torch

torch.set_num_threads(1)

from crash_driver import ARGS  # noqa: E402
from tiny_models import tiny_model  # noqa: E402

import actstore  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--shard")
    parser.add_argument("--n", type=int, default=ARGS["n"])
    args = parser.parse_args()
    actstore.ingest(model=tiny_model("addition"), out=args.out, **{**ARGS, "n": args.n}, shard=args.shard)
