"""Peak memory of `breakdown` over attention rows, neuron rows and a table file: whole table vs streamed.

    python benchmarks/breakdown_memory.py DIR [--n 3000] [--d-mlp 512] [--chunk 100]

Ingests (once, into DIR/store) an addition store from a small random model with MLPs, writes its
neuron table to DIR/neurons.parquet, then runs each way of splitting by carry_2 in a fresh process
and prints the peak RSS (VmHWM) it adds over the opened store and its examples:

- whole:    what `actstore breakdown` did before: the derived table read whole (or pl.read_parquet of
            the file), labels joined, one group_by;
- streamed: `streamed.summary` (per-chunk partials) and `breakdown_file` (batches of the file).

It checks that both give the same groups, in the same order, with the same n, and means within 1e-9.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

CHILD = r"""
import json, sys, time, warnings
warnings.simplefilter("ignore")
import polars as pl
import actstore
from actstore.query import derived, streamed
from actstore.query.breakdown import breakdown
from actstore.query.breakdown_file import breakdown_file
from actstore.query.summary import GroupSpec

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
store_path, table, way, out = sys.argv[1:5]
store = actstore.open_store(store_path)
store.examples
base = hwm()
start = time.perf_counter()
value = "projection" if table in ("neurons", "file") else "value"
if way == "whole":
    if table == "file":
        whole = pl.read_parquet(sys.argv[5])
    else:
        whole = derived.cached(store, table, None)
    rows = whole.height
    got = breakdown(whole, group_by=["carry_2"], examples=store.examples, value=value)
elif table == "file":
    got = breakdown_file(sys.argv[5], ["carry_2"], store)
    rows = int(got["n"].sum())
else:
    got = streamed.summary(store, table, None, GroupSpec(by=("carry_2",), value=value))
    rows = int(got["n"].sum())
wall = time.perf_counter() - start
got.write_parquet(out)
print(json.dumps({"base_mb": base, "added_mb": hwm() - base, "rows": rows, "wall_s": wall}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir")
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--d-mlp", type=int, default=512)
    p.add_argument("--chunk", type=int, default=100)
    args = p.parse_args()
    root = Path(args.dir)
    path = root / "store"
    if not path.exists():
        ingest(path, args.n, args.d_mlp, args.chunk)
    neurons_file = root / "neurons.parquet"
    if not neurons_file.exists():
        subprocess.run([sys.executable, "-m", "actstore", "neurons", str(path), "-o", str(neurons_file)], check=True,
                       capture_output=True)
    import numpy as np
    import polars as pl
    from polars.testing import assert_frame_equal

    for table in ("neurons", "attention", "file"):
        results = {}
        for way in ("whole", "streamed"):
            out = root / f"{table}-{way}.parquet"
            run = subprocess.run([sys.executable, "-c", CHILD, str(path), table, way, str(out), str(neurons_file)],
                                 capture_output=True, text=True, timeout=1800)
            if run.returncode:
                raise SystemExit(run.stderr)
            got = json.loads(run.stdout.strip().splitlines()[-1])
            results[way] = pl.read_parquet(out)
            print(f"{table:9s} {way:8s} {got['rows']:>11,d} rows  {got['wall_s']:6.1f} s  +{got['added_mb']:6.0f} MB "
                  f"peak RSS (over {got['base_mb']:.0f} MB)", flush=True)
        a, b = results["whole"], results["streamed"]
        keys = [c for c in a.columns if c not in ("mean", "std", "ci_low", "ci_high")]
        assert_frame_equal(a.select(keys), b.select(keys), check_exact=True)
        np.testing.assert_allclose(a["mean"].to_numpy(), b["mean"].to_numpy(), rtol=1e-9, atol=1e-12)


def ingest(path: Path, n: int, d_mlp: int, chunk: int) -> None:
    import torch

    import actstore

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        model = HookedTransformer(HookedTransformerConfig(
            n_layers=2, n_heads=4, d_model=32, d_head=8, d_mlp=d_mlp, n_ctx=16, d_vocab=12, act_fn="relu",
            normalization_type="LN", seed=0, device="cpu"))
    model.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    torch.set_num_threads(1)
    start = time.perf_counter()
    actstore.ingest("addition", model, n, 0, path, hooks=["post", "pattern", "scale"], dtype="float32", chunk=chunk,
                    batch=250, quiet=True)
    print(f"ingested {n} examples in {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
