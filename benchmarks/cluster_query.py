"""Streamed summaries here and on a local Dask cluster: wall time, speed-up, peak memory added.

    python benchmarks/cluster_query.py STORE [--level head] [--by carry_2] [--workers 1 2]
                                             [--compare TREE --rounds 3]

Prints one figure per line: the carry split of `dla --level LEVEL` (per-chunk partials, never
the per-example table) run here (seconds, MB of peak RSS added over the opened store), then on a
LocalCluster of N single-threaded workers (seconds of a second run, speed-up over the first N;
cluster start-up, imports and plans on the workers not counted), and checks that every result
equals the local one exactly. Measure on a quiet machine: with other work on the cores, workers
only share them.

--compare TREE (a folder holding another actstore package, e.g. `git archive f055e53 actstore |
tar -x -C /tmp/old`): runs the above in fresh processes on this tree and on TREE in turn, --rounds
times (interleaved, so that both see the same load), then prints each tree's best time per line
and the 1-minute load average seen around each run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

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
    p.add_argument("--compare", help="another source tree (holding actstore/) to run interleaved with this one")
    p.add_argument("--rounds", type=int, default=3, help="with --compare: runs per tree, interleaved")
    args = p.parse_args()
    if args.compare:
        compare(args)
        return
    warnings.simplefilter("ignore")
    print(f"actstore: {Path(actstore.__file__).parent}")
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


def compare(args: argparse.Namespace) -> None:
    """This tree and args.compare, each run in a fresh process in turn, args.rounds times; best per line."""
    here = Path(__file__).resolve().parent.parent
    trees = {"this": here, "compare": Path(args.compare).resolve()}
    argv = [sys.executable, __file__, args.store, "--level", args.level, "--by", args.by,
            "--workers", *map(str, args.workers)]
    best: dict[tuple[str, str], float] = {}
    for r in range(args.rounds):
        for name, tree in trees.items():
            load = os.getloadavg()[0]
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")])}
            out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
            print(f"round {r + 1}, {name} ({tree}), load {load:.1f}-{os.getloadavg()[0]:.1f}:", flush=True)
            for line in out.splitlines():
                print(f"  {line}", flush=True)
                what, _, rest = line.partition(": ")
                if rest and what != "actstore":
                    key, value = (name, what.split(",")[0]), float(rest.split()[0 if what != "local" else 2])
                    best[key] = min(best.get(key, value), value)
    for what in dict.fromkeys(w for _, w in best):
        this, other = best.get(("this", what)), best.get(("compare", what))
        ratio = f", this / compare {this / other:.2f}" if this and other else ""
        print(f"best {what}: this {this:.2f} s, compare {other:.2f} s{ratio}")


if __name__ == "__main__":  # dask workers re-import __main__
    main()
