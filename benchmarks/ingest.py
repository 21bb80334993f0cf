"""Ingest overhead against a bare forward pass, one line per model.

For a GPT-2-small-shaped model with random weights (on the ioi task) and each zoo model (on
its own task), prints: bare forward time over the same batches, ingest time (the forward loop
plus writing, until the last commit; setup is reported apart), their ratio, MB/s written, and
bytes on disk per stored activation value.

    python benchmarks/ingest.py [--n 256] [--zoo-n 16384] [--device auto] [--models gpt2,zoo:addition]

Targets: ratio <= 1.10 on a GPU, <= 1.5 on a CPU.
"""

from __future__ import annotations

import argparse
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
from actstore.store.layout import chunk_ranges  # noqa: E402

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


def bare_forward(model, task: str, n: int, seed: int, chunk: int, batch: int, device: torch.device) -> float:
    """Seconds for model forward over the batches ingest runs (same tokens, mask and batch edges)."""
    data = get_task(task).generate(n, seed, tokenizer=getattr(model, "tokenizer", None))
    tokens = torch.from_numpy(data.tokens)
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
                model(toks, attention_mask=attention_mask(lengths[b0:b1].to(device), tokens.shape[1]))
        sync()
        return time.perf_counter() - t


def ingest_once(label: str, model, task: str, n: int, chunk: int | None, batch: int, device: torch.device,
                inline: bool, out: Path):
    shutil.rmtree(out, ignore_errors=True)
    stats: dict[str, float] = {}
    store = actstore.ingest(task, model, n, 0, out, chunk=chunk, batch=batch, device=str(device), quiet=True,
                            model_spec=label, background=not inline, stats=stats)
    return store, stats


def measure(label: str, model, task: str, n: int, chunk: int | None, batch: int, device: torch.device, repeats: int,
            tmp: Path) -> str:
    """Bare forward, threaded-writer ingest and inline ingest, interleaved `repeats` times; the best of each."""
    out = tmp / label.replace(":", "_")
    bare, thread, inline = [], [], []
    for _ in range(repeats):  # interleaved, so that noise from other work on the machine hits all three
        store, stats = ingest_once(label, model, task, n, chunk, batch, device, False, out)
        thread.append(stats)
        bare.append(bare_forward(model, task, n, 0, store.chunk_size, store.manifest.batch, device))
        inline.append(ingest_once(label, model, task, n, chunk, batch, device, True, out)[1])
    best_bare = min(bare)
    t = min(thread, key=lambda s: s["loop_s"])
    i = min(inline, key=lambda s: s["loop_s"])
    values = sum(int(np.prod(h.shape[1:])) for h in store.manifest.hooks) * store.n_examples
    disk = sum(f.stat().st_size for f in (out / "acts").rglob("*") if f.is_file() and f.name != "zarr.json")
    line = (f"{label:<16} task={task:<11} n={n} chunk={store.chunk_size} batch={store.manifest.batch} "
            f"threads={torch.get_num_threads()} bare_forward_s={best_bare:.2f} "
            f"ingest_s={t['loop_s']:.2f} ratio={t['loop_s'] / best_bare:.2f} "
            f"ingest_inline_s={i['loop_s']:.2f} ratio_inline={i['loop_s'] / best_bare:.2f} "
            f"MB/s={t['bytes_written'] / 1e6 / t['loop_s']:.1f} MB={t['bytes_written'] / 1e6:.1f} "
            f"bytes/value={disk / values:.3f} setup_s={t['setup_s']:.2f} "
            f"decomposition_err={store.manifest.decomposition.get('max_abs_error', float('nan')):.2g}")
    shutil.rmtree(out, ignore_errors=True)
    return line


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
    p.add_argument("--dir", default=None, help="where to write the stores (default: a temporary directory)")
    args = p.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    wanted = args.models.split(",")
    specs = []
    if "gpt2" in wanted:
        specs.append("gpt2")
    zoo = [s for s in ZOO_TASKS if "zoo" in wanted or s in wanted]
    tmp = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="actstore-bench-"))
    print(f"# device={device} torch={torch.__version__} cores={os.cpu_count()}; ingest_s: background writer "
          "thread (the default), ingest_inline_s: chunks written inline")
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
        print(measure(label, model, task, args.n if big else args.zoo_n, None if big else args.zoo_chunk,
                      args.batch if big else 512, device, args.repeats, tmp), flush=True)
    if not args.dir:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
