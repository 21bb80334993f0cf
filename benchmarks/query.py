"""Per-head DLA from a store against recomputing it with TransformerLens, one line per model.

For a GPT-2-small-shaped model with random weights (on the ioi task) and each zoo model (on its
own task): ingests n examples (default hooks, float16), then measures (best of --read-repeats for the
reads, the DLA and the checks, which take milliseconds; of --repeats for the cold processes):
- raw_s:   reading and decompressing every array the query touches (store.read, chunk by chunk,
           one array after another), and raw_MB/s over their uncompressed bytes;
- dla_s:   actstore.query.dla(store, level='head') end to end (reads, math, the tidy table), its
           MB/s over the same bytes, and read_ratio = dla MB/s / raw MB/s (best runs; read_ratio_median:
           of the median runs); raw and dla runs are interleaved. dla_cold_s: the first call, which also
           reads the weights (GPT-2: W_E and W_U alone are 300 MB) and folds the answer directions into
           them; later queries on the store in the same process reuse both;
- tl_s:    TransformerLens over the same examples and batches, as a skilled user computes it
           (tl_head_dla_fast: hook_z only, stop_at_layer, products at the answers), on --device;
           tl_seeds_s: the seeds' code (run_with_cache + stack_head_results + logit_attrs at every
           position), unless --no-seeds-baseline;
- cold:    cold-vs-cold, each side in a fresh process from a shell: cold_process_s imports actstore,
           opens the store and runs the first head DLA; tl_cold_process_s imports torch and
           TransformerLens, builds or loads the model and recomputes the same DLA (tl_cold);
           speedup_cold = tl_cold_process_s / cold_process_s. Warm-vs-warm is speedup = tl_s / dla_s
           (model loaded, store opened, both in this process); speedup_first = tl_s / dla_cold_s;
- check_cost: raw_s over the same reads through plain Zarr (no record checks: no sha256 of each
           chunk against its commit record, no missing-chunk detection), i.e. what checking every
           read costs; meta_check_cost: opening the store and reading its three meta tables
           (records cross-checked, every part's sha256) over plain Parquet reads of the same parts;
- max_err: the largest |store head DLA - TransformerLens head DLA|; err_tol = 4 eps(stored dtype) x
  max |TL head DLA| (float16 storage: an error of ~eps x M on a DLA of magnitude M is expected, e.g.
  0.11 on zoo:addition's 'diff' values of ~280; float32 storage leaves ~3e-5 there), err_ok says
  whether max_err is within it; sum_err: the largest |sum of all components - (stored logit - b_U)|.
Page cache is warm for both reads (the store was just written).

    python benchmarks/query.py [--n 256] [--n-zoo 4096] [--models gpt2,zoo] [--repeats 5] [--read-repeats 15]
                               [--tl-repeats 1] [--device cpu|cuda] [--untrained]   (zoo architectures, random weights)

Targets: speedup >= 10 on a CPU for the GPT-2-small shape; read_ratio >= 0.8 on every model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", category=DeprecationWarning)

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import torch  # noqa: E402
import zarr  # noqa: E402
from zarr.storage import LocalStore  # noqa: E402

import actstore  # noqa: E402
from actstore.query import dla  # noqa: E402
from actstore.query.attribution import required_hooks  # noqa: E402
from actstore.query.readout import Weights  # noqa: E402
from actstore.store.layout import part_path  # noqa: E402
from actstore.store.open import read_manifest  # noqa: E402

ZOO_MODELS = ("zoo:addition", "zoo:list_update", "zoo:brackets", "zoo:lm")  # each on its (first) training task


def gpt2_small_shape():
    """A GPT-2-small-shaped HookedTransformer with random weights, processed like the zoo."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257,
                                  n_ctx=1024, act_fn="gelu_new", normalization_type="LN", seed=0, device="cpu")
    model = HookedTransformer(cfg)
    model.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    return model


def untrained_zoo(name: str):  # type: ignore[no-untyped-def]
    """A zoo architecture with random weights, processed as the zoo is (for timings before training)."""
    from actstore.models import ZOO
    from actstore.models.backend import build_model, load_weights
    from actstore.models.zoo import tokenizer_for

    spec = ZOO[name]
    tok = tokenizer_for(spec)
    cfg = dict(spec.config)
    if tok is not None:
        cfg["d_vocab"] = len(tok.get_vocab())
    model = build_model(cfg, tokenizer=tok)
    load_weights(model, {k: v.clone() for k, v in model.state_dict().items()}, process=True)
    return model


def best(fn, repeats: int):  # type: ignore[no-untyped-def]
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def dla_target(store) -> str:  # type: ignore[no-untyped-def]
    """The DLA target the benchmarks ask for: 'diff' where every example has a counterfactual, else 'correct'."""
    return "diff" if store.examples.get_column("counter_tokens").null_count() == 0 else "correct"


def raw_read(store, hooks: list[str]) -> int:  # type: ignore[no-untyped-def]
    """Read and decompress every touched array chunk by chunk; returns the uncompressed bytes."""
    total = 0
    for start, stop in store.chunks():
        for name in hooks:
            total += store.read(name, start, stop).nbytes
    return total


def raw_read_unchecked(store, hooks: list[str]) -> int:  # type: ignore[no-untyped-def]
    """raw_read through a plain Zarr LocalStore: no record checks (the floor the checks add to)."""
    group = zarr.open_group(LocalStore(store.path / "acts", read_only=True), mode="r", zarr_format=3)
    arrays = {name: group[name] for name in hooks}
    total = 0
    for start, stop in store.chunks():
        for name in hooks:
            total += np.asarray(arrays[name][start:stop]).nbytes
    return total


def meta_checked(path: Path) -> int:
    s = actstore.open_store(path)
    return s.examples.height + s.tokens.height + s.outputs.height


def meta_unchecked(path: Path, n_chunks: int) -> int:
    read_manifest(path)
    return sum(pl.read_parquet([part_path(path, t, k) for k in range(n_chunks)]).height
               for t in ("examples", "tokens", "outputs"))


def tl_head_dla(model, store, target: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    """[example, answer, layer*head] per-head DLA recomputed with TransformerLens, batch by batch (on the
    model's device; the values come back to the CPU)."""
    ex = store.examples
    width = store.manifest.width
    tokens = np.zeros((ex.height, width), dtype=np.int64)
    for i, row in enumerate(ex.get_column("tokens").to_list()):
        tokens[i, : len(row)] = row
    lengths = ex.get_column("length").to_numpy()
    pos = np.array(ex.get_column("answer_positions").to_list(), dtype=np.int64)
    ans = np.array(ex.get_column("answer_tokens").to_list(), dtype=np.int64)
    ctr = np.array(ex.get_column("counter_tokens").to_list(), dtype=np.int64) if target == "diff" else None
    bidirectional = model.cfg.attention_dir != "causal"
    keep = lambda name: name.endswith("hook_z") or name == "ln_final.hook_scale"  # noqa: E731
    out = []
    batch = store.manifest.batch
    device = model.cfg.device
    with torch.inference_mode():
        for b0 in range(0, ex.height, batch):
            sl = slice(b0, b0 + batch)
            toks = torch.from_numpy(tokens[sl]).to(device)
            real = (torch.arange(width)[None] < torch.as_tensor(np.array(lengths[sl]))[:, None]).to(device)
            hooks = [(f"blocks.{layer}.attn.hook_attn_scores",
                      lambda s, hook, real=real: s.masked_fill(~real[:, None, None, :], float("-inf")))
                     for layer in range(model.cfg.n_layers)] if bidirectional else []
            with model.hooks(fwd_hooks=hooks):
                _, cache = model.run_with_cache(toks, attention_mask=real.long(), names_filter=keep)
            stack = cache.stack_head_results(layer=-1)  # [component, batch, pos, d_model]
            rows = np.arange(toks.shape[0])[:, None]
            tok_full = torch.zeros(toks.shape, dtype=torch.long)
            tok_full[rows, pos[sl]] = torch.from_numpy(ans[sl])
            ctr_full = None
            if ctr is not None:
                ctr_full = torch.zeros(toks.shape, dtype=torch.long)
                ctr_full[rows, pos[sl]] = torch.from_numpy(ctr[sl])
                ctr_full = ctr_full.to(device)
            attrs = cache.logit_attrs(stack, tok_full.to(device), incorrect_tokens=ctr_full)  # [component, batch, pos]
            out.append(attrs[:, rows, pos[sl]].permute(1, 2, 0).double().cpu().numpy())
    return np.concatenate(out)


def tl_head_dla_fast(model, store, target: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    """[example, answer, layer*head] per-head DLA as a skilled TransformerLens user computes it.

    Same examples and batches as tl_head_dla, but: only hook_z is cached (names_filter), the forward
    stops after the last block (stop_at_layer: no ln_final, no unembedding), and every product is taken
    at the answer positions only: z[answer] @ W_O -> [batch, answer, layer, head, d_model], divided by
    the final LayerNorm scale recomputed from the last residual at those positions, dotted with the
    answer direction W_U[:, correct] (- W_U[:, counter]). Runs on the model's device (cfg.device).
    """
    ex = store.examples
    width = store.manifest.width
    tokens = np.zeros((ex.height, width), dtype=np.int64)
    for i, row in enumerate(ex.get_column("tokens").to_list()):
        tokens[i, : len(row)] = row
    lengths = ex.get_column("length").to_numpy()
    cfg = model.cfg
    device = cfg.device
    pos = torch.from_numpy(np.array(ex.get_column("answer_positions").to_list(), dtype=np.int64)).to(device)
    ans = torch.from_numpy(np.array(ex.get_column("answer_tokens").to_list(), dtype=np.int64)).to(device)
    ctr = (torch.from_numpy(np.array(ex.get_column("counter_tokens").to_list(), dtype=np.int64)).to(device)
           if target == "diff" else None)
    bidirectional = cfg.attention_dir != "causal"
    w_o = torch.stack([model.blocks[layer].attn.W_O for layer in range(cfg.n_layers)])  # [layer, head, d_head, d_model]
    w_u = model.W_U  # [d_model, vocab]
    norm = cfg.normalization_type
    keep = lambda name: name.endswith("hook_z")  # noqa: E731
    out = []
    batch = store.manifest.batch
    with torch.inference_mode():
        for b0 in range(0, ex.height, batch):
            sl = slice(b0, b0 + batch)
            toks = torch.from_numpy(tokens[sl]).to(device)
            real = (torch.arange(width)[None] < torch.as_tensor(np.array(lengths[sl]))[:, None]).to(device)
            hooks = [(f"blocks.{layer}.attn.hook_attn_scores",
                      lambda s, hook, real=real: s.masked_fill(~real[:, None, None, :], float("-inf")))
                     for layer in range(cfg.n_layers)] if bidirectional else []
            with model.hooks(fwd_hooks=hooks):
                resid, cache = model.run_with_cache(toks, attention_mask=real.long(), names_filter=keep,
                                                    stop_at_layer=cfg.n_layers)
            rows = torch.arange(toks.shape[0], device=toks.device)[:, None]
            p = pos[sl]
            z = torch.stack([cache[f"blocks.{layer}.attn.hook_z"][rows, p] for layer in range(cfg.n_layers)], 2)
            x = resid[rows, p]  # [batch, answer, d_model]
            if norm in ("LN", "LNPre"):
                x = x - x.mean(-1, keepdim=True)
            scale = ((x.pow(2).mean(-1, keepdim=True) + cfg.eps).sqrt() if norm in ("LN", "LNPre", "RMS", "RMSPre")
                     else torch.ones_like(x[..., :1]))  # [batch, answer, 1]
            direction = w_u[:, ans[sl]].permute(1, 2, 0)  # [batch, answer, d_model]
            if ctr is not None:
                direction = direction - w_u[:, ctr[sl]].permute(1, 2, 0)
            direction = direction / scale
            # [batch, answer, layer, head]: z @ W_O @ direction, the direction folded through W_O first
            dw = torch.einsum("lhdm,bam->balhd", w_o, direction)
            attrs = torch.einsum("balhd,balhd->balh", z, dw)
            out.append(attrs.flatten(2).double().cpu().numpy())
    return np.concatenate(out)


def cold_query(path: Path, target: str) -> tuple[float, float, float]:
    """(process_s, import_s, query_s) of a fresh process that imports actstore, opens the store and runs
    the first head DLA: what one query costs from a shell (page cache warm: the store was just written)."""
    code = ("import time,sys,json; t0=time.perf_counter(); import actstore; from actstore.query import dla; "
            "t1=time.perf_counter(); s=actstore.open_store(sys.argv[1]); d=dla(s, level='head', target=sys.argv[2]); "
            "t2=time.perf_counter(); print(json.dumps([t1-t0, t2-t1, d.height]))")
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code, str(path), target], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"cold query failed: {res.stderr.strip().splitlines()[-1:]}")
    process_s = time.perf_counter() - t
    import_s, query_s, _ = json.loads(res.stdout.strip().splitlines()[-1])
    return process_s, import_s, query_s


TL_COLD = """
import json, sys, time, warnings
t0 = time.perf_counter()
warnings.filterwarnings("ignore", category=DeprecationWarning)
sys.path.insert(0, sys.argv[1])
import torch
import query as q
import actstore
store = actstore.open_store(sys.argv[2])
label, device, target = sys.argv[3], sys.argv[4], sys.argv[5]
if label == "gpt2-small-shape":
    model = q.gpt2_small_shape()
elif label.endswith("(untrained)"):
    model = q.untrained_zoo(label.removeprefix("zoo:").removesuffix("(untrained)"))
else:
    from actstore.models import load_model
    model = load_model(label)
model.to(device).eval()
t1 = time.perf_counter()
out = q.tl_head_dla_fast(model, store, target)
print(json.dumps([t1 - t0, time.perf_counter() - t1, out.shape[0]]))
"""


def tl_cold(path: Path, label: str, device: str, target: str) -> tuple[float, float, float]:
    """(process_s, setup_s, dla_s) of a fresh process that imports torch, TransformerLens and this script,
    builds or loads the model (the GPT-2 shape is built with random weights, as in this process; a zoo
    model is loaded from the package) and recomputes the head DLA over the store's examples: the cold
    baseline a cold store query is compared with (both sides then pay their imports and set-up)."""
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", TL_COLD, str(Path(__file__).resolve().parent), str(path), label,
                          device, target], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"cold TransformerLens run failed: {res.stderr.strip().splitlines()[-1:]}")
    process_s = time.perf_counter() - t
    setup_s, dla_s, _ = json.loads(res.stdout.strip().splitlines()[-1])
    return process_s, setup_s, dla_s


def tolerance(store, reference: np.ndarray) -> tuple[float, str]:  # type: ignore[no-untyped-def]
    """What max_err may reach: activations stored in float16 (eps 9.8e-4) carry a relative error of up to
    half an eps each, so a head's DLA of magnitude M is off by up to ~eps * M (zoo:addition's 'diff'
    values reach ~280, so 0.1 is expected there); float32 storage leaves TransformerLens's own float32
    rounding. Returns (4 * eps(stored dtype) * max |reference|, the stored dtype)."""
    dtype = str(store.manifest.dtype)
    return 4 * float(np.finfo(np.dtype(dtype)).eps) * float(np.abs(reference).max(initial=0.0)), dtype


def break_even(ingest_s: float, tl_s: float, query_s: float) -> str:
    """Queries after which ingest-once + k queries costs less than k recomputations."""
    if tl_s <= query_s:
        return "never"
    return str(int(np.floor(ingest_s / (tl_s - query_s))) + 1)


def measure(label: str, model, task: str, params: dict | None, n: int, repeats: int,  # type: ignore[no-untyped-def]
            tl_repeats: int, seeds_baseline: bool, tmp: Path, device: str = "cpu", read_repeats: int = 15) -> str:
    out = tmp / label.replace(":", "_")
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    store = actstore.ingest(task, model, n, 0, out, quiet=True, model_spec=label, task_params=params)
    ingest_s = time.perf_counter() - t0
    target = dla_target(store)
    cold_s, table = best(lambda: dla(store, level="head", target=target), 1)  # reads the weights, folds them
    hooks, _ = required_hooks(Weights.from_store(store), "head")
    raw, warm, plain, meta, meta_plain = [], [], [], [], []
    n_chunks = sum(1 for _ in store.chunks())
    for _ in range(read_repeats):  # interleaved, so that noise from other work on the machine hits all
        t, nbytes = best(lambda: raw_read(store, hooks), 1)
        raw.append(t)
        plain.append(best(lambda: raw_read_unchecked(store, hooks), 1)[0])
        warm.append(best(lambda: dla(store, level="head", target=target), 1)[0])
        meta.append(best(lambda: meta_checked(out), 1)[0])
        meta_plain.append(best(lambda: meta_unchecked(out, n_chunks), 1)[0])
    raw_s, dla_s = min(raw), min(warm)
    cold = min((cold_query(out, target) for _ in range(repeats)), key=lambda c: c[0])
    tl_s, tl = best(lambda: tl_head_dla_fast(model, store, target), tl_repeats)
    tl_cold_run = min((tl_cold(out, label, device, target) for _ in range(tl_repeats)), key=lambda c: c[0])
    seeds = ""
    if seeds_baseline:
        seeds_s, tl_seeds = best(lambda: tl_head_dla(model, store, target), tl_repeats)
        seeds = (f"tl_seeds_s={seeds_s:.2f} speedup_vs_seeds={seeds_s / dla_s:.1f} "
                 f"fast_vs_seeds_err={float(np.abs(tl_seeds - tl).max()):.2g} ")
    heads = table.filter(pl.col("component").str.contains(r"^L\d+H\d+$")).sort(
        "example_id", "answer_idx", "layer", "head", maintain_order=True)
    ours = heads.get_column("value").to_numpy().reshape(tl.shape)
    max_err = float(np.abs(ours - tl).max())
    tol, stored = tolerance(store, tl)
    sums = table.group_by("example_id", "answer_idx").agg(pl.col("value").sum()).join(
        store.outputs, on=["example_id", "answer_idx"])
    b_u = store.param("unembed.b_U").astype(np.float64)
    want = sums.get_column("correct_logit").to_numpy().astype(np.float64) - b_u[sums.get_column("correct_token")]
    if target == "diff":
        want = (sums.get_column("logit_diff").to_numpy().astype(np.float64) - b_u[sums.get_column("correct_token")]
                + b_u[sums.get_column("counter_token")])
    sum_err = float(np.abs(sums.get_column("value").to_numpy() - want).max())
    mb = nbytes / 1e6
    line = (f"{label:<16} task={task:<11} n={n} answers={store.n_answers} chunk={store.chunk_size} "
            f"threads={torch.get_num_threads()} target={target} touched_MB={mb:.1f} "
            f"raw_s={raw_s:.3f} raw_MB/s={mb / raw_s:.0f} dla_s={dla_s:.3f} dla_MB/s={mb / dla_s:.0f} "
            f"read_ratio={raw_s / dla_s:.2f} read_ratio_median={np.median(raw) / np.median(warm):.2f} "
            f"check_cost={raw_s / min(plain):.2f} "
            f"meta_s={min(meta):.3f} meta_check_cost={min(meta) / min(meta_plain):.2f} dla_cold_s={cold_s:.3f} "
            f"tl_device={device} tl_s={tl_s:.3f} speedup={tl_s / dla_s:.1f} speedup_first={tl_s / cold_s:.1f} "
            f"cold_process_s={cold[0]:.2f} cold_import_s={cold[1]:.2f} cold_query_s={cold[2]:.3f} "
            f"tl_cold_process_s={tl_cold_run[0]:.2f} tl_cold_setup_s={tl_cold_run[1]:.2f} "
            f"tl_cold_dla_s={tl_cold_run[2]:.3f} speedup_cold={tl_cold_run[0] / cold[0]:.2f} "
            f"break_even_warm={break_even(ingest_s, tl_s, dla_s)} "
            f"break_even_cold={break_even(ingest_s, tl_cold_run[0], cold[0])} {seeds}"
            f"rows={table.height} max_err={max_err:.2g} err_tol={tol:.2g}({stored}) "
            f"err_ok={'yes' if max_err <= tol else 'NO'} sum_err={sum_err:.2g} ingest_s={ingest_s:.1f}")
    shutil.rmtree(out, ignore_errors=True)
    return line


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=256, help="examples for the GPT-2-small shape (default 256)")
    p.add_argument("--n-zoo", type=int, default=4096, help="examples per zoo model (default 4096)")
    p.add_argument("--models", default="gpt2,zoo", help="comma list: gpt2, zoo (every zoo model) or zoo:NAME")
    p.add_argument("--repeats", type=int, default=5, help="cold processes of each side (the best is shown)")
    p.add_argument("--read-repeats", type=int, default=15,
                   help="interleaved raw-read / dla / check runs, milliseconds each (the best and median are shown)")
    p.add_argument("--tl-repeats", type=int, default=1, help="TransformerLens runs (the best is shown)")
    p.add_argument("--no-seeds-baseline", action="store_true",
                   help="skip the seeds' TransformerLens code (logit_attrs at every position; slow on GPT-2)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    p.add_argument("--device", default="cpu", help="where the model runs: ingest and the TransformerLens baseline "
                   "(cpu, cuda); store queries always run on the CPU")
    p.add_argument("--untrained", action="store_true",
                   help="zoo architectures with random weights where trained ones are not installed")
    p.add_argument("--dir", default=None, help="where to write the stores (default: a temporary directory)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    wanted = args.models.split(",")
    zoo = [s for s in ZOO_MODELS if "zoo" in wanted or s in wanted]
    tmp = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="actstore-qbench-"))
    print(f"# torch={torch.__version__} cores={os.cpu_count()} threads={torch.get_num_threads()} "
          f"device={args.device}; per-head DLA from the store (CPU) vs recomputed with TransformerLens; warm: "
          "both in this process (model loaded, imports done); cold: both in a fresh process (imports, store "
          "open / model load included); err_tol scales with the stored dtype (see tolerance())")
    for spec in (["gpt2"] if "gpt2" in wanted else []) + zoo:
        try:
            if spec == "gpt2":
                model, task, params, label, n = gpt2_small_shape(), "ioi", None, "gpt2-small-shape", args.n
            else:
                from actstore.models import ZOO, load_model

                task, params = ZOO[spec.removeprefix("zoo:")].tasks[0]
                label, n = spec, args.n_zoo
                try:
                    model = load_model(spec)
                except Exception:
                    if not args.untrained:
                        raise
                    model, label = untrained_zoo(spec.removeprefix("zoo:")), f"{spec}(untrained)"
        except Exception as e:  # noqa: BLE001 - a missing zoo model skips its line
            print(f"{spec:<16} skipped: {type(e).__name__}: {e}")
            continue
        model.to(args.device).eval()
        print(measure(label, model, task, params, n, args.repeats, args.tl_repeats, not args.no_seeds_baseline, tmp,
                      args.device, args.read_repeats), flush=True)
    if not args.dir:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
