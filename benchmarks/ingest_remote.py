"""A small ingest into a moto S3 server on 127.0.0.1 against the same ingest to a local directory.

The server runs in its own process (an in-process server would share the GIL with the ingest), and
each ingest runs in a fresh process that imports actstore from `--tree` (default this checkout;
pass an older checkout's folder, e.g. from `git archive COMMIT actstore | tar -x -C DIR`, to compare
versions in one run). Interleaved `--repeats` times; each line: tree, target, best and all seconds of
the ingest call (model built before the clock starts), and the S3 requests it sent by operation.

    python benchmarks/ingest_remote.py [--n 150] [--chunk 16] [--repeats 3] [--tree DIR ...]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# one ingest in a fresh process: prints {"s": seconds, "requests": {operation: count}}
CHILD = r"""
import collections, json, sys, time, warnings
warnings.filterwarnings("ignore")
sys.path.insert(0, sys.argv[1] + "/tests/ingest")
from tiny_models import tiny_model
import actstore
print(actstore.__file__, file=sys.stderr)
counts = collections.Counter()
try:
    import s3fs
    send = s3fs.S3FileSystem._call_s3
    async def counted(self, method, *a, **k):
        counts[method] += 1
        return await send(self, method, *a, **k)
    s3fs.S3FileSystem._call_s3 = counted
except ImportError:
    pass
model = tiny_model("addition")
t = time.perf_counter()
actstore.ingest("addition", model, int(sys.argv[3]), 3, sys.argv[2], chunk=int(sys.argv[4]), batch=8, quiet=True,
                model_spec="tiny:addition")
print(json.dumps({"s": time.perf_counter() - t, "requests": dict(counts)}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=150)
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tree", action="append", default=None,
                   help="a folder holding the actstore package to time (repeatable; default this checkout)")
    args = p.parse_args()
    trees = [Path(t).resolve() for t in (args.tree or [str(ROOT)])]
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", (
        "import logging, time; from moto.server import ThreadedMotoServer; "
        "logging.getLogger('werkzeug').setLevel(logging.ERROR); "
        f"s = ThreadedMotoServer(ip_address='127.0.0.1', port={port}, verbose=False); s.start(); time.sleep(1e9)")])
    env = dict(os.environ, AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="testing",
               AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
               HF_HUB_OFFLINE="1")
    try:
        for _ in range(100):  # wait for the server, then make the bucket
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        subprocess.run([sys.executable, "-c", "import s3fs; s3fs.S3FileSystem().mkdir('bench')"], env=env, check=True)
        runs: dict[tuple[str, str], list[dict]] = {}
        with tempfile.TemporaryDirectory(prefix="actstore-remote-bench-") as tmp:
            for r in range(args.repeats):
                for i, tree in enumerate(trees):
                    for target, out in (("local", f"{tmp}/t{i}-{r}"), ("moto", f"s3://bench/t{i}-{r}/store")):
                        cmd = [sys.executable, "-c", CHILD, str(ROOT), out, str(args.n), str(args.chunk)]
                        got = subprocess.run(cmd, env=dict(env, PYTHONPATH=str(tree)), capture_output=True, text=True,
                                             cwd=tmp)  # not this checkout: `python -c` puts the cwd first on sys.path
                        if got.returncode != 0:
                            print(got.stderr[-2000:], file=sys.stderr)
                            return 1
                        runs.setdefault((str(tree), target), []).append(json.loads(got.stdout.strip().splitlines()[-1]))
        print(f"# n={args.n} chunk={args.chunk} repeats={args.repeats} load={os.getloadavg()[0]:.1f}")
        for (tree, target), rs in runs.items():
            secs = sorted(r["s"] for r in rs)
            reqs = rs[0]["requests"]
            print(f"{tree} {target:<5} best={secs[0]:.2f}s all={','.join(f'{s:.2f}' for s in secs)} "
                  f"requests={sum(reqs.values())} {json.dumps(reqs, sort_keys=True)}")
    finally:
        server.terminate()
        server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
