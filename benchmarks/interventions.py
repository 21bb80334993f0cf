"""Intervention sweeps from a store against TransformerLens and against each other, one block per model.

For a GPT-2-small-shaped model with random weights (on the ioi task, 18 tokens) and zoo:addition
(on its own task), ingests the examples once (hook resid_pre only: sweeps rerun the model), then:
1. resid_pre: actstore.interventions.patch(store, 'resid_pre', 'layer,pos', examples=N) end to end
   (reads the examples, checks the weights' digest, runs, writes the sweep into the store, reads
   it back) vs TransformerLens as a skilled user would do it: run_with_cache on the clean batch
   (names_filter: resid_pre only) + transformer_lens.patching.get_act_patch_resid_pre on the
   whole corrupted batch in one call, a metric that reduces the batch (mean logit diff at the
   answer positions), inference_mode, the same model object on the same device. tl_ratio =
   tl_s / store_s; max_diff: the largest |mean logit diff| difference over (layer, pos) (an
   example too short for pos counts as unchanged, as in TransformerLens, where patching a pad
   position changes nothing before it);
2. z head,pos: attribution_patch(store, 'z', 'head,pos') vs the exact patch(store, 'z', 'head,pos')
   on the same M examples; atp_ratio = exact_s / atp_s, and Spearman's rank agreement of the
   per-target means (actstore.query.interventions.agreement, metric logit_diff);
3. peak memory: the exact resid_pre layer,pos sweep at K and 4K examples, each in a fresh
   subprocess; the child's peak RSS just before the sweep's table is read back (rss_compute)
   and at the end, with the returned table (rss_end); mem_ratio = rss_compute(4K) / rss_compute(K).
   Peak RSS is the child's VmHWM (/proc/self/status), reset to the current RSS once the model is
   built (building the GPT-2 shape, process_weights_ included, peaks at ~2.6 GB, above anything
   a sweep adds; rss_start is the RSS then). Not ru_maxrss: Linux carries the parent's RSS at
   fork into the child's ru_maxrss across exec, so under a GPT-2-sized parent it reads the
   parent's size in every child; it is printed too (ru_maxrss_end), and used where no /proc.

Each actstore run starts with the store's interventions/ removed (else the second identical call
is a cache hit). Runs are interleaved `--repeats` times and the best of each is shown, because the
machines here are shared and noisy; cpu_ratio is each ratio over process CPU seconds (all threads)
instead of wall seconds, steadier when other work shares the cores. Torch's default thread count
(--threads to set it); CPU unless a GPU is there. The default run takes ~5 minutes on an idle
2-core CPU (the GPT-2 shape's TransformerLens sweep alone ~1.5 min); --quick ~3.5 (with one
example, AtP's fixed per-call costs dominate its time: read quick's AtP ratio as a smoke test).

    python benchmarks/interventions.py [--models gpt2,zoo:addition] [--parts resid,atp,mem] [--n 16]
                                       [--n-zoo 512] [--m 2] [--m-zoo 256] [--mem-n 1024]
                                       [--mem-models zoo:addition] [--repeats 1] [--threads T] [--quick]

Targets: tl_ratio >= 2 (with max_diff <= 1e-3); atp_ratio >= 20; mem_ratio about 1 (<= 1.10 here).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # transformer_lens.patching's progress bar
warnings.filterwarnings("ignore", category=DeprecationWarning)

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import torch  # noqa: E402

import actstore  # noqa: E402
from actstore.interventions import attribution_patch, patch  # noqa: E402
from actstore.query.interventions import agreement  # noqa: E402

TARGET_TL, TARGET_ATP, TARGET_MEM, TOL = 2.0, 20.0, 1.10, 1e-3


def gpt2_small_shape(device: str):  # type: ignore[no-untyped-def]
    """A GPT-2-small-shaped HookedTransformer with random weights (seed 0: the same in every
    process), processed like the zoo."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257,
                                  n_ctx=1024, act_fn="gelu_new", normalization_type="LN", seed=0, device=device)
    model = HookedTransformer(cfg)
    model.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    return model.eval()


def zoo_model(spec: str, device: str):  # type: ignore[no-untyped-def]
    """The zoo model, or (while its trained weights are not installed) its architecture with random weights."""
    from actstore.errors import ModelUnavailableError
    from actstore.models import load_model

    try:
        return load_model(spec).to(device).eval()
    except ModelUnavailableError:
        from actstore.models.backend import build_model, load_weights
        from actstore.models.zoo import model_config, tokenizer_for, zoo_spec

        torch.manual_seed(0)  # the same random weights in the memory subprocesses
        zs = zoo_spec(spec.removeprefix("zoo:"))
        tok = tokenizer_for(zs)
        model = build_model(model_config(zs, tok), tokenizer=tok)
        load_weights(model, model.state_dict())
        print(f"# {spec}: trained weights not installed; random weights, same architecture", file=sys.stderr)
        return model.to(device).eval()


def build(spec: str, device: str):  # type: ignore[no-untyped-def]
    """(model, task, task params, label) for 'gpt2' or a zoo spec."""
    if spec == "gpt2":
        return gpt2_small_shape(device), "ioi", None, "gpt2-small-shape"
    from actstore.models import ZOO

    task, params = ZOO[spec.removeprefix("zoo:")].tasks[0]
    return zoo_model(spec, device), task, params, spec


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def fresh(store) -> None:  # type: ignore[no-untyped-def]
    """Forget the store's sweeps, so that the next identical call computes instead of hitting the cache."""
    shutil.rmtree(store.path / "interventions", ignore_errors=True)


def timed(fn, device: str, cpu: list[float] | None = None):  # type: ignore[no-untyped-def]
    """(wall seconds, fn()); appends the process CPU seconds (all threads) to `cpu`."""
    sync(device)
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    sync(device)
    if cpu is not None:
        cpu.append(time.process_time() - c)
    return time.perf_counter() - t, out


# --- 1. resid_pre layer,pos: actstore vs transformer_lens.patching -----------------------------------------

class TLInputs:
    """The first n examples of a store as TransformerLens patching takes them."""

    def __init__(self, store, n: int, device: str) -> None:  # type: ignore[no-untyped-def]
        ex = store.examples.sort("example_id").head(n)
        width = store.manifest.width

        def padded(col: str) -> torch.Tensor:
            out = np.zeros((n, width), dtype=np.int64)
            for i, row in enumerate(ex.get_column(col).to_list()):
                out[i, : len(row)] = row
            return torch.from_numpy(out).to(device)

        def stacked(col: str) -> torch.Tensor:
            return torch.from_numpy(np.stack(ex.get_column(col).to_list()).astype(np.int64)).to(device)

        self.clean, self.corrupted = padded("tokens"), padded("corrupted_tokens")
        self.pos, self.answer, self.counter = stacked("answer_positions"), stacked("answer_tokens"), stacked(
            "counter_tokens")
        self.rows = torch.arange(n, device=device)[:, None]

    def metric(self, logits: torch.Tensor) -> torch.Tensor:
        """Mean over examples and answers of (answer - counter) logit at the answer positions."""
        at = logits[self.rows, self.pos]  # [n, answer, vocab]
        return (at.gather(-1, self.answer[..., None]) - at.gather(-1, self.counter[..., None])).mean()


def tl_resid_pre(model, inputs: TLInputs) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """[layer, pos] mean logit diff, transformer_lens.patching as a skilled user runs it."""
    from transformer_lens import patching

    with torch.inference_mode():
        _, cache = model.run_with_cache(inputs.clean, names_filter=lambda name: name.endswith("hook_resid_pre"))
        return patching.get_act_patch_resid_pre(model, inputs.corrupted, cache, inputs.metric)


def store_layer_pos_means(table: pl.DataFrame, n: int, n_layers: int, width: int) -> np.ndarray:
    """[layer, pos] mean logit diff from a resid_pre layer,pos sweep; examples too short for a
    position count with their corrupted (unchanged) value, as in TransformerLens."""
    t = table.filter(pl.col("metric") == "logit_diff")
    base = t.unique(["example_id", "answer_idx"]).get_column("corrupted").cast(pl.Float64)
    count = base.len()
    assert count == n * t.get_column("answer_idx").n_unique(), "every example has the same number of answers"
    delta = t.group_by("layer", "pos").agg((pl.col("value").cast(pl.Float64) - pl.col("corrupted")).sum().alias("d"))
    out = np.full((n_layers, width), base.sum() / count)
    layer, pos = delta.get_column("layer").to_numpy(), delta.get_column("pos").to_numpy()
    out[layer, pos] += delta.get_column("d").to_numpy() / count
    return out


def part_resid_pre(model, store, n: int, repeats: int, device: str) -> dict:  # type: ignore[no-untyped-def]
    inputs = TLInputs(store, n, device)
    tl_times, st_times, tl_cpu, st_cpu = [], [], [], []  # type: ignore[var-annotated]
    for _ in range(repeats):  # interleaved
        t, tl = timed(lambda: tl_resid_pre(model, inputs), device, tl_cpu)
        tl_times.append(t)
        fresh(store)
        t, table = timed(lambda: patch(store, "resid_pre", "layer,pos", examples=n, model=model), device, st_cpu)
        st_times.append(t)
    ours = store_layer_pos_means(table, n, int(model.cfg.n_layers), store.manifest.width)
    max_diff = float(np.abs(ours - tl.double().cpu().numpy()).max())
    return {"n": n, "tl_s": min(tl_times), "store_s": min(st_times), "tl_ratio": min(tl_times) / min(st_times),
            "cpu_ratio": min(tl_cpu) / min(st_cpu), "max_diff": max_diff, "rows": table.height}


# --- 2. z head,pos: attribution patching vs exact patching -------------------------------------------------

def part_atp(model, store, m: int, repeats: int, device: str) -> dict:  # type: ignore[no-untyped-def]
    exact_times, atp_times, exact_cpu, atp_cpu = [], [], [], []  # type: ignore[var-annotated]
    for _ in range(repeats):  # interleaved
        fresh(store)
        t, exact = timed(lambda: patch(store, "z", "head,pos", examples=m, model=model), device, exact_cpu)
        exact_times.append(t)
        fresh(store)
        t, atp = timed(lambda: attribution_patch(store, "z", "head,pos", examples=m, model=model), device, atp_cpu)
        atp_times.append(t)
    agree = agreement(atp, exact, metric="logit_diff")
    n_targets = exact.select("layer", "head", "pos").unique().height
    return {"m": m, "exact_s": min(exact_times), "atp_s": min(atp_times),
            "atp_ratio": min(exact_times) / min(atp_times), "cpu_ratio": min(exact_cpu) / min(atp_cpu),
            "spearman": agree["spearman"],
            "pearson": agree["pearson"], "targets": n_targets}


# --- 3. peak memory against the number of examples, in subprocesses ----------------------------------------

def child(spec: str, store_path: str, n: int, device: str) -> int:
    """Run the exact resid_pre sweep on n examples; print peak RSS (MB) before and after reading its table."""
    import actstore.interventions.sweep as sweep_mod

    model = build(spec, device)[0]
    store = actstore.open_store(store_path)
    fresh(store)
    marks: dict[str, float] = {}
    real_read = sweep_mod.read_sweep

    def read_sweep(*args, **kwargs):  # type: ignore[no-untyped-def]
        marks["rss_compute_mb"] = maxrss_mb()
        return real_read(*args, **kwargs)

    sweep_mod.read_sweep = read_sweep
    rss_model = maxrss_mb()  # building the model (GPT-2: process_weights_) peaks above what a sweep adds
    marks["hwm_reset"] = reset_peak()
    rss_before = current_rss_mb() if marks["hwm_reset"] else rss_model
    table = patch(store, "resid_pre", "layer,pos", examples=n, model=model)
    marks.update(rss_model_mb=rss_model, rss_start_mb=rss_before, rss_end_mb=maxrss_mb(),
                 ru_maxrss_end_mb=ru_maxrss_mb(), table_mb=table.estimated_size() / 2**20, rows=table.height)
    fresh(store)
    print(json.dumps(marks))
    return 0


def maxrss_mb() -> float:
    """This process's peak RSS in MiB: VmHWM (its own address space only), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return ru_maxrss_mb()


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def ru_maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def part_memory(spec: str, store, k: int, device: str) -> dict:  # type: ignore[no-untyped-def]
    out = {"k": k}
    for n, key in ((k, "small"), (4 * k, "big")):
        got = subprocess.run([sys.executable, __file__, "--child", spec, str(store.path), str(n), device,
                              str(torch.get_num_threads())],
                             capture_output=True, text=True, check=False)
        if got.returncode != 0:
            raise RuntimeError(f"memory child ({spec}, {n} examples) failed: {got.stderr.strip()[-2000:]}")
        out[key] = json.loads(got.stdout.strip().splitlines()[-1])
    out["mem_ratio"] = out["big"]["rss_compute_mb"] / out["small"]["rss_compute_mb"]
    out["mem_ratio_end"] = out["big"]["rss_end_mb"] / out["small"]["rss_end_mb"]
    return out


# --- driver --------------------------------------------------------------------------------------------------

def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def report(results: list[dict]) -> None:
    print()
    print("| model | part | examples | baseline | actstore | ratio (wall) | ratio (CPU) | target | check |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "resid" in r:
            a = r["resid"]
            print(f"| {r['label']} | resid_pre layer,pos vs TL | {a['n']} | TL {a['tl_s']:.2f} s "
                  f"| {a['store_s']:.2f} s | **{a['tl_ratio']:.2f}x** | {a['cpu_ratio']:.2f}x | >= {TARGET_TL:g}x "
                  f"| max diff {a['max_diff']:.1e} |")
        if "atp" in r:
            b = r["atp"]
            print(f"| {r['label']} | z head,pos AtP vs exact | {b['m']} | exact {b['exact_s']:.2f} s "
                  f"| AtP {b['atp_s']:.2f} s | **{b['atp_ratio']:.1f}x** | {b['cpu_ratio']:.1f}x | >= {TARGET_ATP:g}x "
                  f"| Spearman {b['spearman']:.3f} ({b['targets']} targets) |")
        if "mem" in r:
            c = r["mem"]
            print(f"| {r['label']} | peak RSS, K vs 4K examples | {c['k']} / {4 * c['k']} | "
                  f"{c['small']['rss_compute_mb']:.0f} MB | {c['big']['rss_compute_mb']:.0f} MB | "
                  f"**{c['mem_ratio']:.3f}** | | <= {TARGET_MEM:g} "
                  f"| with the returned table: {c['mem_ratio_end']:.3f} |")
    print()
    for r in results:
        if "resid" in r:
            a = r["resid"]
            print(f"{r['label']}: resid_pre sweep {a['tl_ratio']:.2f}x TransformerLens ({a['cpu_ratio']:.2f}x in CPU "
                  f"time; target >= {TARGET_TL:g}x): {verdict(a['tl_ratio'] >= TARGET_TL)}; numbers agree within "
                  f"{TOL:g}: {'yes' if a['max_diff'] <= TOL else 'NO'} ({a['max_diff']:.1e})")
        if "atp" in r:
            b = r["atp"]
            print(f"{r['label']}: attribution patching {b['atp_ratio']:.1f}x the exact z head,pos sweep "
                  f"({b['cpu_ratio']:.1f}x in CPU time; target >= {TARGET_ATP:g}x): "
                  f"{verdict(b['atp_ratio'] >= TARGET_ATP)}; Spearman {b['spearman']:.3f}")
        if "mem" in r:
            c = r["mem"]
            print(f"{r['label']}: peak RSS at 4K / K examples {c['mem_ratio']:.3f} "
                  f"(target about 1, <= {TARGET_MEM:g}): {verdict(c['mem_ratio'] <= TARGET_MEM)}; "
                  f"with the returned table {c['mem_ratio_end']:.3f}")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        torch.set_num_threads(int(sys.argv[6]))
        return child(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="gpt2,zoo:addition", help="comma list: gpt2 and/or zoo:NAME")
    p.add_argument("--parts", default="resid,atp,mem", help="comma list: resid, atp, mem (default: all three)")
    p.add_argument("--n", type=int, default=16, help="examples, resid_pre vs TransformerLens, GPT-2 shape (16)")
    p.add_argument("--n-zoo", type=int, default=512, help="examples, resid_pre vs TransformerLens, zoo (512)")
    p.add_argument("--m", type=int, default=2, help="examples, z head,pos exact vs attribution, GPT-2 shape (2)")
    p.add_argument("--m-zoo", type=int, default=256, help="examples, z head,pos exact vs attribution, zoo (256)")
    p.add_argument("--mem-models", default="zoo:addition",
                   help="comma list of models for the memory part (gpt2 adds about 4 minutes; '' skips it)")
    p.add_argument("--mem-n", type=int, default=1024, help="K: memory runs at K and 4K examples, zoo (1024)")
    p.add_argument("--mem-n-gpt2", type=int, default=16,
                   help="K for the GPT-2 shape's memory runs (16: one full batch of the sweep)")
    p.add_argument("--repeats", type=int, default=1, help="interleaved repeats; the best time of each is shown")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run of every part")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dir", default=None, help="where to write the stores (default: a temporary directory)")
    args = p.parse_args()
    if args.quick:
        args.n, args.n_zoo, args.m, args.m_zoo, args.mem_n, args.mem_n_gpt2 = 4, 64, 1, 32, 256, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else (
        "cpu" if args.device == "auto" else args.device)
    wanted = [s for s in args.models.split(",") if s]
    parts = {s for s in args.parts.split(",") if s}
    mem_wanted = {s for s in args.mem_models.split(",") if s} if "mem" in parts else set()
    tmp = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="actstore-ibench-"))
    print(f"# device={device} torch={torch.__version__} cores={os.cpu_count()} threads={torch.get_num_threads()} "
          f"repeats={args.repeats}; times are end to end, best of the repeats; CPU: process CPU seconds")
    results = []
    for spec in wanted:
        try:
            model, task, params, label = build(spec, device)
        except Exception as e:  # noqa: BLE001 - a missing zoo model skips its block
            print(f"{spec:<16} skipped: {type(e).__name__}: {e}")
            continue
        big = spec == "gpt2"
        n, m = (args.n, args.m) if big else (args.n_zoo, args.m_zoo)
        k = args.mem_n_gpt2 if big else args.mem_n
        n_store = max(n if "resid" in parts else 1, m if "atp" in parts else 1, 4 * k if spec in mem_wanted else 1)
        out = tmp / label.replace(":", "_")
        shutil.rmtree(out, ignore_errors=True)
        store = actstore.ingest(task, model, n_store, 0, out, hooks=["resid_pre"], quiet=True, model_spec=label,
                                task_params=params, device=device)
        r: dict = {"label": label, "task": task}
        if "resid" in parts:
            a = r["resid"] = part_resid_pre(model, store, n, args.repeats, device)
            print(f"{label:<16} resid_pre layer,pos n={n}: tl_s={a['tl_s']:.2f} store_s={a['store_s']:.2f} "
                  f"tl_ratio={a['tl_ratio']:.2f} cpu_ratio={a['cpu_ratio']:.2f} max_diff={a['max_diff']:.2g}",
                  flush=True)
        if "atp" in parts:
            b = r["atp"] = part_atp(model, store, m, args.repeats, device)
            print(f"{label:<16} z head,pos m={m} ({b['targets']} targets): exact_s={b['exact_s']:.2f} "
                  f"atp_s={b['atp_s']:.2f} atp_ratio={b['atp_ratio']:.1f} cpu_ratio={b['cpu_ratio']:.1f} "
                  f"spearman={b['spearman']:.3f}", flush=True)
        if spec in mem_wanted:
            del model
            c = r["mem"] = part_memory(spec, store, k, device)
            small, large = c["small"], c["big"]
            print(f"{label:<16} memory resid_pre layer,pos K={k}: rss_model_MB={small['rss_model_mb']:.0f} "
                  f"rss_start_MB={small['rss_start_mb']:.0f} -> {large['rss_start_mb']:.0f} "
                  f"rss_compute_MB={small['rss_compute_mb']:.0f} -> {large['rss_compute_mb']:.0f} at 4K "
                  f"(ratio {c['mem_ratio']:.3f}); rss_end_MB={small['rss_end_mb']:.0f} -> {large['rss_end_mb']:.0f} "
                  f"(ratio {c['mem_ratio_end']:.3f}; returned table {small['table_mb']:.0f} -> "
                  f"{large['table_mb']:.0f} MB); ru_maxrss_end_MB={small['ru_maxrss_end_mb']:.0f} -> "
                  f"{large['ru_maxrss_end_mb']:.0f}", flush=True)
        shutil.rmtree(out, ignore_errors=True)
        results.append(r)
    if not args.dir:
        shutil.rmtree(tmp, ignore_errors=True)
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
