"""`run_sweep(store, spec)`: run one intervention sweep over a store's examples and store its table.

Order of work, so that bad input leaves nothing behind and a crash loses at most one part:
1. validate the spec against the store (hook, positions, twins, metrics) with no model loaded;
2. a complete sweep with the same spec is a cache hit: its stored table is returned;
3. reload the model from the manifest (weights digest must match), run the means pass of a mean
   ablation, and take the store's lock;
4. resume after the last committed part; each part's examples run batch by batch (fixed by the
   spec, so a rerun computes the same bytes), here or on Dask workers (`client`), and this process
   writes each part's rows, then its commit record, in part order.
"""

from __future__ import annotations

import sys
from typing import Any

import polars as pl
import torch
from tqdm.auto import tqdm

from actstore.errors import ActstoreError, StoreWriteError
from actstore.interventions.cluster import check_cluster, cluster_parts
from actstore.interventions.forward import Runner
from actstore.interventions.model import model_for
from actstore.interventions.rows import ensure_means, part_rows, plan_sweep
from actstore.interventions.spec import SweepSpec
from actstore.interventions.targets import check_hook
from actstore.models.allocator import forward_memory
from actstore.store.lock import store_lock
from actstore.store.reader import Store
from actstore.store.sweeps import SweepWriter, list_sweeps, read_sweep, sweep_id


@forward_memory()
def run_sweep(store: Store, spec: SweepSpec, model: Any = None, device: str = "auto",
              quiet: bool = False, client: Any = None) -> pl.DataFrame:
    """Run `spec` on `store` (or return its stored table when the same sweep is complete); the rows
    of the sweep: see `actstore.store.sweeps.ROW_SCHEMA`.

    client: a `dask.distributed.Client`: the parts not yet committed are computed on its workers
    (each reloads the model from its spec), and written here; the stored bytes are those of a run here.
    """
    spec.validate()
    plan = plan_sweep(store, spec)
    if client is not None:
        check_cluster(client, store, model)
    sid = sweep_id(spec.to_dict())
    if any(s.sweep == sid and s.complete for s in list_sweeps(store.path)):
        return read_sweep(store.path, sid, store.ledger.store_sha256)
    net = model_for(store, model, device)
    check_hook(spec.hook, int(net.cfg.n_layers), net.hook_dict)
    if plan.receivers:
        check_hook(spec.receiver_input or "q", int(net.cfg.n_layers), net.hook_dict)
    runner = Runner(net)
    if spec.kind == "ablate" and spec.method == "mean":
        with torch.no_grad():
            ensure_means(runner, spec, plan, plan.targets.layers)  # before anything is written: a pass may fail
    ranges = spec.ranges()
    try:
        with store_lock(store.path):
            writer = SweepWriter(store.path, spec.to_dict(), ranges, store.ledger.store_sha256)
            bar = tqdm(total=spec.stop - spec.start, initial=sum(b - a for a, b in ranges[:writer.committed]),
                       desc=f"actstore {spec.kind} {spec.hook}", unit="ex", disable=quiet or not sys.stderr.isatty())
            with bar:
                if client is None:
                    for k in range(writer.committed, spec.n_parts):
                        writer.write_part(k, part_rows(runner, plan, k, sid, bar.update))
                else:
                    for k, rows in cluster_parts(client, store, plan, model, device, writer.committed, sid):
                        writer.write_part(k, rows)
                        bar.update(ranges[k][1] - ranges[k][0])
    except ActstoreError:
        raise
    except OSError as e:
        raise StoreWriteError(f"cannot write sweep into store {store.path}: {e.strerror or e}") from None
    return read_sweep(store.path, sid, store.ledger.store_sha256)
