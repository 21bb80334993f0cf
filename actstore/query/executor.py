"""The one seam where a streamed query runs: its chunks here, in order, or on a Dask cluster.

A streamed query is a *plan* (built from the store and the query's parameters: everything
validated and resolved once) that turns each committed chunk into a *partial* (a chunk's rows,
or its per-group sums), and a combine step over the partials in chunk order. `run(job, store,
client)` yields the partials in chunk order either way:

- locally (client None): the plan scans its chunks with the usual prefetch (chunks.stream);
- on Dask: contiguous batches of chunks are submitted to the workers; each worker opens the
  store itself from its address (a path or URL: stores are reopened, never pickled with open
  handles), builds the same plan (cached per worker process) and returns its batch's partials,
  which the caller receives batch by batch in chunk order.

A partial depends only on its chunk, and every combine step folds partials in chunk order, so
a query gives the same result, bit for bit, wherever its chunks ran.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from actstore.errors import ClusterError, StoreCorruptError
from actstore.query import chunks
from actstore.store.reader import Store

Range = tuple[int, int]
BATCHES_PER_WORKER = 4  # more batches than workers, so a slow worker does not hold up the rest


class ChunkPlan(Protocol):
    """A query resolved against one store: the chunks it reads and a partial per chunk."""

    def ranges(self) -> list[Range]:
        """The committed [start, stop) chunks with work for this query, in order."""
        ...

    def partials(self, ranges: Sequence[Range]) -> Iterator[Any]:
        """One partial per chunk of `ranges` (a subset of `ranges()`), in order."""
        ...


@dataclass(frozen=True)
class Job:
    """A streamed query as a worker rebuilds it: `plan(store, **params)` gives its ChunkPlan.

    plan must be a module-level function (pickled by reference) and params picklable values
    (ints, strings, arrays, Polars expressions), never an open store.
    """

    plan: Callable[..., ChunkPlan]
    params: Mapping[str, Any] = field(default_factory=dict)

    def build(self, store: Store) -> ChunkPlan:
        return self.plan(store, **self.params)

    def token(self) -> str:
        """A digest of the job, for caching its plan on a worker."""
        raw = pickle.dumps((self.plan.__module__, self.plan.__qualname__, sorted(self.params.items(), key=str)))
        return hashlib.sha256(raw).hexdigest()


def store_address(store: Store) -> Any:
    """Where a worker opens `store`: its path (a local Path, or a RemotePath that pickles as its URL
    and storage options)."""
    return store.path


def store_fingerprint(store: Store) -> str:
    """A digest of what identifies a store's contents (its manifest's identity fields)."""
    ident = json.dumps(store.manifest.identity(), sort_keys=True, default=str)
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def run(job: Job, store: Store, client: Any = None, plan: ChunkPlan | None = None) -> Iterator[Any]:
    """The partials of `job` over `store`, one per chunk, in chunk order (locally or on `client`).

    plan: the job's plan on `store`, if the caller built it already (it is built once here otherwise,
    which validates the parameters before any worker is asked).
    """
    plan = plan if plan is not None else job.build(store)
    ranges = plan.ranges()
    if client is None:
        yield from plan.partials(ranges)
        return
    address, fingerprint, token = store_address(store), store_fingerprint(store), job.token()
    if str(address).startswith("memory://"):
        raise ClusterError(f"store {address} lives in this process's memory, which Dask workers cannot open; "
                           "copy it to a local path or an object store (s3://...), or run without a cluster")
    batches = split(ranges, BATCHES_PER_WORKER * max(worker_count(client), 1))
    futures = [client.submit(run_batch, address, fingerprint, job, token, batch, pure=False) for batch in batches]
    try:
        for future in futures:
            yield from future.result()
            future.release()
    finally:
        for future in futures:
            future.cancel()


def split(ranges: Sequence[Range], parts: int) -> list[list[Range]]:
    """`ranges` cut into at most `parts` contiguous batches of near-equal length, in order."""
    n = len(ranges)
    parts = max(1, min(parts, n))
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [list(ranges[a:b]) for a, b in zip(bounds, bounds[1:]) if b > a]


def worker_count(client: Any) -> int:
    try:
        return len(client.scheduler_info().get("workers", {}))
    except (OSError, AttributeError, KeyError):
        return 1


# --- on a worker ------------------------------------------------------------------------------

_PLANS: OrderedDict[tuple[str, str, str], tuple[Store, ChunkPlan]] = OrderedDict()  # (address, store, job)
_PLAN_CACHE = 2  # plans kept per worker process (a plan holds a store's per-example arrays)


def open_planned(address: Any, fingerprint: str, what: str) -> Store:
    """Worker side: the store at `address`, which must be the one the driver planned its `what` (a
    query, a sweep) on; StoreCorruptError if it was replaced or re-ingested meanwhile."""
    from actstore.store.open import open_store  # noqa: PLC0415 (the store layer opens lazily on workers)

    with warnings.catch_warnings():  # the driver already warned about an unfinished store
        warnings.simplefilter("ignore")
        store = open_store(address)
    if store_fingerprint(store) != fingerprint:
        raise StoreCorruptError(f"store {address} is not the store the {what} was planned on (it was replaced "
                                f"or re-ingested meanwhile); rerun the {what}")
    return store


def run_batch(address: Any, fingerprint: str, job: Job, token: str, batch: Sequence[Range]) -> list[Any]:
    """Worker side: the partials of `batch`'s chunks, from the store at `address` (opened here)."""
    key = (str(address), fingerprint, token)  # a store re-ingested with other parameters is opened anew
    cached = _PLANS.get(key)
    if cached is None:
        store = open_planned(address, fingerprint, "query")
        cached = (store, job.build(store))
        _PLANS[key] = cached
        while len(_PLANS) > _PLAN_CACHE:
            _PLANS.popitem(last=False)
    store, plan = cached
    chunks.READ_THREADS = worker_threads()  # a single-threaded worker reads on its one thread (examples parts too)
    committed = store.n_examples
    if batch and batch[-1][1] > committed:  # a snapshot older than the driver's: re-count the commits
        store = store.refresh()
        if store_fingerprint(store) != fingerprint:  # grown meanwhile: not the store the query was planned on
            raise StoreCorruptError(f"store {address} changed since the query was planned; rerun the query")
        if batch[-1][1] > store.n_examples:
            raise StoreCorruptError(f"store {address}: the worker sees {store.n_examples} committed examples, fewer "
                                    f"than the driver planned ({batch[-1][1]}); rerun the query")
        plan = job.build(store)
        _PLANS[key] = (store, plan)
    return list(plan.partials(batch))


def worker_threads() -> int:
    """The thread count of the Dask worker running this task (2 outside a worker)."""
    try:
        from distributed import get_worker  # noqa: PLC0415

        return max(1, int(get_worker().state.nthreads))
    except (ImportError, ValueError, AttributeError):
        return 2


# --- clusters ---------------------------------------------------------------------------------


class LocalClient:
    """A LocalCluster of `workers` single-threaded worker processes and its client, closed on exit.

    The client is not made dask's default (see `connect`): pass it as `client=`, or compute a Dask
    collection with `scheduler=client`.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.cluster: Any = None
        self.client: Any = None

    def __enter__(self) -> Any:
        from dask.distributed import Client  # noqa: PLC0415 (dask is imported only for a cluster)

        self.cluster = local_cluster(self.workers)
        try:
            self.client = Client(self.cluster, set_as_default=False)
        except BaseException:
            self.cluster.close()  # __exit__ does not run when __enter__ fails: its worker processes would outlive us
            raise
        return self.client

    def __exit__(self, *exc: object) -> None:
        try:
            if self.client is not None:
                self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.close()


def local_cluster(workers: int) -> Any:
    """A LocalCluster of `workers` single-threaded processes, quiet, its dashboard on any free port.

    Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536, which hands freed memory back to the
    system after every large free; each chunk read (or torch pass) then faults its pages in anew
    (1.7-1.9x the time of an intervention sweep here). Our workers keep glibc's default (unless
    this process's environment sets it), and this process's environment is left as it was (Dask's
    nanny sets OMP_NUM_THREADS=1 and the rest in it, for every later subprocess). Polars gets one
    thread too (POLARS_MAX_THREADS=1), as Dask gives OpenBLAS: its pool would take a core from the
    next worker.
    """
    import dask  # noqa: PLC0415
    from dask.distributed import LocalCluster  # noqa: PLC0415

    saved = dict(os.environ)  # Dask's nanny writes its worker variables into this process's environment
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
                              "distributed.nanny.pre-spawn-environ.POLARS_MAX_THREADS": 1}):
            return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                                silence_logs=logging.CRITICAL)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def connect(address: str, timeout: float = 10.0) -> Any:
    """A Dask client of the scheduler at `address` (e.g. tcp://127.0.0.1:8786); ClusterError if it
    cannot be reached.

    The client is not made dask's default client, connected or not: dask's `scheduler` setting and
    default client stay as they were (a Client made default that then fails to connect stays dask's
    default until the garbage collector finds it, and a later `.compute()` in this process would wait
    on it forever). Pass it as `client=`, or compute a Dask collection with `scheduler=client`.
    """
    from dask.distributed import Client  # noqa: PLC0415

    if not address.strip():
        raise ClusterError("--scheduler is empty; give the scheduler's address, e.g. tcp://127.0.0.1:8786")
    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError, ValueError, TypeError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise ClusterError(f"cannot reach the Dask scheduler at {address!r} ({reason[:160]}); start one with "
                           "`dask scheduler` or use --workers N for a local cluster") from None


__all__ = ["ChunkPlan", "Job", "LocalClient", "connect", "local_cluster", "run", "split", "store_address"]
