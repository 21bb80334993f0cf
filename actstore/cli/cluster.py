"""--workers N / --scheduler ADDRESS: run a command's streamed query on a Dask cluster.

One option group for every streamed query command (dla, logit-lens, attention, neurons,
breakdown). --workers starts a LocalCluster of N single-threaded worker processes for the
command and closes it after; --scheduler connects to a running cluster (one error line if it
cannot be reached). The result is the same, row for row, as without either.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from actstore.cli.args import worker_count


def add_cluster_options(p: argparse.ArgumentParser, unit: str = "chunks", threads: str = "one thread each") -> None:
    """--workers / --scheduler; `unit`: what the workers are given (a query's chunks, a sweep's parts),
    `threads`: how many threads each uses."""
    g = p.add_argument_group("distributed (Dask)")
    g.add_argument("--workers", type=worker_count, default=None, metavar="N",
                   help=f"run the {unit} on a local Dask cluster of N worker processes ({threads}), started "
                        "and closed by this command")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help=f"run the {unit} on the Dask cluster whose scheduler is at ADDRESS (e.g. "
                        "tcp://10.0.0.5:8786); its workers must reach the store at the same path or URL")


@contextmanager
def cluster_client(args: argparse.Namespace) -> Iterator[Any]:
    """The Dask client --workers / --scheduler ask for (None: run here), closed on exit."""
    from actstore.errors import InvalidParameterError
    from actstore.query.executor import LocalClient, connect

    workers, scheduler = getattr(args, "workers", None), getattr(args, "scheduler", None)
    if workers is not None and scheduler is not None:
        raise InvalidParameterError("--workers starts a local cluster and --scheduler names a running one; pass one")
    if workers is not None:
        with LocalClient(workers) as client:
            yield client
    elif scheduler is not None:
        client = connect(scheduler)
        try:
            yield client
        finally:
            client.close()
    else:
        yield None


__all__ = ["add_cluster_options", "cluster_client"]
