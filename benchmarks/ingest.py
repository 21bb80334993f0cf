"""Ingest against a bare forward pass and against the peers people use today, one line per model and hook set.

For a GPT-2-small-shaped model with random weights (on the ioi task) and each zoo model (on its
own task), on the same tokens, batches and hooks, interleaved `--repeats` times (best of each):
- bare:      the model's forward pass alone (same tokens, masks, batch edges); for a task with corrupted
             twins also `bare_clean+twin`: the clean and the twin tokens' passes per batch (an ingest with
             outputs runs both: the twins' pass gives the corrupted_* baselines), ratio_vs_clean+twin;
- actstore:  `actstore.ingest` (forward + capture + compress + write + fsync + commit records +
             outputs table, until the last commit; setup reported apart as setup_s), and with
             `outputs=False` (no logits, outputs table or corrupted twins), and for a task with twins with
             outputs but `twins=False` (one forward pass per batch: ratio_no_twins against the one-pass bare);
- notebook:  `run_with_cache(names_filter=...)` + `np.save` per hook and batch (`npsave`) or
             `torch.save` of the batch's dict (`torchsave`), float16, no labels, no resume;
- floor:     `floor_ingest`: the pipeline a skilled user writes with plain zarr (same model, tokens,
             batches and hooks; forward hooks into preallocated per-chunk float16 buffers, each pass
             stopped after the deepest hook's block, each chunk written inline into arrays with
             actstore's chunks, shards and codecs; no outputs, meta tables, records, digests or fsync;
             its examples made inside its clock by the same task generator, all n at once, as the tokens
             must come from somewhere: actstore makes each chunk's inside its loop_s too):
             of_floor = floor_ingest_s / actstore's seconds without outputs, of_floor_outputs = the same
             over actstore's seconds with outputs (>= 0.7 is the goal; > 1 means actstore is faster);
             of_floor_pretok = the same floor with its examples made before its clock (floor_pretok_s:
             what the floor was until 2026-12-06 23:00, a pipeline fed ready-made tokens);
             and `write_floor`: the arrays actstore stored, written again through plain zarr, no model
             (what writing alone costs); write_bound=yes when that write takes longer than the bare forward;
- SAELens:   `CacheActivationsRunner` (sae-lens 6, the `bench` extra: pip install 'actstore[bench]';
             skipped with a line when it is not installed). It caches one hook per run, so it gets
             its own lines, one per hook, for SAELens, actstore and the notebook loop: --sae-hook (default
             the middle block's hook_resid_pre, blocks.6.hook_resid_pre on the GPT-2 shape: issue 14's)
             and always also the last block's hook_resid_post (where both run the whole forward).
             saelens_vs_actstore compares SAELens's run() with actstore's loop_s (the forward and writes),
             each side's best; pairs_median is the median over repeats of each pair's own ratio (the two
             run back to back, SAELens first in every other pair), less moved by the machine's drift;
             whole_saelens_vs_actstore compares each whole call (SAELens: the tokens' Dataset, the
             runner's construction and run(); actstore: ingest() with its setup: probe, weights sha256,
             store creation).
Each line prints seconds, examples/s and MB/s of each and their ratios against actstore.
--sae-checks also runs the SAELens shortcomings checks (padding, non-empty directory, buffer
larger than the data) on the first model and prints what it saw.

    python benchmarks/ingest.py [--n 256] [--zoo-n 16384] [--device auto] [--models gpt2,zoo:addition]
                                [--peers notebook,floor,sae] [--sae-hook NAME] [--sae-checks] [--repeats 2]
                                [--threads N]

Goals (issue 14): with outputs, ingest <= 1.2x the bare forward pass (<= 1.5x on a CPU was the
earlier target); without outputs, at least as fast as SAELens on the same hook; >= 0.7 of the
raw-zarr floor where writing bounds ingest; the fixed setup of a GPT-2-small-shaped store < 1.5 s.
"""

from __future__ import annotations

import argparse
import inspect
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", category=DeprecationWarning)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import actstore  # noqa: E402
from actstore.datasets import get_task  # noqa: E402
from actstore.ingest.forward import attention_mask  # noqa: E402
from actstore.ingest.run import ingest as ingest_fn  # noqa: E402
from actstore.store.layout import chunk_ranges  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import ingest_peers as peers  # noqa: E402

HAS_OUTPUTS_FLAG = "outputs" in inspect.signature(ingest_fn).parameters  # engineer P's outputs=False
HAS_TWINS_FLAG = "twins" in inspect.signature(ingest_fn).parameters

ZOO_TASKS = {"zoo:addition": "addition", "zoo:list_update": "list_update", "zoo:brackets": "brackets", "zoo:lm": "ioi"}


def gpt2_small_shape(device: str):
    """A GPT-2-small-shaped HookedTransformer with random weights, processed like the zoo."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257,
                                  n_ctx=1024, act_fn="gelu_new", normalization_type="LN", seed=0, device=device)
    model = HookedTransformer(cfg)
    model.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    return model


def zoo_model(spec: str):
    """The zoo model, or (while its trained weights are not installed) its architecture with random weights."""
    from actstore.errors import ModelUnavailableError
    from actstore.models import load_model

    try:
        return load_model(spec)
    except ModelUnavailableError:
        from actstore.models.backend import build_model, load_weights
        from actstore.models.zoo import model_config, tokenizer_for, zoo_spec

        zs = zoo_spec(spec.removeprefix("zoo:"))
        tok = tokenizer_for(zs)
        model = build_model(model_config(zs, tok), tokenizer=tok)
        load_weights(model, model.state_dict())
        print(f"# {spec}: trained weights not installed; random weights, same architecture")
        return model


def default_sae_hook(model) -> str:
    """The SAELens line's default hook: the middle block's hook_resid_pre (blocks.6 of 12, issue 14's)."""
    return f"blocks.{model.cfg.n_layers // 2}.hook_resid_pre"


def bare_forward(model, task: str, n: int, seed: int, chunk: int, batch: int, device: torch.device,
                 twin: bool = False) -> float:
    """Seconds for model forward over the batches ingest runs (same tokens, mask and batch edges); with `twin`,
    each batch also runs its corrupted twins' tokens (the second pass an ingest with outputs makes for them)."""
    data = get_task(task).generate(n, seed, tokenizer=getattr(model, "tokenizer", None))
    tokens = torch.from_numpy(data.tokens)
    twins = torch.from_numpy(data.corrupted_tokens) if twin else None
    lengths = torch.from_numpy(data.lengths)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        model(tokens[:batch].to(device), attention_mask=attention_mask(lengths[:batch], tokens.shape[1]).to(device))
        sync()
        t = time.perf_counter()
        for start, stop in chunk_ranges(n, chunk):
            for b0 in range(start, stop, batch):
                b1 = min(b0 + batch, stop)
                toks = tokens[b0:b1].to(device)
                mask = attention_mask(lengths[b0:b1].to(device), tokens.shape[1])
                model(toks, attention_mask=mask)
                if twins is not None:
                    model(twins[b0:b1].to(device), attention_mask=mask)
        sync()
        return time.perf_counter() - t


def ingest_once(label: str, model, task: str, n: int, chunk: int | None, batch: int, device: torch.device,
                out: Path, hooks: list[str] | None = None, outputs: bool = True, twins: bool = True):
    shutil.rmtree(out, ignore_errors=True)
    stats: dict[str, float] = {}
    extra: dict[str, bool] = {} if outputs else {"outputs": False}
    if not twins:
        extra["twins"] = False
    store = actstore.ingest(task, model, n, 0, out, chunk=chunk, batch=batch, device=str(device), quiet=True,
                            model_spec=label, hooks=hooks, stats=stats, **extra)
    return store, stats


def rate(n: int, nbytes: float, seconds: float) -> str:
    return f"{seconds:.2f}s {n / seconds:.0f}ex/s {nbytes / 1e6 / seconds:.0f}MB/s"


def measure(label: str, model, task: str, n: int, chunk: int | None, batch: int, device: torch.device, repeats: int,
            tmp: Path, wanted: set[str], sae_hook: str | None, sae_only: bool = False) -> list[str]:
    """All default hooks (and, with SAELens, one hook), every contender interleaved `repeats` times; `sae_only`:
    the SAELens lines alone."""
    out = tmp / label.replace(":", "_")
    data = get_task(task).generate(n, 0, tokenizer=getattr(model, "tokenizer", None))
    runs: dict[str, list[tuple[float, float]]] = {}  # contender -> [(seconds, bytes)]
    setup, twin = [], []
    sae_skip = peers.saelens_available() if "sae" in wanted else "not asked (--peers)"
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    ones = list(dict.fromkeys([sae_hook or default_sae_hook(model), last]))  # one SAELens line each
    store = None
    if sae_only and sae_skip is not None:
        return [f"{label:<16} task={task:<11} n={n} saelens=skipped ({sae_skip})"]
    for rep in range(repeats):  # interleaved, so that noise from other work on the machine hits all alike
        if sae_only:
            store = _sae_pairs(label, model, task, n, chunk, batch, device, tmp, data, ones, runs, wanted, rep % 2 == 1)
            continue
        store, st = ingest_once(label, model, task, n, chunk, batch, device, out)
        runs.setdefault("actstore", []).append((st["loop_s"], st["bytes_written"]))
        setup.append(st["setup_s"])
        twin.append(st.get("twin_s", 0.0))
        c, b = store.chunk_size, store.manifest.batch
        runs.setdefault("bare", []).append((bare_forward(model, task, n, 0, c, b, device), 0))
        if data.corrupted_tokens is not None:  # what the bare model costs for the same two passes per batch
            runs.setdefault("bare_twin", []).append((bare_forward(model, task, n, 0, c, b, device, twin=True), 0))
        if "floor" in wanted:
            runs.setdefault("floor", []).append(peers.raw_zarr_floor(out / "acts", tmp / "floor", c))
            hooks = {h.name: h.positions for h in store.manifest.hooks}
            make = lambda: get_task(task).generate(n, 0, tokenizer=getattr(model, "tokenizer", None))  # noqa: E731
            runs.setdefault("floor_ingest", []).append(
                peers.floor_ingest(model, data, out / "acts", hooks, c, b, device, tmp / "floor", make=make))
            runs.setdefault("floor_pretok", []).append(
                peers.floor_ingest(model, data, out / "acts", hooks, c, b, device, tmp / "floor"))
        if HAS_OUTPUTS_FLAG:
            st = ingest_once(label, model, task, n, chunk, batch, device, out, outputs=False)[1]
            runs.setdefault("actstore_nooutputs", []).append((st["loop_s"], st["bytes_written"]))
        if HAS_TWINS_FLAG and data.corrupted_tokens is not None:
            st = ingest_once(label, model, task, n, chunk, batch, device, tmp / "notwins", twins=False)[1]
            runs.setdefault("actstore_notwins", []).append((st["loop_s"], st["bytes_written"]))
        if "notebook" in wanted:
            hooks = {h.name: h.positions for h in store.manifest.hooks}
            for saver in ("np", "torch"):
                runs.setdefault(f"{saver}save", []).append(
                    peers.notebook_loop(model, data, hooks, c, b, device, tmp / "nb", saver))
        if sae_skip is None:
            _sae_pairs(label, model, task, n, chunk, batch, device, tmp, data, ones, runs, wanted, rep % 2 == 1)
    assert store is not None
    best = {k: min(v, key=lambda r: r[0]) for k, v in runs.items()}
    head = (f"{label:<16} task={task:<11} n={n} chunk={store.chunk_size} batch={store.manifest.batch} "
            f"threads={torch.get_num_threads()}")
    lines = []
    if not sae_only:
        values = sum(int(np.prod(h.shape[1:])) for h in store.manifest.hooks) * store.n_examples
        disk = sum(f.stat().st_size for f in (out / "acts").rglob("*") if f.is_file() and f.name != "zarr.json")
        lines.append(_default_line(head, best, store, out, values, disk, twin, setup))
    for one in ones:
        if sae_skip is not None:
            lines.append(f"{head} hook={one} saelens=skipped ({sae_skip})")
            continue
        s_a, b_a = best[f"{one}:actstore"]
        s_s, b_s = best[f"{one}:saelens"]
        w_a, w_s = best[f"{one}:actstore_whole"][0], best[f"{one}:saelens_whole"][0]
        pairs = [s[0] / a[0] for a, s in zip(runs[f"{one}:actstore"], runs[f"{one}:saelens"])]
        line = (f"{head} hook={one} actstore{'_no_outputs' if HAS_OUTPUTS_FLAG else '(with outputs)'}="
                f"{rate(n, b_a, s_a)} saelens={rate(n, b_s, s_s)} saelens_vs_actstore={s_s / s_a:.2f} "
                f"pairs_median={np.median(pairs):.2f} pairs={len(pairs)} "
                f"whole_actstore_s={w_a:.2f} whole_saelens_s={w_s:.2f} whole_saelens_vs_actstore={w_s / w_a:.2f}")
        if f"{one}:npsave" in best:
            s_, b_ = best[f"{one}:npsave"]
            line += f" npsave={rate(n, b_, s_)} npsave_vs_actstore={s_ / s_a:.2f}"
        lines.append(line)
    for p in (out, tmp / "notwins", tmp / "one", tmp / "floor", tmp / "nb", tmp / "sae"):
        shutil.rmtree(p, ignore_errors=True)
    return lines



def _default_line(head: str, best: dict, store, out: Path, values: int, disk: int, twin: list[float],
                  setup: list[float]) -> str:
    """The line of the default-hooks ingest against the bare forward and the peers."""
    ours_s, ours_b = best["actstore"]
    bare_s = best["bare"][0]
    n = store.n_examples
    line = (f"{head} hooks=default bare_forward_s={bare_s:.2f} ingest={rate(n, ours_b, ours_s)} "
            f"ratio={ours_s / bare_s:.2f} twin_s={min(twin):.2f} setup_s={min(setup):.2f} "
            + (f"bare_clean+twin_s={best['bare_twin'][0]:.2f} ratio_vs_clean+twin={ours_s / best['bare_twin'][0]:.2f} "
               if "bare_twin" in best else "") +
            f"bytes/value={disk / values:.3f} "
            f"decomposition_err={store.manifest.decomposition.get('max_abs_error', float('nan')):.2g}")
    if "actstore_nooutputs" in best:
        s_, b_ = best["actstore_nooutputs"]
        line += f" ingest_no_outputs={rate(n, b_, s_)} ratio_no_outputs={s_ / bare_s:.2f}"
    else:
        line += " ingest_no_outputs=skipped(ingest takes no outputs= yet)"
    if "actstore_notwins" in best:
        s_, b_ = best["actstore_notwins"]
        line += f" ingest_no_twins={rate(n, b_, s_)} ratio_no_twins={s_ / bare_s:.2f}"
    if "floor" in best:
        s_, b_ = best["floor"]
        f_s, p_s = best["floor_ingest"][0], best["floor_pretok"][0]
        line += f" floor_ingest_s={f_s:.2f} floor_pretok_s={p_s:.2f}"
        if "actstore_nooutputs" in best:
            line += (f" of_floor={f_s / best['actstore_nooutputs'][0]:.2f}"
                     f" of_floor_pretok={p_s / best['actstore_nooutputs'][0]:.2f}")
        line += (f" of_floor_outputs={f_s / ours_s:.2f} write_floor={rate(n, b_, s_)} "
                 f"write_bound={'yes' if s_ > bare_s else 'no'}")
    for k in ("npsave", "torchsave"):
        if k in best:
            s_, b_ = best[k]
            line += f" {k}={rate(n, b_, s_)} {k}_vs_ingest={s_ / ours_s:.2f}"
    return line


def _sae_pairs(label: str, model, task: str, n: int, chunk: int | None, batch: int, device: torch.device, tmp: Path,
               data, ones: list[str], runs: dict, wanted: set[str], sae_first: bool = False):
    """One ingest of each one-hook line and SAELens's runner on the same hook, a pair; `sae_first` runs SAELens
    first (the caller alternates, so that neither side always runs right after the other's work); returns the
    store."""
    store = None
    sae_batch = min(batch, chunk or batch)  # the batches ingest runs (its batch is at most its chunk)
    for one in ones:
        if sae_first:
            _saelens_run(model, data, one, sae_batch, device, tmp, runs)
        store, st = ingest_once(label, model, task, n, chunk, batch, device, tmp / "one", hooks=[one],
                                outputs=not HAS_OUTPUTS_FLAG)  # not `out`: bytes/value reads the default store
        runs.setdefault(f"{one}:actstore", []).append((st["loop_s"], st["bytes_written"]))
        runs.setdefault(f"{one}:actstore_whole", []).append((st["setup_s"] + st["loop_s"], st["bytes_written"]))
        if not sae_first:
            _saelens_run(model, data, one, sae_batch, device, tmp, runs)
        c, b = store.chunk_size, store.manifest.batch
        if b != sae_batch:
            raise RuntimeError(f"ingest ran batches of {b}, SAELens of {sae_batch}")
        if "notebook" in wanted:
            runs.setdefault(f"{one}:npsave", []).append(
                peers.notebook_loop(model, data, {one: "all"}, c, b, device, tmp / "nb", "np"))
    return store


def _saelens_run(model, data, hook: str, batch: int, device: torch.device, tmp: Path, runs: dict) -> None:
    sae = peers.saelens_runner(model, data, hook, batch, device, tmp / "sae")
    runs.setdefault(f"{hook}:saelens", []).append(sae[:2])
    runs.setdefault(f"{hook}:saelens_whole", []).append((sae[3], sae[1]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=256, help="examples for the GPT-2-small shape (default 256)")
    p.add_argument("--zoo-n", type=int, default=16384, help="examples for each zoo model (default 16384)")
    p.add_argument("--zoo-chunk", type=int, default=2048,
                   help="chunk for the zoo models (default 2048: several chunks, so writing can overlap compute; "
                        "their auto chunk would hold 8192 examples)")
    p.add_argument("--batch", type=int, default=32, help="batch for the GPT-2-small shape (zoo models: 512)")
    p.add_argument("--device", default="auto")
    p.add_argument("--models", default="gpt2,zoo", help="comma list: gpt2, zoo (every zoo model) or zoo:NAME")
    p.add_argument("--repeats", type=int, default=2, help="interleaved repeats; the best time of each is shown")
    p.add_argument("--peers", default="notebook,floor,sae",
                   help="comma list of peers to run beside actstore: notebook, floor, sae (default all)")
    p.add_argument("--sae-hook", default=None,
                   help="the hook of the first SAELens line (default: the middle block's hook_resid_pre, "
                        "blocks.6.hook_resid_pre on the GPT-2 shape); the last block's hook_resid_post always follows")
    p.add_argument("--sae-only", action="store_true",
                   help="only the SAELens lines (no default-hooks ingest, bare forward, floor or notebook line)")
    p.add_argument("--sae-checks", action="store_true",
                   help="check SAELens's padding, non-empty-directory and repeated-rows behaviour (first model)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for every contender (default torch's own; 1 is less hurt by a loaded machine)")
    p.add_argument("--dir", default=None, help="where to write the stores (default: a temporary directory)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    wanted = args.models.split(",")
    specs = []
    if "gpt2" in wanted:
        specs.append("gpt2")
    zoo = [s for s in ZOO_TASKS if "zoo" in wanted or s in wanted]
    tmp = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="actstore-bench-"))
    # a weight cache of this run's own unless one is named: a run of another actstore tree (PYTHONPATH=...) between
    # two of this one must not move the stamps this tree's entry was recorded with (trees before e32d396 record 4
    # fields and re-hash 5-field ones); each model's first ingest builds its entry (the best of --repeats skips it)
    os.environ.setdefault("ACTSTORE_WEIGHT_CACHE", str(tmp / "weights"))
    wanted_peers = set(args.peers.split(",")) if args.peers else set()
    print(f"# device={device} torch={torch.__version__} cores={os.cpu_count()} threads={torch.get_num_threads()}; "
          f"each contender: seconds, examples/s, MB/s written; best of {args.repeats} interleaved")
    checked = not args.sae_checks
    for spec in specs + zoo:
        try:
            if spec == "gpt2":
                model, task, label = gpt2_small_shape(str(device)), "ioi", "gpt2-small-shape"
            else:
                model, task, label = zoo_model(spec), ZOO_TASKS[spec], spec
        except Exception as e:  # noqa: BLE001 - a missing zoo model skips its line
            print(f"{spec:<16} skipped: {type(e).__name__}: {e}")
            continue
        model.to(device)
        big = spec == "gpt2"
        n = args.n if big else args.zoo_n
        for line in measure(label, model, task, n, None if big else args.zoo_chunk, args.batch if big else 512,
                            device, args.repeats, tmp, wanted_peers, args.sae_hook,
                            args.sae_only):
            print(line, flush=True)
        if not checked:
            checked = True
            why = peers.saelens_available()
            if why is not None:
                print(f"# saelens checks skipped: {why}")
            else:
                data = get_task(task).generate(min(n, 256), 0, tokenizer=getattr(model, "tokenizer", None))
                hook = args.sae_hook or default_sae_hook(model)
                for line in peers.saelens_checks(model, data, hook, 32, device, tmp):
                    print(f"# saelens {label}: {line}", flush=True)
    if not args.dir:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
