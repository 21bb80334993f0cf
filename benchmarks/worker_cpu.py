"""CPU per chunk of the carry split as one single-threaded Dask worker spends it, without Dask.

    python benchmarks/worker_cpu.py STORE [--repeats 2] [--compare TREE]

Runs `dla --level head` by carry_2 (summary partials) over every committed chunk on one non-main thread
with chunks.READ_THREADS = 1 and one-thread OpenBLAS / polars (as executor.local_cluster's workers), after
one warm pass (as cluster_query.py times its second run), in a fresh process per tree; prints per chunk
the wall, the CPU of that thread and of the whole process (best of --repeats by process CPU). Two workers
on 2 cores can at best run at (wall of one) / (process CPU / 2): CPU spent beside the worker's thread is
taken from the other worker. CPU figures hold up under load better than wall times; still give the load.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "POLARS_MAX_THREADS": "1"}


def measure(path: str, repeats: int) -> None:
    warnings.simplefilter("ignore")
    import actstore
    from actstore.query import chunks
    from actstore.query.dla import dla_plan
    from actstore.query.executor import Job
    from actstore.query.summary import GroupSpec, SummaryPlan

    store = actstore.open_store(path)
    best: tuple[float, float, float] | None = None
    n = 0

    def work() -> None:
        nonlocal best, n
        chunks.READ_THREADS = 1
        plan = SummaryPlan(store, Job(dla_plan, {"level": "head"}), GroupSpec(by=("carry_2",)))
        ranges = plan.ranges()
        list(plan.partials(ranges))  # warm, as a worker's plan is after the first query
        for _ in range(repeats):
            w, c, p = time.perf_counter(), time.thread_time(), time.process_time()
            n = sum(1 for _ in plan.partials(ranges))
            got = (time.perf_counter() - w, time.thread_time() - c, time.process_time() - p)
            best = got if best is None or got[2] < best[2] else best

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert best is not None and n
    wall, tcpu, pcpu = (1e3 * v / n for v in best)
    print(f"{Path(actstore.__file__).parent}: {n} chunks, ms per chunk: wall {wall:.1f}, worker thread CPU "
          f"{tcpu:.1f}, process CPU {pcpu:.1f} (load {os.getloadavg()[0]:.1f})", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("store")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--compare", help="another source tree (holding actstore/), run interleaved with this one")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        measure(args.store, args.repeats)
        return
    trees = [Path(__file__).resolve().parent.parent] + ([Path(args.compare).resolve()] if args.compare else [])
    for _ in range(args.rounds):
        for tree in trees:
            env = {**os.environ, **ONE_THREAD, "PYTHONPATH": str(tree)}
            subprocess.run([sys.executable, __file__, args.store, "--repeats", str(args.repeats), "--child"],
                           env=env, check=True)


if __name__ == "__main__":
    main()
