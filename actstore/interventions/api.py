"""The Python API: one function per kind of sweep, each returning the sweep's rows as a Polars frame.

Rows: sweep, kind, hook, layer, head (null for layer hooks), pos / role (null without a position
grain), example_id, answer_idx, metric, value (the metric on the intervened run), clean and
corrupted (the metric on the unpatched clean and corrupted runs), so

    (value - corrupted) / (clean - corrupted)

is the normalised patching score. The same rows are the SQL view `interventions`.

Every function takes `client=` (a `dask.distributed.Client`): the sweep's parts are computed on its
workers, each reloading the model from its spec (so `model` must be a spec, not an object), and
written here; the stored table and files are byte-identical to a run without it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import polars as pl

from actstore.errors import InvalidParameterError
from actstore.interventions.pairs import parse_positions
from actstore.interventions.spec import DEFAULT_BATCH, DEFAULT_PART, DEFAULT_ROWS, METRICS, SweepSpec
from actstore.interventions.sweep import run_sweep
from actstore.store.open import open_store
from actstore.store.reader import Store

Examples = int | tuple[int, int] | None


def patch(store: Store | str | os.PathLike, hook: str, grain: str = "layer", *, pos: str | Sequence[str] | None = None,
          mode: str = "denoise", metrics: Sequence[str] = METRICS, examples: Examples = None, model: Any = None,
          device: str = "auto", batch: int = DEFAULT_BATCH, rows: int = DEFAULT_ROWS, part: int = DEFAULT_PART,
          quiet: bool = True, client: Any = None) -> pl.DataFrame:
    """Exact activation patching of `hook` at `grain` ('layer', 'layer,pos', 'head', 'head,pos').

    mode: 'denoise' runs the corrupted twin with the clean activation patched in; 'noise' the clean
    example with the corrupted one. pos: indices or roles ('S2,END'), for ',pos' grains.
    examples: the first N examples, or a (start, stop) range (default: all committed).
    """
    st = _open(store)
    spec = SweepSpec("patch", hook, grain, *_range(st, examples), pos=parse_positions(pos), mode=mode,
                     metrics=tuple(metrics), batch=batch, rows=rows, part=part)
    return run_sweep(st, spec, model, device, quiet, client)


def ablate(store: Store | str | os.PathLike, hook: str, grain: str = "head", *, method: str = "mean",
           mean_over: str | None = None, pos: str | Sequence[str] | None = None, seed: int = 0,
           metrics: Sequence[str] = METRICS, examples: Examples = None, model: Any = None, device: str = "auto",
           batch: int = DEFAULT_BATCH, rows: int = DEFAULT_ROWS, part: int = DEFAULT_PART,
           quiet: bool = True, client: Any = None) -> pl.DataFrame:
    """Zero, mean or resample ablation of `hook` at `grain` on the clean examples.

    mean_over (method 'mean'): 'all', 'pos' (default), 'role' or 'label:COLUMN'; seed: resampling order.
    """
    st = _open(store)
    over = (mean_over or "pos") if method == "mean" else mean_over
    spec = SweepSpec("ablate", hook, grain, *_range(st, examples), pos=parse_positions(pos), method=method,
                     mean_over=over, seed=seed, metrics=tuple(metrics), batch=batch, rows=rows, part=part)
    return run_sweep(st, spec, model, device, quiet, client)


def attribution_patch(store: Store | str | os.PathLike, hook: str, grain: str = "head,pos", *,
                      pos: str | Sequence[str] | None = None, mode: str = "denoise", metrics: Sequence[str] = METRICS,
                      examples: Examples = None, model: Any = None, device: str = "auto", batch: int = DEFAULT_BATCH,
                      part: int = DEFAULT_PART, quiet: bool = True, client: Any = None) -> pl.DataFrame:
    """Attribution patching (gradient x activation difference) of every target of `grain` at once;
    `value` is the base run's metric plus the first-order estimate of the patch's effect."""
    st = _open(store)
    spec = SweepSpec("atp", hook, grain, *_range(st, examples), pos=parse_positions(pos), mode=mode,
                     metrics=tuple(metrics), batch=batch, part=part)
    return run_sweep(st, spec, model, device, quiet, client)


def path_patch(store: Store | str | os.PathLike, receivers: str | Sequence[str], receiver_input: str = "q", *,
               mode: str = "noise", metrics: Sequence[str] = METRICS, examples: Examples = None, model: Any = None,
               device: str = "auto", batch: int = DEFAULT_BATCH, rows: int = DEFAULT_ROWS, part: int = DEFAULT_PART,
               quiet: bool = True, client: Any = None) -> pl.DataFrame:
    """Path patching from every sender head to `receivers` ('logits', or heads 'LAYER.HEAD,...' whose
    `receiver_input` q, k or v takes the patched path). mode 'noise' (default, as in the IOI work):
    the clean run with the sender's output from the corrupted run."""
    st = _open(store)
    recv = tuple(x.strip() for x in receivers.split(",")) if isinstance(receivers, str) else tuple(receivers)
    spec = SweepSpec("path_patch", "z", "head", *_range(st, examples), mode=mode, metrics=tuple(metrics),
                     receivers=recv, receiver_input=None if recv == ("logits",) else receiver_input,
                     batch=batch, rows=rows, part=part)
    return run_sweep(st, spec, model, device, quiet, client)


def _open(store: Store | str | os.PathLike) -> Store:
    return store if isinstance(store, Store) else open_store(store)


def _range(store: Store, examples: Examples) -> tuple[int, int]:
    n = store.n_examples
    if examples is None:
        return 0, n
    if isinstance(examples, tuple):
        start, stop = examples
        return int(start), int(stop)
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
        raise InvalidParameterError(f"examples must be a positive count or a (start, stop) range, got {examples!r}")
    if examples > n:
        raise InvalidParameterError(f"{examples} examples asked, store {store.path} has {n}")
    return 0, examples
