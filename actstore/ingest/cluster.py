"""`ingest(..., workers=N)` / `scheduler=ADDRESS`: one ingest shard per Dask worker.

A LocalCluster of N single-threaded worker processes is started (and stopped) here, or an
existing cluster is used; shard i of N (actstore.ingest.shards) runs on worker i, which loads
the model itself from its spec (a model object cannot be shipped to another process). The
shards write disjoint chunks of one store, which is byte-identical to a single-process ingest;
the last shard to finish writes the completion record. On a machine with G CUDA devices, the
shard on worker i runs on `cuda:(i mod G)` (one worker per GPU with N = G), unless `device` names
one. A killed worker's chunks are redone by a rerun (of the same command, or of its shard).
"""

from __future__ import annotations

import os
from contextlib import closing
from typing import Any

from actstore.datasets import get_task
from actstore.datasets.base import check_n_seed
from actstore.errors import InvalidParameterError
from actstore.ingest.shards import parse_shard
from actstore.store.fs import RemotePath
from actstore.store.open import open_store, utf8_path
from actstore.store.reader import Store


def ingest_on_cluster(task: str, model: Any, n: int, seed: int, out: str | os.PathLike, *, workers: int | None = None,
                      scheduler: str | None = None, **kwargs: Any) -> Store:
    """Ingest as `actstore.ingest(task, model, n, seed, out, **kwargs)` does, one shard per Dask worker:
    `workers` local single-threaded processes, or every worker of the cluster at `scheduler`."""
    if not isinstance(model, str):
        raise InvalidParameterError("--workers / --scheduler: each worker loads the model from its spec; pass a "
                                    "model spec (zoo:NAME, a pretrained name or a checkpoint path), not a model object")
    if (workers is None) == (scheduler is None):
        raise InvalidParameterError("pass one of workers (local processes) or scheduler (a cluster's address)")
    cpus = os.cpu_count() or 1
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= cpus):
        raise InvalidParameterError(f"--workers must be an integer in 1..{cpus} (this machine's CPUs; each worker is "
                                    f"one single-threaded process), got {workers!r}")
    if kwargs.get("overwrite"):
        raise InvalidParameterError("--overwrite cannot be used with --workers / --scheduler; remove the store first")
    if kwargs.get("shard") is not None:
        raise InvalidParameterError("--shard cannot be used with --workers / --scheduler (they make the shards)")
    # what every worker would refuse, refused here before a cluster starts (its workers' logs are not one line)
    check_n_seed(n, seed)
    get_task(task, **(kwargs.get("task_params") or {}))
    if isinstance(utf8_path(out, "--out", kwargs.get("storage_options")), RemotePath):
        raise InvalidParameterError(f"--workers / --scheduler write shards of a local (or shared-filesystem) store; "
                                    f"{out} is a URL: ingest it without them, or to a local path")
    from actstore.query.executor import LocalClient, connect  # noqa: PLC0415 (one ClusterError line for a bad address)

    # both close what they started, in a finally, and leave dask's default client and config alone
    with LocalClient(workers) if workers is not None else closing(connect(str(scheduler))) as client:
        addresses = sorted(client.scheduler_info()["workers"])
        if not addresses:
            raise InvalidParameterError(f"the cluster at {scheduler} has no workers")
        count = len(addresses)
        jobs = [client.submit(_run_shard, task, model, n, seed, os.fspath(out), (i, count), kwargs, pure=False,
                              workers=[addr], allow_other_workers=True, key=f"actstore-ingest-shard-{i}-of-{count}")
                for i, addr in enumerate(addresses)]
        client.gather(jobs)
    return open_store(out)


def _run_shard(task: str, model: str, n: int, seed: int, out: str, shard: tuple[int, int],
               kwargs: dict[str, Any]) -> int:
    """One worker's shard (runs in the worker process); returns the examples it wrote."""
    import torch  # noqa: PLC0415 (in the worker)

    from actstore.ingest.run import ingest  # noqa: PLC0415

    parse_shard(shard)
    torch.set_num_threads(1)  # a worker is one thread: N workers share the machine's cores
    options = dict(kwargs)
    if options.get("device", "auto") == "auto" and torch.cuda.is_available():
        options["device"] = f"cuda:{shard[0] % torch.cuda.device_count()}"
    stats: dict[str, float] = {}
    ingest(task, model, n, seed, out, shard=shard, quiet=True, stats=stats,
           **{k: v for k, v in options.items() if k not in ("quiet", "stats")})
    return int(stats.get("examples", 0))


__all__ = ["ingest_on_cluster"]
