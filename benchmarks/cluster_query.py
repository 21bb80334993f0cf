"""Streamed summaries here and on a local Dask cluster: wall time, speed-up, peak memory added.

    python benchmarks/cluster_query.py STORE [--level head] [--by carry_2] [--workers 1 2]

Prints one figure per line: the carry split of `dla --level LEVEL` (per-chunk partials, never
the per-example table) run here (seconds, MB of peak RSS added over the opened store), then on a
LocalCluster of N single-threaded workers (seconds of a second run, speed-up over the first N;
cluster start-up, imports and plans on the workers not counted), and checks that every result
equals the local one exactly. Measure on a quiet machine: with other work on the cores, workers
only share them.
"""

from __future__ import annotations

import argparse
import time
import warnings

from polars.testing import assert_frame_equal


def peak_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    import actstore
    from actstore.query.dla import dla_plan
    from actstore.query.executor import Job, LocalClient
    from actstore.query.summary import GroupSpec, summarise

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("store")
    p.add_argument("--level", default="head")
    p.add_argument("--by", default="carry_2")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = p.parse_args()
    warnings.simplefilter("ignore")
    store = actstore.open_store(args.store)
    job, spec = Job(dla_plan, {"level": args.level}), GroupSpec(by=(args.by,))
    store.examples  # noqa: B018  (the meta table every query reads, before the baseline)
    base = peak_mb()
    start = time.perf_counter()
    local = summarise(store, job, spec)
    print(f"local: {store.n_examples} examples, {time.perf_counter() - start:.2f} s, "
          f"+{peak_mb() - base:.0f} MB peak RSS")
    first = None
    for n in args.workers:
        with LocalClient(n) as client:
            summarise(store, job, spec, client=client)  # warm: imports and the plan on every worker
            start = time.perf_counter()
            got = summarise(store, job, spec, client=client)
            wall = time.perf_counter() - start
        assert_frame_equal(got, local, check_exact=True)
        first = first or wall
        print(f"{n} workers: {wall:.2f} s, {first / wall:.2f}x of {args.workers[0]} worker(s), identical to local")


if __name__ == "__main__":  # dask workers re-import __main__
    main()
