"""How fast the arrays a query touches can be read: actstore's checked reads against other readers.

For a GPT-2-small-shaped model with random weights (on ioi) and each zoo model (on its own task),
ingests n examples (default hooks, float16), then reads every hook per-head DLA needs, chunk by
chunk, one array after another (the order of benchmarks/query.py's raw read), with:
- direct:    actstore's `store.read` (each chunk file read, its size and crc32c tail checked against
             its commit record, its crc32c checked, decompressed into the output; store/chunk_read.py)
- via_zarr:  `store.read` through Zarr over the checked store (store.direct_reads = False: the read
             path before the direct one)
- zarr:      plain zarr-python over a LocalStore, no record checks (zarr still checks the crc32c)
- zarrs:     zarr-python with the Rust `zarrs` codec pipeline (pip install zarrs)
- tensorstore: tensorstore's zarr3 driver, as a yardstick (pip install tensorstore)
- direct_blosc1: direct with blosc decoding on one thread (see the note below)
- floor:     by hand, no records: read the file, crc32c, decompress with numcodecs, np.frombuffer
and prints MB/s over the uncompressed bytes and each reader's speed relative to plain zarr
(`x_zarr` > 1: faster), measured best of --repeats, interleaved. Then per-head DLA
(actstore.query.dla, warm) and read_ratio = direct_s / dla_s, as benchmarks/query.py defines it
(best of the repeats, and the ratio of the medians beside it); stream_s: the DLA's scan alone
(chunks.stream on its reading threads, answers gathered and cast, no math); read_ratio_cpu: the
ratio over CPU time (the process's, reading threads included), which a loaded machine disturbs far
less than wall time but which gives no credit for reading on two threads; dla1_s: the same DLA with its
reads on the calling thread (chunks.READ_THREADS = 1), and threads_gain = dla1_s / dla_s, what the
second reading thread bought in this run (about 1 where the machine had no second core to give, as
other work on it takes); direct_faults, dla_faults:
minor page faults per raw read and per DLA (median; each costs microseconds here, and thousands per
call meant fresh memory on every call: direct's are its output arrays, new per read since the caller
keeps them, and whether glibc hands them fresh pages depends on what the process freed before).
Every reader checks it reads the same bytes, the scan too; page cache is warm for
every reader (the store was just written or read), and the DLA has run once before timing. Note
that `direct` on the main thread decodes through blosc's global context, which numcodecs uses from the
main thread only, with 2 threads here: so `direct`, read_ratio's floor, takes the second core for its
decode when it is free (a zoo:addition hook_z chunk, 8.3 MB, decoded in a loop: 1.5 ms on 2 threads against
2.9 ms on one, 2026-12-07 13:20 UTC, load 0.5-1.4; with the other core busy the second thread only waits).
`direct_blosc1` is the same read with blosc on one thread (numcodecs.blosc.use_threads = False), printed
beside it; the DLA's scan decodes one array per reading thread, each on one thread.

    python benchmarks/reads.py [--n 256] [--n-zoo 4096] [--models gpt2,zoo] [--repeats 5] [--dir DIR]
                               [--untrained]

--dir keeps the stores there and reuses them on the next run (an ingest of the GPT-2 shape takes
minutes). Targets: direct at least as fast as plain zarr; read_ratio >= 0.8 on every model.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", category=DeprecationWarning)

import google_crc32c  # noqa: E402
import numpy as np  # noqa: E402
import zarr  # noqa: E402
from numcodecs import Blosc, Zstd  # noqa: E402
from query import (ZOO_MODELS, best, dla_target, gpt2_small_shape, raw_read, raw_read_unchecked,  # noqa: E402
                   untrained_zoo)

import actstore  # noqa: E402
from actstore.query import dla  # noqa: E402
from actstore.query.attribution import COMPUTE, required_hooks  # noqa: E402
from actstore.query import chunks  # noqa: E402
from actstore.query.chunks import stream  # noqa: E402
from actstore.query.readout import Weights  # noqa: E402
from actstore.store.layout import ACTS, chunk_file  # noqa: E402


def via_zarr(store, hooks: list[str]) -> int:  # type: ignore[no-untyped-def]
    """store.read through Zarr over the checked store (the direct path switched off)."""
    store.direct_reads = False
    try:
        return raw_read(store, hooks)
    finally:
        store.direct_reads = True


def zarrs_read(store, hooks: list[str]) -> int:  # type: ignore[no-untyped-def]
    """Plain zarr-python reads with the zarrs codec pipeline (chosen when an array is opened)."""
    with zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"}):
        return raw_read_unchecked(store, hooks)


def tensorstore_read(store, hooks: list[str]) -> int:  # type: ignore[no-untyped-def]
    import tensorstore as ts

    arrays = {h: ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(store.path / ACTS / h)}},
                         read=True).result() for h in hooks}
    total = 0
    for start, stop in store.chunks():
        for h in hooks:
            total += arrays[h][start:stop].read().result().nbytes
    return total


def floor_read(store, hooks: list[str]) -> int:  # type: ignore[no-untyped-def]
    """Read, crc32c-check and decompress each chunk file by hand: no records, no Zarr."""
    meta = {h: json.loads((store.path / ACTS / h / "zarr.json").read_text()) for h in hooks}
    total = 0
    for k, (start, stop) in enumerate(store.chunks()):
        for h in hooks:
            m = meta[h]
            data = chunk_file(store.path, h, k, len(m["shape"])).read_bytes()
            body = data[:-4]
            if google_crc32c.value(body) != int.from_bytes(data[-4:], "little"):
                raise ValueError(f"{h} chunk {k}: crc32c mismatch")
            name = m["codecs"][1]["name"] if len(m["codecs"]) == 3 else "none"
            raw = Blosc().decode(body) if name == "blosc" else Zstd().decode(body) if name == "zstd" else body
            arr = np.frombuffer(raw, dtype=m["data_type"]).reshape(-1, *m["shape"][1:])[: stop - start]
            total += arr.nbytes
    return total


def direct_blosc1(store, hooks: list[str]) -> int:  # type: ignore[no-untyped-def]
    """`direct` with blosc decoding on one thread (numcodecs.blosc.use_threads = False): what `direct` costs
    without the second core that blosc's global context takes from the main thread."""
    from numcodecs import blosc

    before, blosc.use_threads = blosc.use_threads, False
    try:
        return raw_read(store, hooks)
    finally:
        blosc.use_threads = before


READERS: dict[str, Callable[..., int]] = {"direct": raw_read, "direct_blosc1": direct_blosc1, "via_zarr": via_zarr,
                                          "zarr": raw_read_unchecked, "zarrs": zarrs_read,
                                          "tensorstore": tensorstore_read, "floor": floor_read}


def available() -> dict[str, Callable[..., int]]:
    """The readers whose packages are installed here."""
    out = dict(READERS)
    for name, module in (("zarrs", "zarrs"), ("tensorstore", "tensorstore")):
        try:
            __import__(module)
        except ImportError:
            print(f"# {name}: not installed (pip install {module}), skipped")
            del out[name]
    return out


def ingest_or_reuse(label: str, model_fn: Callable[[], object], task: str, params: dict | None, n: int,
                    where: Path) -> "actstore.Store":
    out = where / label.replace(":", "_").replace("(", "_").replace(")", "")
    if out.exists():
        try:
            store = actstore.open_store(out)
            if store.complete and store.n_examples == n:
                return store
        except Exception:  # noqa: BLE001 - anything else is rebuilt
            pass
        shutil.rmtree(out)
    model = model_fn()
    model.to("cpu").eval()  # type: ignore[attr-defined]
    return actstore.ingest(task, model, n, 0, out, quiet=True, model_spec=label, task_params=params)


def measure(label: str, store, readers: dict[str, Callable[..., int]], repeats: int) -> str:  # type: ignore[no-untyped-def]
    target = dla_target(store)
    dla(store, level="head", target=target)  # the weights read and folded once, as in query.py's warm runs
    hooks, _ = required_hooks(Weights.from_store(store), "head")
    nbytes = {name: fn(store, hooks) for name, fn in readers.items()}  # warms the page cache and each reader
    if len(set(nbytes.values())) != 1:
        raise RuntimeError(f"{label}: readers disagree on the bytes read: {nbytes}")
    if stream_read(store, hooks) != next(iter(nbytes.values())):
        raise RuntimeError(f"{label}: the query's scan reads other bytes than the readers")
    timed: dict[str, Callable[[], object]] = {name: (lambda fn=fn: fn(store, hooks)) for name, fn in readers.items()}
    timed["stream"] = lambda: stream_read(store, hooks)
    timed["dla"] = lambda: dla(store, level="head", target=target)
    timed["dla1"] = lambda: one_thread(lambda: dla(store, level="head", target=target))
    times: dict[str, list[float]] = {name: [] for name in timed}
    cpu: dict[str, list[float]] = {"direct": [], "dla": []}
    faults: dict[str, list[int]] = {"direct": [], "dla": []}
    for _ in range(repeats):  # interleaved, so that noise from other work on the machine hits all
        for name, fn in timed.items():
            c0, f0 = time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            times[name].append(best(fn, 1)[0])
            if name in cpu:
                cpu[name].append(time.process_time() - c0)
            if name in faults:
                faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    t = {name: min(v) for name, v in times.items()}
    med = {name: statistics.median(v) for name, v in times.items()}
    mb = next(iter(nbytes.values())) / 1e6
    speeds = " ".join(f"{name}_MB/s={mb / t[name]:.0f}" for name in readers)
    ratios = " ".join(f"{name}_x_zarr={t['zarr'] / t[name]:.2f}" for name in readers if name != "zarr")
    return (f"{label:<16} n={store.n_examples} chunk={store.chunk_size} hooks={len(hooks)} touched_MB={mb:.1f} "
            f"{speeds} {ratios} direct_s={t['direct']:.4f} (median {med['direct']:.4f}) "
            f"stream_s={t['stream']:.4f} dla_s={t['dla']:.4f} (median {med['dla']:.4f}) "
            f"read_ratio={t['direct'] / t['dla']:.2f} (of medians {med['direct'] / med['dla']:.2f}) "
            f"dla1_s={t['dla1']:.4f} threads_gain={t['dla1'] / t['dla']:.2f} "
            f"direct_cpu_s={min(cpu['direct']):.4f} dla_cpu_s={min(cpu['dla']):.4f} "
            f"read_ratio_cpu={min(cpu['direct']) / min(cpu['dla']):.2f} "
            f"direct_faults={statistics.median(faults['direct']):.0f} "
            f"dla_faults={statistics.median(faults['dla']):.0f}")


def one_thread(fn: Callable[[], object]) -> object:
    """fn() with the scan's reads on the calling thread (chunks.READ_THREADS = 1), as on a machine with one core."""
    before, chunks.READ_THREADS = chunks.READ_THREADS, 1
    try:
        return fn()
    finally:
        chunks.READ_THREADS = before


def stream_read(store, hooks: list[str]) -> int:  # type: ignore[no-untyped-def]
    """The DLA's own scan alone (chunks.stream as dla runs it: reading threads, answer positions gathered
    and cast to the math's dtype), no math; returns the bytes read, as the readers do."""
    row_bytes = sum(store.hook_info(h).example_bytes for h in hooks)
    return sum(row_bytes * len(chunk) for chunk in stream(store, hooks, answer_dtype=COMPUTE))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=256, help="examples for the GPT-2-small shape (default 256)")
    p.add_argument("--n-zoo", type=int, default=4096, help="examples per zoo model (default 4096)")
    p.add_argument("--models", default="gpt2,zoo", help="comma list: gpt2, zoo (every zoo model) or zoo:NAME")
    p.add_argument("--repeats", type=int, default=5, help="interleaved runs of every reader; the best is shown")
    p.add_argument("--untrained", action="store_true",
                   help="zoo architectures with random weights where trained ones are not installed")
    p.add_argument("--dir", default=None, help="keep the stores here, reusing those already there")
    args = p.parse_args()
    wanted = args.models.split(",")
    zoo = [s for s in ZOO_MODELS if "zoo" in wanted or s in wanted]
    where = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="actstore-rbench-"))
    where.mkdir(parents=True, exist_ok=True)
    readers = available()
    print(f"# cores={os.cpu_count()} zarr={zarr.__version__}; reads of every hook per-head DLA needs, "
          "chunk by chunk, page cache warm; MB/s of uncompressed bytes")
    for spec in (["gpt2"] if "gpt2" in wanted else []) + zoo:
        try:
            if spec == "gpt2":
                store = ingest_or_reuse("gpt2-small-shape", gpt2_small_shape, "ioi", None, args.n, where)
                label = "gpt2-small-shape"
            else:
                from actstore.models import ZOO, load_model

                task, params = ZOO[spec.removeprefix("zoo:")].tasks[0]
                label = spec
                try:
                    model = load_model(spec)
                    make: Callable[[], object] = lambda model=model: model
                except Exception:
                    if not args.untrained:
                        raise
                    label = f"{spec}(untrained)"
                    make = lambda spec=spec: untrained_zoo(spec.removeprefix("zoo:"))
                store = ingest_or_reuse(label, make, task, params, args.n_zoo, where)
        except Exception as e:  # noqa: BLE001 - a missing zoo model skips its line
            print(f"{spec:<16} skipped: {type(e).__name__}: {e}")
            continue
        print(measure(label, store, readers, args.repeats), flush=True)
    if not args.dir:
        shutil.rmtree(where, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
