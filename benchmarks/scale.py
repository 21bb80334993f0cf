"""How actstore scales with examples: one table of ingest, bytes, DLA, SQL and peak RSS per size.

    python benchmarks/scale.py [--sizes 10000,100000] [--gpt2-n 256] [--dir DIR] [--keep]
                               [--skip s3,workers,gpt2]

For zoo:addition stores grown to each size in turn (a larger n appends to the committed store, so
ingest cost per example is over the examples each step added; model load, data and store set-up
are reported apart and left out of it), measures, each in a fresh subprocess (peak RSS is that
process's VmHWM, imports included):
- ingest:   seconds per added example (wall, set-up left out; and CPU seconds of every thread of the
            ingest call, set-up included: under 1 s), and bytes on disk per example after the step (the
            model's weights under params/ left out: they do not grow with examples);
- DLA:      `actstore dla STORE --level head --mean` (streamed per-chunk partials), wall and RSS;
- SQL:      `actstore sql STORE` a GROUP BY over the carry labels of the examples table;
- workers:  benchmarks/cluster_query.py's carry split of the head DLA on 1 and 2 single-threaded
            Dask workers (second run timed, cluster start-up not counted);
- s3:       at the smallest size only, the store ingested again to a moto S3 server on 127.0.0.1
            and the same DLA read from it against the local store;
- gpt2:     a GPT-2-small-shaped model (random weights, on ioi) at the answer positions only,
            --gpt2-n examples: ingest and the same DLA.
Per-example ratios are against the smallest size measured in the same run; the load column is the
highest 1-minute load average seen by that row's measurements (2 cores: above ~2, others share them).

Goals (issue 13): time linear in examples (cost per example at the largest size within 1.2x of the
smallest), memory flat (DLA peak RSS at the largest size within 1.2x of the smallest), a
1M-example DLA under 2 GB RSS, 2 single-threaded workers at least 1.6x the throughput of one.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from cluster_query import peak_mb  # benchmarks/cluster_query.py (this script's folder is on sys.path)

HERE = Path(__file__).resolve().parent
SQL = ("SELECT carry_0, carry_1, carry_2, count(*) AS n, avg(sum) AS mean_sum "
       "FROM examples GROUP BY ALL ORDER BY ALL")
RSS_CAP_MB = 2048
MILLION = 1_000_000


# ---- children: one measurement each, a last line "RESULT {json}" ----

def child_ingest(job: dict[str, Any]) -> dict[str, Any]:
    warnings.simplefilter("ignore")
    import actstore

    model: Any = job["model"]
    if model == "gpt2-shape":
        sys.path.insert(0, str(HERE))
        from query import gpt2_small_shape  # benchmarks/query.py

        model = gpt2_small_shape()
    stats: dict[str, float] = {}
    start, cpu = time.perf_counter(), time.process_time()
    actstore.ingest(job["task"], model, job["n"], 0, job["out"], quiet=True, stats=stats,
                    positions=job.get("positions", "all"), model_spec=job.get("spec"))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"wall": wall, "setup": stats.get("setup_s", 0.0), "ingest_cpu": cpu}


def child_cli(job: dict[str, Any]) -> dict[str, Any]:
    warnings.simplefilter("ignore")
    from actstore.cli import main

    start = time.perf_counter()
    rc = main(job["argv"])
    wall = time.perf_counter() - start
    if rc:
        raise SystemExit(f"actstore {' '.join(job['argv'])} exited {rc}")
    return {"wall": wall}


def child_workers(job: dict[str, Any]) -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    import cluster_query  # benchmarks/cluster_query.py: its timing, reused as it is

    out = io.StringIO()
    sys.argv = ["cluster_query.py", job["store"], "--level", "head", "--workers", "1", "2"]
    with contextlib.redirect_stdout(out):
        cluster_query.main()
    walls = {}
    for line in out.getvalue().splitlines():
        if " workers: " in line:  # "2 workers: 1.23 s, ..."
            walls[line.split()[0]] = float(line.split(": ")[1].split()[0])
    return {"w1": walls["1"], "w2": walls["2"]}


CHILDREN = {"ingest": child_ingest, "cli": child_cli, "workers": child_workers}


def run_child(job: dict[str, Any], timeout: float = 3600) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; its result plus its peak RSS in MB."""
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{job['kind']} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def disk_bytes(path: Path) -> int:
    """Bytes of every file under the store but the model's weights (params/, a constant) and derived/ caches."""
    total = 0
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if d not in ("derived", "params")]
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


# ---- the parent: sizes in turn, then the table ----

def dla_argv(store: str, out: Path) -> list[str]:
    return ["dla", store, "--level", "head", "--mean", "-o", str(out / "dla.csv")]


def measure_sizes(sizes: list[int], work: Path, skip: set[str]) -> list[dict[str, Any]]:
    store, rows, prev = work / "addition", [], 0
    for n in sizes:
        ing = run_child({"kind": "ingest", "task": "addition", "model": "zoo:addition", "spec": "zoo:addition",
                         "n": n, "out": str(store)})
        row: dict[str, Any] = {"n": n, "added": n - prev, "ingest": ing["wall"] - ing["setup"],
                               "ingest_cpu": ing["ingest_cpu"], "ingest_rss": ing["rss"], "setup": ing["setup"],
                               "bytes": disk_bytes(store), "load": ing["load"]}
        dla = run_child({"kind": "cli", "argv": dla_argv(str(store), work)})
        row.update(dla=dla["wall"], dla_rss=dla["rss"], load=max(row["load"], dla["load"]))
        sql = run_child({"kind": "cli", "argv": ["sql", str(store), SQL, "-o", str(work / "sql.csv")]})
        row.update(sql=sql["wall"], sql_rss=sql["rss"])
        if "workers" not in skip:
            w = run_child({"kind": "workers", "store": str(store)})
            row.update(w1=w["w1"], w2=w["w2"], w_load=w["load"])
        rows.append(row)
        prev = n
        print(f"  {n}: {row}", file=sys.stderr, flush=True)
    return rows


def measure_s3(n: int, local: Path, work: Path) -> dict[str, Any]:
    sys.path.insert(0, str(HERE.parent))
    from tests.s3_server import s3_server  # moto on 127.0.0.1 only, env for s3fs (children inherit it)

    with s3_server("actstore-scale") as url:
        remote = f"{url}/addition"
        up = run_child({"kind": "ingest", "task": "addition", "model": "zoo:addition", "spec": "zoo:addition",
                        "n": n, "out": remote})
        s3 = run_child({"kind": "cli", "argv": dla_argv(remote, work)})
        loc = run_child({"kind": "cli", "argv": dla_argv(str(local), work)})
    return {"n": n, "upload": up["wall"], "s3": s3["wall"], "s3_rss": s3["rss"], "local": loc["wall"]}


def measure_gpt2(n: int, work: Path) -> dict[str, Any]:
    store = work / "gpt2"
    ing = run_child({"kind": "ingest", "task": "ioi", "model": "gpt2-shape", "spec": "gpt2-small-shape", "n": n,
                     "out": str(store), "positions": "answer"})
    dla = run_child({"kind": "cli", "argv": dla_argv(str(store), work)})
    return {"n": n, "ingest": ing["wall"] - ing["setup"], "setup": ing["setup"], "ingest_rss": ing["rss"],
            "bytes": disk_bytes(store),
            "dla": dla["wall"], "dla_rss": dla["rss"]}


def slope(a: dict[str, Any], b: dict[str, Any], key: str) -> float:
    """Bytes of `key` (MB) per example between rows a and b."""
    return (b[key] - a[key]) * 2**20 / (b["n"] - a["n"])


def verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("**met**" if ok else "**missed**")


def table(rows: list[dict[str, Any]], s3: dict[str, Any] | None, gpt2: dict[str, Any] | None) -> str:
    """The markdown table and the goals, met or missed."""
    base = rows[0]
    us = lambda r, k, per: 1e6 * r[k] / r[per]  # noqa: E731  (microseconds per example)
    out = ["| store | examples | ingest µs/ex (x smallest) | ingest CPU µs/ex | ingest peak RSS | bytes/ex | DLA s | "
           "DLA µs/ex (x) | DLA peak RSS | SQL s | SQL peak RSS | 1 / 2 workers s | 2w speed-up | load |",
           "|" + "---|" * 14]
    for r in rows:
        ing, dla = us(r, "ingest", "added"), us(r, "dla", "n")
        w = (f"{r['w1']:.2f} / {r['w2']:.2f} | {r['w1'] / r['w2']:.2f}x" if "w1" in r else "- | -")
        out.append(f"| zoo:addition | {r['n']} | {ing:.1f} ({ing / us(base, 'ingest', 'added'):.2f}x) | "
                   f"{us(r, 'ingest_cpu', 'added'):.1f} | {r['ingest_rss']:.0f} MB | "
                   f"{r['bytes'] / r['n']:.0f} | {r['dla']:.2f} | {dla:.1f} ({dla / us(base, 'dla', 'n'):.2f}x) | "
                   f"{r['dla_rss']:.0f} MB | {r['sql']:.3f} | {r['sql_rss']:.0f} MB | {w} | "
                   f"{max(r['load'], r.get('w_load', 0)):.1f} |")
    if s3:
        out.append(f"| zoo:addition on moto S3 | {s3['n']} | upload {1e6 * s3['upload'] / s3['n']:.1f} | - | - | - | "
                   f"{s3['s3']:.2f} (local {s3['local']:.2f}: **{s3['s3'] / s3['local']:.2f}x**) | - | "
                   f"{s3['s3_rss']:.0f} MB | - | - | - | - | - |")
    if gpt2:
        out.append(f"| GPT-2-small shape, answer positions | {gpt2['n']} | "
                   f"{1e6 * gpt2['ingest'] / gpt2['n']:.0f} | - | {gpt2['ingest_rss']:.0f} MB | "
                   f"{gpt2['bytes'] / gpt2['n']:.0f} | "
                   f"{gpt2['dla']:.2f} | "
                   f"{1e6 * gpt2['dla'] / gpt2['n']:.0f} | {gpt2['dla_rss']:.0f} MB | - | - | - | - | - |")
    top = rows[-1]
    linear = None if len(rows) < 2 else (top["ingest"] / top["added"]) / (base["ingest"] / base["added"]) <= 1.2
    flat = None if len(rows) < 2 else top["dla_rss"] <= 1.2 * base["dla_rss"]
    million = next((r for r in rows if r["n"] >= MILLION), None)
    speed = [r["w1"] / r["w2"] for r in rows if "w1" in r]
    out += ["", f"- time linear (ingest per example at {top['n']} within 1.2x of {base['n']}): {verdict(linear)}",
            f"- memory flat (DLA peak RSS at {top['n']} within 1.2x of {base['n']}): {verdict(flat)}"
            + (f"; DLA {slope(base, top, 'dla_rss'):+.0f} and ingest {slope(base, top, 'ingest_rss'):+.0f} bytes of "
               "peak RSS per added example" if len(rows) > 1 else ""),
            f"- 1M-example DLA under {RSS_CAP_MB} MB RSS: "
            f"{verdict(None if million is None else million['dla_rss'] < RSS_CAP_MB)}",
            f"- 2 workers >= 1.6x one (best over sizes {max(speed):.2f}x): {verdict(max(speed) >= 1.6)}" if speed
            else "- 2 workers >= 1.6x one: not measured"]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000,100000", help="comma-separated example counts, grown in turn")
    p.add_argument("--gpt2-n", type=int, default=256, help="examples of the GPT-2-small shape (answer positions)")
    p.add_argument("--dir", help="work directory (default: a fresh temporary one, removed afterwards)")
    p.add_argument("--keep", action="store_true", help="keep the stores")
    p.add_argument("--skip", default="", help="comma-separated parts to leave out: s3, workers, gpt2")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        job = json.loads(args.child)
        load = os.getloadavg()[0]
        result = CHILDREN[job["kind"]](job)
        print("RESULT " + json.dumps({**result, "rss": peak_mb(),
                                      "load": max(load, os.getloadavg()[0])}), flush=True)
        return
    try:
        sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        p.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    if not sizes or sizes[0] < 1:
        p.error("--sizes needs at least one positive size")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="actstore-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        print(f"load average before: {os.getloadavg()}", file=sys.stderr, flush=True)
        rows = measure_sizes(sizes, work, skip)
        s3 = None
        if "s3" not in skip:  # the local comparison at the same size: a fresh store of the smallest size
            local = work / "addition-small"
            run_child({"kind": "ingest", "task": "addition", "model": "zoo:addition", "spec": "zoo:addition",
                       "n": sizes[0], "out": str(local)})
            s3 = measure_s3(sizes[0], local, work)
        gpt2 = None if "gpt2" in skip else measure_gpt2(args.gpt2_n, work)
        print(table(rows, s3, gpt2))
        print(f"\nload average after: {os.getloadavg()}")
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":  # dask workers re-import __main__
    main()
