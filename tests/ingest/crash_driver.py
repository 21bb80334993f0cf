"""Run one ingest of a tiny model in its own process, for the crash tests to SIGKILL.

usage: python crash_driver.py OUT  (ACTSTORE_TEST_KILL=CHUNK:PHASE makes it kill itself mid-way)
"""

from __future__ import annotations

import sys

import torch

torch.set_num_threads(1)

from tiny_models import tiny_model  # noqa: E402

import actstore  # noqa: E402

# shared with test_crash.py: the uninterrupted reference uses the same arguments
ARGS = dict(task="addition", n=150, seed=4, chunk=16, batch=8, quiet=True, model_spec="tiny:addition")

if __name__ == "__main__":
    actstore.ingest(model=tiny_model("addition"), out=sys.argv[1], **ARGS)
