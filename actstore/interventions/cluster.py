"""Sweep parts computed on a Dask cluster; the caller writes them, in part order.

The driver (run_sweep) validates the spec, loads the model once (weights digest), runs a mean
ablation's means pass and holds the store's lock, as in a local run. Each part not yet committed
becomes one task: a worker opens the store from its address (checked against the driver's
manifest), reloads the model from its spec (weights digest checked again; kept per worker process
with its plan for the next part), takes the means from the driver, and computes the part's rows
with `rows.part_rows`, the same batches as a local run, under the driver's torch thread count
(a backward pass's float sums depend on it). The rows come back to the driver, the only writer,
so a killed run resumes as a local one does.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import torch

from actstore.errors import ClusterError, InvalidParameterError, StoreCorruptError
from actstore.interventions.forward import Runner
from actstore.interventions.model import model_for
from actstore.interventions.rows import SweepPlan, part_rows
from actstore.interventions.spec import SweepSpec
from actstore.query.executor import open_planned, store_address, store_fingerprint, worker_count
from actstore.store.fs import RemotePath
from actstore.store.reader import Store

PARTS_PER_WORKER = 2  # parts in flight per worker: the next is queued while the driver writes one


@dataclass(frozen=True)
class Sources:
    """A mean ablation's means ({layer: [group, ...token shape]}) and each swept example's token
    groups ([example, pos]), computed once by the driver."""

    means: dict[int, torch.Tensor]
    groups: np.ndarray


def check_cluster(client: Any, store: Store, model: Any) -> None:
    """Refuse, before any work, what workers cannot run: a model object, a store in memory, a
    cluster without workers (its tasks would wait forever)."""
    if model is not None and not isinstance(model, str):
        raise InvalidParameterError("client= / --workers / --scheduler: each worker loads the model from its spec; "
                                    "pass a model spec (zoo:NAME, a pretrained name or a checkpoint path) or none "
                                    "(the store's own), not a model object")
    if isinstance(store.path, RemotePath) and "memory" in _protocols(store.path):
        raise InvalidParameterError(f"store {store.path} lives in this process's memory: Dask workers cannot read "
                                    "it; write it to a path or an s3:// URL the workers reach")
    if worker_count(client) < 1:
        raise ClusterError(f"the Dask cluster at {getattr(client.scheduler, 'address', client)} has no workers; start "
                           "some (`dask worker ADDRESS`) or use --workers N for a local cluster")


def _protocols(path: RemotePath) -> tuple[str, ...]:
    proto = path.fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


def cluster_parts(client: Any, store: Store, plan: SweepPlan, model: str | None, device: str, first: int,
                  sid: str) -> Iterator[tuple[int, pl.DataFrame]]:
    """(k, rows of part k) for parts first..n_parts-1 of the plan's sweep, computed on `client`'s
    workers and yielded in part order. ClusterError if the cluster loses a part."""
    spec = plan.spec
    workers = max(1, worker_count(client))
    todo = iter(range(first, spec.n_parts))
    address, fingerprint = store_address(store), store_fingerprint(store)
    model_spec = store.manifest.model_spec if model is None else model
    threads = torch.get_num_threads()
    sources = None
    if plan.means is not None and plan.groups is not None:
        sources = client.scatter(Sources(plan.means, plan.groups))

    def submit(k: int) -> tuple[int, Any]:
        return k, client.submit(part_on_worker, address, fingerprint, spec, model_spec, device, threads, sources,
                                k, sid, pure=False)

    window: deque[tuple[int, Any]] = deque()
    for _ in range(PARTS_PER_WORKER * workers):
        k = next(todo, None)
        if k is not None:
            window.append(submit(k))
    try:
        while window:
            k, future = window.popleft()
            rows = _result(future, k, sid)
            nxt = next(todo, None)
            if nxt is not None:
                window.append(submit(nxt))  # queued before this part is written: the workers stay busy
            yield k, rows
    finally:
        for _, future in window:
            future.cancel()


def _result(future: Any, k: int, sid: str) -> pl.DataFrame:
    from distributed import KilledWorker  # noqa: PLC0415 (dask is imported only for a cluster)
    from distributed.client import FutureCancelledError  # noqa: PLC0415
    from distributed.comm.core import CommClosedError  # noqa: PLC0415

    try:
        rows = future.result()
    except (KilledWorker, CommClosedError, FutureCancelledError) as e:
        reason = " ".join(str(e).split())[:160] or type(e).__name__
        raise ClusterError(f"the Dask cluster lost part {k} of sweep {sid} ({reason}); the parts before it are "
                           "committed: rerun the same command to resume") from None
    future.release()
    return rows


# --- on a worker ------------------------------------------------------------------------------

_MODEL: dict[tuple[str, str, str, str], tuple[Store, Runner]] = {}  # one (store, model) per worker process
_PLAN: dict[tuple[str, str, SweepSpec], SweepPlan] = {}  # the plan of the sweep it last ran


def part_on_worker(address: Any, fingerprint: str, spec: SweepSpec, model_spec: str, device: str, threads: int,
                   sources: Sources | None, k: int, sid: str) -> pl.DataFrame:
    """Worker side: the rows of part k, from the store at `address` and the model of `model_spec`."""
    store, runner = _worker_model(address, fingerprint, model_spec, device, spec.stop)
    key = (str(address), fingerprint, spec)
    plan = _PLAN.get(key)
    if plan is None or plan.store is not store:
        plan = SweepPlan(store, spec)
        if sources is not None:
            plan.means, plan.groups = sources.means, sources.groups
        _PLAN.clear()
        _PLAN[key] = plan
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return part_rows(runner, plan, k, sid)
    finally:
        torch.set_num_threads(before)


def _worker_model(address: Any, fingerprint: str, model_spec: str, device: str, stop: int) -> tuple[Store, Runner]:
    """The store (with examples up to `stop` committed) and the model, opened once per worker process."""
    key = (str(address), fingerprint, model_spec, device)
    if key not in _MODEL:
        _MODEL.clear()
        _PLAN.clear()
        store = open_planned(address, fingerprint, "sweep")
        _MODEL[key] = (store, Runner(model_for(store, model_spec, _worker_device(device))))
    store, runner = _MODEL[key]
    if stop > store.n_examples:  # a snapshot older than the driver's: re-count the commits
        store = store.refresh()
        if store_fingerprint(store) != fingerprint:  # grown meanwhile: not the store the sweep was planned on
            raise StoreCorruptError(f"store {address} changed since the sweep was planned; rerun the sweep")
        _MODEL[key] = (store, runner)
    return store, runner


def _worker_device(device: str) -> str:
    """'auto' on a worker of a machine with G CUDA devices: cuda:(worker index mod G), as ingest does."""
    if device != "auto" or not torch.cuda.is_available():
        return device
    from distributed import get_worker  # noqa: PLC0415

    name = get_worker().name
    index = int(name) if isinstance(name, int) or str(name).isdigit() else 0
    return f"cuda:{index % torch.cuda.device_count()}"


__all__ = ["Sources", "check_cluster", "cluster_parts", "part_on_worker"]
