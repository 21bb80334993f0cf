"""The peers `benchmarks/ingest.py` times actstore's ingest against, on the same model, tokens and hooks.

- notebook loop: `run_with_cache(names_filter=hooks)` per batch, then each hook's float16 array
  saved with `np.save` (one file per hook and batch) or the batch's dict with `torch.save`;
- SAELens: `sae_lens.CacheActivationsRunner` (one hook per run; the `bench` extra installs it);
- raw zarr floor, write only (`raw_zarr_floor`): the arrays actstore stored, written again chunk by
  chunk through plain zarr with the same chunks, shards and codecs, with no actstore code (no commit
  records, digests or fsync) and no model: what writing alone costs;
- raw zarr floor ingest (`floor_ingest`): the whole pipeline a skilled user would write with plain
  zarr: the same model, tokens, batches and hooks, captured by forward hooks straight into
  preallocated per-chunk float16 numpy buffers, each pass stopped after the deepest hook's block
  (`stop_at_layer`; no final LayerNorm or unembedding unless a hook needs them), each full chunk
  written inline with plain zarr into arrays with actstore's chunks, shards and codecs; no outputs,
  meta tables, labels, commit records, digests or fsync, no background thread. Given `make`, it makes
  its examples inside its clock (the tokens must come from somewhere: the same task generator, all n at
  once before the first pass; that call also makes the labels, roles and strings the floor then drops);
  without it the examples come ready-made (the pre-tokenized floor).

Each returns (seconds, bytes written). None of this is actstore API: it is what a user writes today.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from zarr.storage import LocalStore

from actstore.datasets.base import TaskData
from actstore.ingest.forward import attention_mask
from actstore.store.layout import chunk_ranges


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _mask_hooks(model: Any, real: torch.Tensor) -> list[tuple[str, Any]]:
    """Pad-key masking for bidirectional models (TransformerLens ignores attention_mask there)."""
    if model.cfg.attention_dir == "causal":
        return []
    return [(f"blocks.{layer}.attn.hook_attn_scores",
             lambda s, hook, real=real: s.masked_fill(~real[:, None, None, :], float("-inf")))
            for layer in range(model.cfg.n_layers)]


def notebook_loop(model: Any, data: TaskData, hooks: dict[str, str], chunk: int, batch: int, device: torch.device,
                  out: Path, saver: str) -> tuple[float, int]:
    """run_with_cache + np.save / torch.save per batch, same batches as ingest; hooks: {name: 'all'|'answer'}.

    An 'answer' hook keeps only the answer positions ([batch, answer, ...]) as actstore stores it; values
    are cast to float16 on the device first, as actstore does.
    """
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    tokens = torch.from_numpy(data.tokens)
    lengths = torch.from_numpy(data.lengths)
    answer_pos = torch.from_numpy(data.answer_pos)
    names = set(hooks)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t = time.perf_counter()
    with torch.inference_mode():
        k = 0
        for start, stop in chunk_ranges(len(tokens), chunk):
            for b0 in range(start, stop, batch):
                b1 = min(b0 + batch, stop)
                toks = tokens[b0:b1].to(device)
                real = attention_mask(lengths[b0:b1], tokens.shape[1]).to(device)
                with model.hooks(fwd_hooks=_mask_hooks(model, real.bool())):
                    _, cache = model.run_with_cache(toks, attention_mask=real, names_filter=lambda n: n in names)
                rows = torch.arange(b1 - b0, device=device)[:, None]
                arrays = {}
                for name, positions in hooks.items():
                    act = cache[name]
                    if positions == "answer":
                        p = answer_pos[b0:b1].to(device)
                        # [batch, answer, ...]; pattern: [batch, answer, head, key_pos] (query_pos picked)
                        act = act[rows, :, p] if name.endswith(("hook_pattern", "hook_attn_scores")) else act[rows, p]
                    arrays[name] = act.to(torch.float16).cpu()
                if saver == "torch":
                    torch.save(arrays, out / f"batch_{k:06d}.pt")
                else:
                    for name, a in arrays.items():
                        np.save(out / f"{name}.{k:06d}.npy", a.numpy())
                k += 1
    sync()
    return time.perf_counter() - t, dir_bytes(out)


def raw_zarr_floor(src_acts: Path, out: Path, chunk: int) -> tuple[float, int]:
    """Write every array under `src_acts` again through plain zarr, same metadata, `chunk` rows a write.

    The arrays are read into memory first (not timed); only creating and writing is timed.
    """
    src = zarr.open_group(LocalStore(src_acts, read_only=True), mode="r", zarr_format=3)
    arrays = {name: (a, np.asarray(a[:])) for name, a in src.arrays()}
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    dst = zarr.open_group(LocalStore(out), mode="w", zarr_format=3)
    for name, (a, values) in arrays.items():
        new = dst.create_array(name, shape=a.shape, dtype=a.dtype, chunks=a.chunks, shards=a.shards,
                               compressors=a.compressors, filters=a.filters, serializer=a.serializer,
                               fill_value=a.fill_value)
        for start, stop in chunk_ranges(a.shape[0], chunk):
            new[start:stop] = values[start:stop]
    return time.perf_counter() - t, dir_bytes(out)


def _deepest_block(names: list[str]) -> int | None:
    """1 + the deepest block index among hook names, or None when a hook lies after the blocks (ln_final)."""
    layers = []
    for name in names:
        parts = name.split(".")
        if parts[0] != "blocks":
            return None
        layers.append(int(parts[1]))
    return max(layers) + 1


def floor_ingest(model: Any, data: TaskData, src_acts: Path, hooks: dict[str, str], chunk: int, batch: int,
                 device: torch.device, out: Path, make: Callable[[], TaskData] | None = None) -> tuple[float, int]:
    """The raw-zarr floor of an ingest without outputs (see the module docstring); hooks: {name: 'all'|'answer'}.

    The arrays' metadata (shape, chunks, shards, codecs) is read from actstore's store at `src_acts` and
    the arrays are created before the clock starts (actstore's loop_s leaves store creation out too).
    Timed: with `make`, making the examples (`make()`, which must return `data`'s examples: actstore makes
    each chunk's inside loop_s); every forward pass, the capture into the buffers [chunk, ...] per hook and
    every chunk's zarr write. Without `make`, `data` is used as given (made before the clock).
    """
    src = zarr.open_group(LocalStore(src_acts, read_only=True), mode="r", zarr_format=3)
    shutil.rmtree(out, ignore_errors=True)
    dst = zarr.open_group(LocalStore(out), mode="w", zarr_format=3)
    arrays = {}
    for name in hooks:
        a = src[name]
        arrays[name] = dst.create_array(name, shape=a.shape, dtype=a.dtype, chunks=a.chunks, shards=a.shards,
                                        compressors=a.compressors, filters=a.filters, serializer=a.serializer,
                                        fill_value=a.fill_value, config={"write_empty_chunks": True})
    bufs = {name: np.empty((chunk, *a.shape[1:]), dtype=np.float16) for name, a in arrays.items()}
    views = {name: torch.from_numpy(b) for name, b in bufs.items()}  # torch views of the numpy buffers
    rows_at: dict[str, Any] = {}  # the batch's rows [r0, r1) of the chunk and its answer positions

    def capture(act: torch.Tensor, hook: Any) -> None:
        if hooks[hook.name] == "answer":
            p = rows_at["answer"]
            idx = torch.arange(act.shape[0], device=act.device)[:, None]
            act = act[idx, :, p] if hook.name.endswith(("hook_pattern", "hook_attn_scores")) else act[idx, p]
        views[hook.name][rows_at["r0"]:rows_at["r1"]].copy_(act.to(torch.float16))

    stop = _deepest_block(list(hooks))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t = time.perf_counter()
    if make is not None:
        made = make()
        if not np.array_equal(made.tokens, data.tokens):
            raise ValueError("floor_ingest: make() gave other tokens than data")
        data = made
    tokens = torch.from_numpy(data.tokens)
    lengths = torch.from_numpy(data.lengths)
    answer_pos = torch.from_numpy(data.answer_pos)
    with torch.inference_mode():
        for start, stop_ex in chunk_ranges(len(tokens), chunk):
            for b0 in range(start, stop_ex, batch):
                b1 = min(b0 + batch, stop_ex)
                rows_at.update(r0=b0 - start, r1=b1 - start, answer=answer_pos[b0:b1].to(device))
                real = attention_mask(lengths[b0:b1], tokens.shape[1]).to(device)
                fwd = [(name, capture) for name in hooks] + _mask_hooks(model, real.bool())
                with model.hooks(fwd_hooks=fwd):
                    model(tokens[b0:b1].to(device), attention_mask=real, stop_at_layer=stop, return_type=None)
            sync()
            for name, arr in arrays.items():
                arr[start:stop_ex] = bufs[name][: stop_ex - start]
    return time.perf_counter() - t, dir_bytes(out)


def saelens_available() -> str | None:
    """None if sae_lens imports, else why not (the benchmark then skips SAELens with that line)."""
    try:
        import sae_lens  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means the peer is not there
        return f"{type(e).__name__}: {e}"
    return None


def saelens_runner(model: Any, data: TaskData, hook: str, batch: int, device: torch.device, out: Path,
                   buffer_rows: int | None = None, clear: bool = True) -> tuple[float, int, Any, float]:
    """SAELens's CacheActivationsRunner over the same tokens (padded rows as they are), one hook, float16.

    Its module's `load_model` is replaced so that it takes our model object; its buffer is sized to
    the data exactly (`buffer_rows` examples; default all of them) so that no row is repeated.
    clear=False runs into `out` as it is (to see what a second run does).
    Returns (seconds of run(), bytes written, the runner's Dataset, seconds of the user's whole call: the
    dataset of tokens, the runner's construction and run(); the benchmark's own d_in probe left out).
    """
    from datasets import Dataset
    from sae_lens import cache_activations_runner as car
    from sae_lens.config import CacheActivationsRunnerConfig

    logging.getLogger("sae_lens").setLevel(logging.ERROR)
    car.load_model = lambda **kwargs: model  # type: ignore[assignment]
    n, width = data.tokens.shape
    rows = n if buffer_rows is None else buffer_rows
    with torch.inference_mode():
        d_in = int(np.prod(model.run_with_cache(torch.from_numpy(data.tokens[:1]).to(device),
                                                names_filter=[hook])[1][hook].shape[2:]))
    bytes_per_token = d_in * 2
    cfg = CacheActivationsRunnerConfig(
        dataset_path="actstore-bench", model_name="actstore-bench", model_batch_size=batch, hook_name=hook,
        d_in=d_in, training_tokens=n * width, context_size=width, new_cached_activations_path=str(out),
        shuffle=False, dtype="float16", device=str(device), prepend_bos=False, streaming=False,
        buffer_size_gb=(rows * width * bytes_per_token + 0.5) / 1e9)
    if clear:
        shutil.rmtree(out, ignore_errors=True)
    whole = time.perf_counter()
    dataset = Dataset.from_dict({"tokens": data.tokens.tolist()})
    with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bars
        runner = car.CacheActivationsRunner(cfg, override_dataset=dataset)
        t = time.perf_counter()
        result = runner.run()
        seconds = time.perf_counter() - t
    return seconds, dir_bytes(out), result, time.perf_counter() - whole


def saelens_checks(model: Any, data: TaskData, hook: str, batch: int, device: torch.device, tmp: Path) -> list[str]:
    """Check the SAELens shortcomings named in issue 14 on a small run; one line per finding, as observed."""
    out = tmp / "sae-checks"
    lines = []
    _, _, ds = saelens_runner(model, data, hook, batch, device, out)
    n, width = data.tokens.shape
    ids = np.asarray(ds["token_ids"])
    pad = np.arange(width)[None, :] >= data.lengths[:, None]  # [example, pos] True on right padding
    lines.append(f"padding: {ds.num_rows} rows x {ids.shape[1]} positions for {n} examples, {int(pad.any(1).sum())} "
                 f"of them padded: {int(pad.sum())} pad positions stored as rows like real tokens (all token_id == "
                 f"pad id {data.pad_id}: {bool((ids[pad] == data.pad_id).all())}); no length or mask column: "
                 f"columns={ds.column_names}")
    try:
        again = saelens_runner(model, data, hook, batch, device, out, clear=False)[2]
        lines.append(f"non-empty directory: a second run into the same directory ran ({again.num_rows} rows)")
    except Exception as e:  # noqa: BLE001 - the refusal is what is checked
        lines.append(f"non-empty directory / resume: a second run into the same directory raises "
                     f"{type(e).__name__}: {str(e)[:90]}...; the runner has no resume option")
    big = tmp / "sae-checks-big"
    _, _, ds2 = saelens_runner(model, data, hook, batch, device, big, buffer_rows=2 * n)
    toks = np.asarray(ds2["token_ids"])
    uniq = len({r.tobytes() for r in toks})
    lines.append(f"buffer larger than the data (2x): {ds2.num_rows} rows written for {n} examples "
                 f"({uniq} distinct token rows): rows repeated={ds2.num_rows > n}")
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(big, ignore_errors=True)
    return lines

