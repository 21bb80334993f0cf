"""An ingest's fixed setup (issue 14 item 2: under 1.5 s for a GPT-2-small shape), split as `ingest(stats=...)`
splits it. setup_s is what the call spends outside its forward loop: model_s + probe_s (hook shapes,
decomposition check) + digest_s (the wait for the weights' sha256) + create_s (the store, params/ from the
weight cache) + the rest, where the store is created before the loop (trees before 8de8ee2; a resumed or remote
store). A new local store is now created on a helper thread beside the first chunk's forward pass: its
digest_s and create_s are that thread's (not in setup_s), and setup_s counts only the first chunk's wait for
it; the creation's CPU then slows the loop instead. So compare trees by call_s (setup_s + loop_s, the whole
call), printed as its own best too.

Each model runs in `--processes` fresh processes one after another (each `--repeats` ingests of `--n`
examples into the same path, removed between them, as benchmarks/ingest.py does), so `cold` is the best
first ingest of a process (first weights digest, first forward pass and first imports in the process) and
`warm` the best of the later ones, interleaved across the given checkouts (`--compare DIR`: another
actstore source tree, e.g. `git archive REV actstore | tar -x -C DIR`, run under the same conditions).
Each checkout gets its own fresh temporary weight cache (trees before e32d396 record 4-field stamps, which
this tree reads again, and this tree's 5-field ones the trees before re-hash); an untimed ingest of each model by
each checkout builds its entry first, so every timed ingest links it (the cold line is a new process ingesting a
model whose weights the cache already holds). setup_cpu_s is the process's CPU seconds (every thread) over the span
of setup_s: less sensitive to other load than the wall clock; create_cpu_s (trees from 87f65d7 on; nan before)
the CPU of the creation thread beside the loop.

    python benchmarks/ingest_setup.py [--models gpt2,zoo:addition] [--n 32] [--repeats 4] [--processes 3]
                                      [--compare DIR] [--hooks H1,H2] [--no-outputs]

--hooks and --no-outputs time the SAELens-line ingest (benchmarks/ingest.py: one hook, outputs=False), e.g.
`--models gpt2 --n 128 --hooks blocks.6.hook_resid_pre --no-outputs`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
KEYS = ("setup_s", "model_s", "probe_s", "digest_s", "create_s", "create_cpu_s", "setup_cpu_s", "loop_s", "call_s")

CHILD = """
import json, os, shutil, sys, warnings
warnings.simplefilter("ignore")
sys.path.insert(0, {here!r})
from ingest import ZOO_TASKS, gpt2_small_shape, zoo_model
import time
import actstore
from actstore.ingest import run as run_mod
_run = run_mod._Loop.run
_cpu = {{}}  # process CPU seconds (every thread) from the ingest's start to its forward loop's


def _timed_run(self):
    _cpu["setup"] = time.process_time() - _cpu["start"]
    return _run(self)


run_mod._Loop.run = _timed_run


def ingest(*args, **kwargs):
    _cpu["start"] = time.process_time()
    actstore.ingest(*args, **kwargs)
    kwargs["stats"]["setup_cpu_s"] = _cpu["setup"]
    kwargs["stats"]["call_s"] = kwargs["stats"]["setup_s"] + kwargs["stats"]["loop_s"]


spec, n, out, extra = {spec!r}, {n}, {out!r}, {extra!r}
model = gpt2_small_shape("cpu") if spec == "gpt2" else zoo_model(spec)
task = "ioi" if spec == "gpt2" else ZOO_TASKS[spec]
shutil.rmtree(out, ignore_errors=True)
st = {{}}
ingest(task, model, n, 0, out, quiet=True, stats=st, model_spec=spec, **extra)
print(json.dumps({{"actstore": actstore.__file__, **st}}), flush=True)
for _ in range({repeats} - 1):
    input()  # the parent says when: the checkouts take turns
    shutil.rmtree(out, ignore_errors=True)
    st = {{}}
    ingest(task, model, n, 0, out, quiet=True, stats=st, model_spec=spec, **extra)
    print(json.dumps(st), flush=True)
shutil.rmtree(out, ignore_errors=True)
"""


def _fmt(st: dict) -> str:
    return " ".join(f"{k}={st.get(k, math.nan):.3f}" for k in KEYS)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="gpt2,zoo:addition,zoo:list_update,zoo:brackets,zoo:lm")
    p.add_argument("--n", type=int, default=32, help="examples per ingest (default 32)")
    p.add_argument("--repeats", type=int, default=4, help="ingests per process (the first is the cold one)")
    p.add_argument("--processes", type=int, default=3, help="fresh processes per model and tree (best cold of them)")
    p.add_argument("--compare", action="append", default=[], help="another actstore source tree to time alike")
    p.add_argument("--hooks", default=None, help="comma list of hooks to store (default: the default set)")
    p.add_argument("--no-outputs", action="store_true", help="ingest with outputs=False")
    args = p.parse_args()
    extra = {k: v for k, v in (("hooks", args.hooks.split(",") if args.hooks else None),
                               ("outputs", False if args.no_outputs else None)) if v is not None}
    trees = [str(HERE.parent)] + [str(Path(c).absolute()) for c in args.compare]
    with tempfile.TemporaryDirectory(prefix="actstore-setup-") as tmp:
        envs = [{**os.environ, "ACTSTORE_WEIGHT_CACHE": str(Path(tmp) / f"weights{i}"), "HF_HUB_OFFLINE": "1",
                 "PYTHONPATH": tree} for i, tree in enumerate(trees)]
        for spec in args.models.split(","):
            warm = CHILD.format(here=str(HERE), spec=spec, n=args.n, out=str(Path(tmp) / "warm"), repeats=1,
                                extra=extra)
            for env in envs:  # builds each checkout's cache entry
                subprocess.run([sys.executable, "-c", warm], cwd=tmp, env=env, check=True, stdout=subprocess.DEVNULL)
            firsts: list[list[dict]] = [[] for _ in trees]  # each fresh process's first (cold) ingest
            runs: list[list[dict]] = [[] for _ in trees]  # the later (warm) ingests
            for _ in range(args.processes):
                procs = []
                for i in range(len(trees)):
                    code = CHILD.format(here=str(HERE), spec=spec, n=args.n, out=str(Path(tmp) / f"s{i}"),
                                        repeats=args.repeats, extra=extra)
                    procs.append(subprocess.Popen([sys.executable, "-c", code], cwd=tmp, text=True,
                                                  env=envs[i], stdin=subprocess.PIPE,
                                                  stdout=subprocess.PIPE))
                    assert procs[-1].stdout is not None
                    firsts[i].append(json.loads(procs[-1].stdout.readline()))  # cold, before the next one starts
                for _ in range(args.repeats - 1):
                    for i, proc in enumerate(procs):
                        assert proc.stdin is not None and proc.stdout is not None
                        proc.stdin.write("\n")
                        proc.stdin.flush()
                        runs[i].append(json.loads(proc.stdout.readline()))
                for proc in procs:
                    proc.communicate()
            for i, tree in enumerate(trees):
                cold = min(firsts[i], key=lambda st: st["setup_s"])
                best = min(runs[i], key=lambda st: st["setup_s"]) if runs[i] else cold
                print(f"{spec:<16} n={args.n} {extra or ''} tree={tree} load={os.getloadavg()[0]:.1f}\n"
                      f"  cold, best of {len(firsts[i])} processes: " + _fmt(cold)
                      + " (all: " + " ".join(f"{st['setup_s']:.2f}" for st in firsts[i]) + ")\n"
                      f"  warm, best of {len(runs[i])}: " + _fmt(best) + "\n"
                      f"  call_s best: cold {min(st['call_s'] for st in firsts[i]):.3f}, warm "
                      f"{min(st['call_s'] for st in runs[i] or firsts[i]):.3f}", flush=True)


if __name__ == "__main__":
    main()
