"""`ingest(...)`: run a model over a task dataset and stream the chosen activations into a store.

Order of work, so that bad input leaves nothing behind and a crash loses at most a chunk:
1. check the parameters and the output path; load the model; make the first batch's examples
   (a task makes any range of its examples alone, the same whatever n: actstore.datasets.base,
   so each chunk's examples are made when the loop reaches it and memory stays flat in n);
   resolve the hooks;
2. learn the hook shapes and build the manifest: from the model's config (probe.config_shapes) for a new local
   store whose decomposition check is skipped (it needs no forward pass then; the first batch of step 5
   checks every shape, and a difference goes back here to the probe with nothing written), else by
   probing the first batch (hook shapes, decomposition check);
3. refuse a store of another run (or remove it with overwrite); create the store if absent: a new local
   store on a helper thread while step 5 runs its first chunk (actstore.ingest.creation: renamed into
   place only after the first batch's shape check, and the loop's writer made from it before the first
   chunk is written); grow a store of the same run with a smaller n (actstore.ingest.grow);
4. write every chunk (of this shard: actstore.ingest.shards) that has no commit record:
   batches are aligned inside chunks, so a rerun computes every chunk from the same batches and
   writes the same bytes;
5. chunk k is filled batch by batch in place (its examples, and their examples/tokens meta parts, made on
   a helper thread while chunk k-1 ran; chunk 0's first batch runs from the examples of step 1 while that
   thread makes chunk 0), then handed to the background writer, which compresses and
   writes it while the model computes chunk k+1; its fsync, digests and commit record follow on the
   writer's committer thread (store/writer.py) while the writer encodes chunk k+1. For a task with
   corrupted twins, each batch runs a second forward pass of the twins' tokens (same attention
   mask, nothing captured) for the twin's baseline outputs (`meta/outputs` corrupted_* columns).
   The `top_k` most likely tokens at each answer go to `meta/topk` from the same answer logits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import queue
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import polars as pl
import torch
from tqdm.auto import tqdm

from actstore import __version__
from actstore.datasets import get_task
from actstore.datasets.base import TaskData, check_n_seed, range_source
from actstore.errors import (IncompleteStoreWarning, InvalidParameterError, StoreCorruptError, StoreExistsError,
                             StoreFormatError, StoreWriteError)
from actstore.ingest import model_info
from actstore.ingest.background import BackgroundWriter
from actstore.ingest.creation import Creation, CreationFailed, clear_for_new, looks_new, remove_leftovers
from actstore.ingest.grow import finish_growth, grow_store, growth_differences, read_intent
from actstore.ingest.shards import (all_committed, discard_chunks, parse_shard, shard_chunks, store_digests,
                                    uncommitted, writer_locks)
from actstore.ingest.forward import (Sink, answer_outputs, answer_pass, answer_topk, attention_mask,
                                     bidirectional_mask_hooks, capture_hooks, run_hooks)
from actstore.ingest.hooks import answer_dims, hook_dims, pos_axis, resolve_hooks
from actstore.ingest.meta import (TWIN_OUTPUTS, TokenNames, examples_frame, outputs_frame, token_names, tokens_frame,
                                  topk_frame)
from actstore.ingest.probe import ShapeCheck, ShapeMismatch, config_shapes, probe_batch, skip_reason
from actstore.models.allocator import forward_memory
from actstore.store.arch import Arch
from actstore.store.commits import commit_path, committed_prefix
from actstore.store.layout import DEFAULT_CODEC, META_TABLES, chunk_ranges, meta_tables, part_path
from actstore.store.parts import part_bytes, part_schema
from actstore.store.fs import RemotePath, StorePath
from actstore.store.manifest import DTYPES, HookInfo, Manifest
from actstore.store.open import is_store, open_store, read_manifest, utf8_path
from actstore.store.reader import Store
from actstore.store.writer import ChunkWriter, create_store, remove_store
from actstore.store.weight_cache import cache_dir, check_ahead

CHUNK_TARGET_BYTES = 64 << 20  # auto chunk: the largest power of two of examples under this size
MAX_AUTO_CHUNK = 8192
# float32 weights from which the cache entry is checked beside the probe: a smaller model's check takes
# milliseconds and, beside a probe of milliseconds, slowed it more than it saved (zoo probe 0.01 -> 0.05 s)
CHECK_AHEAD_BYTES = 64 << 20
DEFAULT_BATCH = 64
DEFAULT_TOP_K = 10  # tokens kept per answer in meta/topk unless asked (at most the output vocabulary)
WRITE_QUEUE_DEPTH = 1


@forward_memory()
def ingest(
    task: str,
    model: Any,
    n: int,
    seed: int,
    out: str | os.PathLike | RemotePath,
    *,
    hooks: Sequence[str] | None = None,
    positions: str = "all",
    dtype: str = "float16",
    chunk: int | None = None,
    batch: int = DEFAULT_BATCH,
    device: str = "auto",
    task_params: dict[str, Any] | None = None,
    model_spec: str | None = None,
    processing: dict[str, Any] | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    background: bool = True,
    stats: dict[str, float] | None = None,
    top_k: int | None = None,
    storage_options: dict[str, Any] | None = None,
    shard: str | tuple[int, int] | None = None,
    outputs: bool = True,
    twins: bool = True,
) -> Store:
    """Ingest `n` examples of `task` (seed `seed`) through `model` into the store at `out`; returns it open.

    model:      a model spec ('zoo:addition', ...) or a HookedTransformer (then `model_spec` labels it
                and `processing` says how its weights were processed; it runs where it is unless
                `device` names another device)
    hooks:      TransformerLens hook names, short forms ('z', 'pattern'), 'default', optionally with a
                ':all' / ':answer' suffix (see actstore.ingest.hooks); default: the default set
    positions:  'all' or 'answer': the positions stored for hooks without a suffix
    dtype:      stored dtype of activations, independent of the model's dtype
    chunk:      examples per chunk (default: the largest power of two under 64 MiB of activations)
    batch:      examples per forward pass (capped at chunk; batches never straddle chunks)
    device:     'auto' (CUDA when available; a model object stays on its device), 'cpu' or 'cuda'
    overwrite:  replace a store of a different run at `out` instead of refusing
    background: write chunks on a background thread (False: write inline, for comparison)
    stats:      if given, filled with timings: setup_s (what the call spends beyond the loop: model, data,
                probe, store creation, and the first chunk's wait for a store created beside it), of which
                model_s (loading or placing the model), probe_s (hook shapes and the decomposition check),
                digest_s (the wait for the weights' sha256 after the probe, beside which it runs; for a
                store created beside the loop: the creation thread's wait for it), create_s (creating the
                store, weights included; beside the loop for a new local store, so not part of setup_s;
                create_cpu_s: the CPU time of that creation's own thread, 0 where it is not made beside the loop),
                create_wait_s (the first chunk's wait for that creation) and the rest;
                loop_s (forward + writing, until the last commit, less create_wait_s), twin_s (the part of
                loop_s spent in the corrupted twins' forward passes), examples and bytes_written by this call
    top_k:      the most likely output tokens kept per answer in meta/topk (token, logit, prob);
                0 keeps none; default 10, or the whole output vocabulary if it is smaller
    outputs:    False keeps no meta/outputs, meta/topk or twin baselines, so each forward pass stops right
                after the deepest stored hook (no later blocks, no unembedding); queries that read outputs
                see them empty (docs/store.md, "Ingest without outputs")
    twins:      False skips the corrupted twins' forward pass of a task with twins (one pass per batch instead of
                two); meta/outputs' corrupted_* baseline columns are then null. Only with outputs (without
                them no twin pass runs anyway); recorded in the manifest, so a resume must match it
    storage_options: options of the fsspec filesystem when `out` is a URL (s3://bucket/store, ...)
    shard:      'i/N' or (i, N): write only the chunks k with k % N == i (see actstore.ingest.shards); the
                shards of one store run together, in any order, and their store is byte-identical to an
                unsharded ingest's. Returns the store open (unfinished until every shard is done)
    """
    t0 = time.perf_counter()
    check_n_seed(n, seed)
    if not isinstance(outputs, bool):
        raise InvalidParameterError(f"outputs must be True or False, got {outputs!r}")
    if not isinstance(twins, bool):
        raise InvalidParameterError(f"twins must be True or False, got {twins!r}")
    shard = parse_shard(shard)
    if shard != (0, 1) and overwrite:
        raise InvalidParameterError("--overwrite cannot be used with --shard (one shard would delete the others' "
                                    "chunks); remove the store first, then start the shards")
    if dtype not in DTYPES:
        raise InvalidParameterError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    for label, v in (("chunk", chunk), ("batch", batch)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
            raise InvalidParameterError(f"{label} must be a positive integer, got {v!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0):
        raise InvalidParameterError(f"top_k must be a non-negative integer, got {top_k!r}")
    out = utf8_path(out, "--out", storage_options)
    _check_writable(out)
    dev = _device(device)

    task_obj = get_task(task, **(task_params or {}))  # a bad task name or parameter fails before the model loads
    net, spec = model_info.load(model, model_spec)
    net.eval()
    if device == "auto" and not isinstance(model, str):
        dev = next(net.parameters()).device  # a model object given: run it where it is
    elif next(net.parameters()).device != dev:
        net.to(dev)
    t_model = time.perf_counter()
    # hashed on another thread while the first batch is made and probed; for a new local store of a model with
    # CHECK_AHEAD_BYTES of weights or more its weight cache entry is checked there next (weight_cache.check_ahead),
    # so that creating the store only links the entry's files
    ahead = (not isinstance(out, RemotePath) and (overwrite or not is_store(out))
             and sum(p.numel() for p in net.parameters()) * 4 >= CHECK_AHEAD_BYTES)
    beside = ahead or not model_info.has_weights_digest(net)  # work on the other core while the probe runs
    digest_of = model_info.weights_digest_later(net, then=_check_cache_ahead if ahead else None)
    tokenizer = getattr(net, "tokenizer", None)
    probe_n = min(batch, n, chunk or batch)
    source = range_source(task_obj, n, seed, tokenizer)  # a block task makes each chunk when the loop reaches it
    data = source(0, probe_n)  # the first batch

    _check_fits(data, net.cfg)
    top_k = _top_k(top_k, int(net.cfg.d_vocab_out), outputs)
    choices = resolve_hooks(hooks, list(net.hook_dict), positions)

    t = _batch_tensors(data, 0, probe_n, dev)
    hook_names = [c.name for c in choices]
    # a new local store is created on a helper thread while the first chunk runs (Creation); its hook shapes
    # then come from the config where the probe would only learn shapes, checked on the first batch
    derive = background and shard == (0, 1) and looks_new(out, overwrite)
    while True:
        t_probe = time.perf_counter()
        reason = skip_reason(net, hook_names)
        derived = config_shapes(net, hook_names, int(data.tokens.shape[1])) if derive and reason is not None else None
        if derived is not None:
            shapes, decomposition = derived, {"status": "skipped", "reason": reason}
        else:
            shapes, decomposition = probe_batch(net, t.tokens, t.lengths, t.answer_pos, t.answer_tokens, hook_names,
                                                dtype, one_thread=beside)
        t_probe = time.perf_counter() - t_probe
        try:
            return _write_store(out, net, spec, processing, data, source, task_obj, choices, shapes, decomposition,
                                derived is not None, digest_of, n=n, seed=seed, hooks=hooks, dtype=dtype, chunk=chunk,
                                batch=batch, dev=dev, overwrite=overwrite, quiet=quiet, background=background,
                                stats=stats, top_k=top_k, shard=shard, outputs=outputs, twins=twins, derive=derive,
                                times={"t0": t0, "model_s": t_model - t0, "probe_s": t_probe})
        except ShapeMismatch:
            derive = False  # a shape from the config was wrong, or the path no longer new: nothing was written


def _write_store(out: StorePath, net: Any, spec: str, processing: dict[str, Any] | None, data: TaskData,
                 source: Callable[[int, int], TaskData], task_obj: Any, choices: list,
                 shapes: dict[str, tuple[int, ...]], decomposition: dict[str, Any], derived: bool,
                 digest_of: Callable[[], str], *, n: int, seed: int,
                 hooks: Sequence[str] | None, dtype: str, chunk: int | None, batch: int, dev: torch.device,
                 overwrite: bool, quiet: bool, background: bool, stats: dict[str, float] | None, top_k: int,
                 shard: tuple[int, int], outputs: bool, twins: bool, derive: bool, times: dict[str, float]) -> Store:
    """Steps 2-5 of ingest (module docstring) once the hook shapes are known (`derived`: from the config, checked
    on the first batch: ShapeMismatch, with nothing written, if they differ). `derive`: a new store is created on a
    helper thread (the weights digest is waited for there); ShapeMismatch if the path is found not new."""
    infos = _hook_infos(choices, shapes, data, n, dtype)
    if not infos:
        raise InvalidParameterError(f"none of the hooks {', '.join(hooks or ['default'])} runs in this model")
    t_digest = time.perf_counter()
    digest = "" if derive else digest_of()  # a new store's creation waits for it on its thread
    t_digest = time.perf_counter() - t_digest
    auto_chunk = chunk is None
    chunk = _auto_chunk(infos, n) if chunk is None else min(int(chunk), n)  # a chunk never exceeds the dataset
    manifest = Manifest(
        model_spec=spec, model_config=model_info.config_dict(net),
        processing={} if derive else model_info.processing_dict(net, processing),  # derive: filled by Creation
        model_dtype=str(net.cfg.dtype).removeprefix("torch."), task=data.task, task_params=dict(data.params),
        seed=int(seed), n=int(n), n_answers=data.n_answers, width=int(data.tokens.shape[1]), hooks=tuple(infos),
        dtype=dtype, chunk=int(chunk), batch=int(min(batch, chunk)), codec=dict(DEFAULT_CODEC),
        decomposition=decomposition, package_version=__version__, weights_sha256=digest,
        top_k=top_k, outputs=outputs, twins=twins or not outputs,  # no outputs: no twin pass to skip
    )
    manifest.validate()
    if decomposition.get("status") == "failed" and not quiet:
        print(f"actstore ingest: warning: components do not sum to the logits (max error "
              f"{decomposition['max_abs_error']:.3g}); direct attributions will not be exact", file=sys.stderr)

    _check_chunk_size(manifest)
    buffers = _alloc_buffers(manifest, dev.type == "cuda")  # before anything is written: a chunk too big fails here
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreWriteError(f"cannot create the directory of --out {str(out)!r}: {e.strerror or e}") from None
    # before the path is inspected: never replace or create a store another ingest (or the same shard) holds
    with writer_locks(out, shard) as creating:
        t_create = time.perf_counter()
        creation = None
        if derive:
            if isinstance(out, RemotePath) or not clear_for_new(out, overwrite):
                raise ShapeMismatch("the path holds a store now")  # made meanwhile: probe, then resume or refuse
            creation = Creation(out, manifest, functools.partial(_complete, digest_of, net, processing),
                                lambda: model_info.params_dict(net))
        else:
            with creating():
                manifest = _prepare_out(out, manifest, overwrite, lambda: model_info.params_dict(net), quiet,
                                        auto_chunk, exclusive=shard == (0, 1))
        t1 = time.perf_counter()
        t_create = t1 - t_create
        names = token_names(getattr(task_obj, "vocab", None), getattr(net, "tokenizer", None),
                            data.extra.get("classes"), int(net.cfg.d_vocab), int(net.cfg.d_vocab_out))
        loop = _Loop(out, manifest, net, source, data, dev, buffers, quiet=quiet, background=background,
                     names=names, shard=shard, finishing=creating, creation=creation,
                     check=ShapeCheck(shapes) if derived else None)
        done = loop.run()
    if stats is not None:
        wait = loop.create_wait_s
        stats.update(setup_s=t1 - times["t0"] + wait, model_s=times["model_s"], probe_s=times["probe_s"],
                     digest_s=t_digest if creation is None else creation.digest_s,
                     create_s=t_create if creation is None else creation.create_s, create_wait_s=wait,
                     create_cpu_s=0.0 if creation is None else creation.create_cpu_s,
                     loop_s=time.perf_counter() - t1 - wait, twin_s=loop.twin_s, examples=float(done),
                     bytes_written=float(loop.bytes_written))
    if shard != (0, 1):  # the other shards may still be writing: no warning that the store is unfinished
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", IncompleteStoreWarning)
            return open_store(out)
    return open_store(out)


@dataclass
class _BatchTensors:
    tokens: torch.Tensor  # [batch, pos]
    lengths: torch.Tensor  # [batch]
    answer_pos: torch.Tensor  # [batch, answer]
    answer_tokens: torch.Tensor  # [batch, answer]
    counter_tokens: torch.Tensor | None  # [batch, answer]
    corrupted_tokens: torch.Tensor | None = None  # [batch, pos]


def _batch_tensors(data: TaskData, b0: int, b1: int, dev: torch.device) -> _BatchTensors:
    def put(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a[b0:b1], dtype=np.int64)).to(dev, non_blocking=True)

    return _BatchTensors(put(data.tokens), put(data.lengths), put(data.answer_pos), put(data.answer_tokens),
                         None if data.counter_tokens is None else put(data.counter_tokens),
                         None if data.corrupted_tokens is None else put(data.corrupted_tokens))


class _Loop:
    """The forward loop of one ingest (writing the chunks of its shard that have no commit record)."""

    def __init__(self, out: StorePath, manifest: Manifest, net: Any, source: Callable[[int, int], TaskData],
                 probe: TaskData, dev: torch.device, buffers: list[dict[str, torch.Tensor]], quiet: bool,
                 background: bool, names: TokenNames, shard: tuple[int, int] = (0, 1),
                 finishing: Callable[[], Any] = contextlib.nullcontext, creation: Creation | None = None,
                 check: ShapeCheck | None = None) -> None:
        self.out, self.manifest, self.net, self.dev = out, manifest, net, dev
        self.source = source  # examples [start, stop), made as each chunk is reached
        self.data = probe.slice(0, 1)  # one example, for the meta columns a chunk makes
        # the first batch's examples, made before the loop: its pass runs while chunk 0 (whole) is made
        self.head = probe if len(probe.tokens) == min(manifest.batch, manifest.chunk) else None
        self.shard, self.finishing = shard, finishing
        self.names = names  # token strings of meta/topk
        self.quiet, self.background = quiet, background
        self.ranges = chunk_ranges(manifest.n, manifest.chunk)
        # chunk k commits while k+1 is written; a store being created (`creation`) gets its writer when its first
        # chunk is ready to write (_chunk_writer)
        self.creation, self.check = creation, check
        self.writer = ChunkWriter(out, manifest, defer_commit=True) if creation is None else None
        self.create_wait_s = 0.0  # seconds the first chunk's write waited for the store's creation
        self.pinned = dev.type == "cuda"
        self.free: queue.Queue = queue.Queue()
        for bufs in buffers:
            self.free.put(bufs)
        self.bytes_written = 0
        self.twin_s = 0.0  # seconds in the twins' forward passes
        # run the twins' pass (see _match_committed_columns); a store without outputs needs no twin baselines
        self.twin = probe.corrupted_tokens is not None and manifest.outputs and manifest.twins
        self.columns: dict[str, list[str]] | None = None  # the meta columns to write, when not all

    def run(self) -> int:
        """Compute and write every uncommitted chunk (the caller holds the store's lock); returns the
        number of examples written. A failed write leaves the committed chunks as they were."""
        n_chunks = len(self.ranges)
        if self.creation is not None:
            todo = shard_chunks(n_chunks, self.shard)  # a store being created has no chunk yet
        else:
            digests = store_digests(self.out)
            todo = uncommitted(self.out, self.manifest, shard_chunks(n_chunks, self.shard), digests)
            self._match_committed_columns(committed_prefix(self.out, n_chunks))
        try:
            if self.creation is None:
                discard_chunks(self.out, self.manifest, todo)
            done = self._run(todo)
            writer = self._chunk_writer()
            writer.flush()  # the last chunk's commit
            with self.finishing():  # shards finishing together write the completion record one at a time
                if all_committed(self.out, n_chunks):
                    writer.finish()
            return done
        except CreationFailed as e:  # no store was made: its own one line, not a failed write's
            raise e.error from None
        except OSError as e:  # disk full, a filesystem gone read-only: the committed chunks stay valid
            self._close()  # no commit in flight while the uncommitted chunks are removed
            with contextlib.suppress(OSError):
                discard_chunks(self.out, self.manifest, [k for k in todo if not commit_path(self.out, k).exists()])
            raise StoreWriteError(f"writing store {str(self.out)!r} failed: {e.strerror or e}; the chunks "
                                  "committed so far are kept, rerun the same ingest to resume") from None
        finally:
            self._close()

    def _close(self) -> None:
        """Nothing left running: the store's creation settled (nothing published that the first batch did not
        allow), the writer's commits done."""
        if self.creation is not None:
            self.creation.settle()
        if self.writer is not None:
            self.writer.close()

    def _chunk_writer(self) -> ChunkWriter:
        """The ChunkWriter, made once the store being created is there (the wait is create_wait_s)."""
        if self.writer is None:
            if self.creation is None:
                raise RuntimeError("no writer and no store being created")
            started = time.perf_counter()
            manifest = self.creation.result()
            self.writer = ChunkWriter(self.out, manifest, defer_commit=True)
            self.create_wait_s = time.perf_counter() - started
        return self.writer

    def _match_committed_columns(self, first: int) -> None:
        """When resuming a store whose committed parts an earlier actstore wrote with fewer meta columns (before
        the corrupted twins), write the remaining parts with those columns only (and skip the twin pass if its
        columns are not kept), so every part of a table has the same columns; StoreExistsError if the committed
        parts have columns this ingest does not make."""
        if first == 0:
            return
        tables = [t for t in META_TABLES if t in meta_tables(self.manifest)]  # outputs: where the store keeps them
        stored = {t: list(part_schema(part_path(self.out, t, 0))) for t in tables}
        one = self.data.slice(0, 1)
        fake = {k: np.zeros((1, one.n_answers)) for k in ("correct_logit", "counter_logit", "logit_diff", "prob",
                                                          "rank", "loss", "correct")}
        fake.update({f"corrupted_{k}": np.zeros((1, one.n_answers)) for k in TWIN_OUTPUTS})
        made = {"examples": examples_frame(one, 0).columns, "tokens": tokens_frame(one, 0).columns,
                "outputs": outputs_frame(one, 0, fake).columns}
        made = {t: made[t] for t in tables}
        for t in tables:
            lacking = [c for c in stored[t] if c not in made[t]]
            if lacking:
                raise StoreExistsError(
                    f"{self.out} holds chunks whose meta/{t} has columns this ingest does not make "
                    f"({', '.join(lacking)}): another actstore version wrote them; pass --overwrite to rewrite it")
        if stored != made:
            self.columns = stored
            self.twin = self.twin and "corrupted_correct_logit" in stored.get("outputs", [])

    def _run(self, todo: list[int]) -> int:
        if not todo:
            return 0
        m = self.manifest
        sink = Sink(non_blocking=self.pinned)
        arch = Arch.from_config(m.model_config)
        fwd = [] if arch.causal else bidirectional_mask_hooks(sink, arch.n_layers)
        fwd += capture_hooks(sink, [(h.name, h.positions, _source_dims(h)) for h in m.hooks])
        if self.check is not None:
            fwd = self.check.hooks() + fwd  # before the capture: a wrong shape is never copied
        mine = shard_chunks(len(self.ranges), self.shard)
        total = sum(self.ranges[k][1] - self.ranges[k][0] for k in mine)
        bar = _progress(total, total - sum(self.ranges[k][1] - self.ranges[k][0] for k in todo), self.quiet)
        # the bar's MB/s: activation bytes (stored dtype, before compression) captured per second
        example_bytes = sum(int(np.prod(h.shape[1:])) for h in m.hooks) * np.dtype(m.dtype).itemsize
        done = 0
        ahead: _Ahead[tuple[TaskData, dict[str, pl.DataFrame | bytes]]] | None = None
        started = time.perf_counter()
        # torch keeps every core: on 2 cores, leaving one to the writer made a GPT-2-small-shaped
        # ingest 1.7x slower (the forward dominates; the writer thread mostly waits on I/O and codecs)
        try:
            with BackgroundWriter(self._write, depth=WRITE_QUEUE_DEPTH, threaded=self.background) as writer, \
                    torch.inference_mode(), self.net.hooks(fwd_hooks=fwd):
                ahead = _Ahead(self._chunk_inputs, [self.ranges[k] for k in todo])
                for k in todo:
                    start, stop = self.ranges[k]
                    made = ahead.next_future()
                    bufs = self.free.get()
                    outs = []
                    for b0 in range(start, stop, m.batch):
                        if self.creation is not None:
                            self.creation.raise_if_failed()  # no forward pass for a store that cannot be made
                        b1 = min(b0 + m.batch, stop)
                        if b0 == 0 and self.head is not None and len(self.head.tokens) == b1:
                            data = self.head  # chunk 0's first batch, as made before the loop
                        else:
                            data, parts = made.result()
                        outs.append(self._checked_forward(sink, bufs, data, start, b0, b1))
                        bar.update(b1 - b0)
                        done += b1 - b0
                        elapsed = time.perf_counter() - started
                        rate = done * example_bytes / 1e6 / max(elapsed, 1e-9)
                        bar.set_postfix_str(f"{rate:.1f} MB/s", refresh=False)
                    if self.pinned:
                        torch.cuda.synchronize(self.dev)
                    merged = {key: np.concatenate([o[key] for o in outs]) for key in outs[0]}
                    data, parts = made.result()
                    writer.submit((k, bufs, merged, data, parts))
        finally:
            bar.close()
            if ahead is not None:
                ahead.close()
        return done

    def _checked_forward(self, sink: Sink, bufs: dict[str, torch.Tensor], data: TaskData, start: int, b0: int,
                         b1: int) -> dict[str, np.ndarray]:
        """`_forward`; the first batch checks the hook shapes from the config (ShapeMismatch if one differs or a
        hook did not fire); once a batch ran, the store being created may be published (a failed first batch
        leaves no store)."""
        if self.check is None or self.check.done:
            out = self._forward(sink, bufs, data, start, b0, b1)
        else:
            try:
                out = self._forward(sink, bufs, data, start, b0, b1)
            except RuntimeError:  # run_hooks: a stored hook did not fire; name it as a shape from the config
                self.check.finish()
                raise
            self.check.finish()
        if self.creation is not None:
            self.creation.publish()
        return out

    def _chunk_inputs(self, start: int, stop: int) -> tuple[TaskData, dict[str, pl.DataFrame | bytes]]:
        """Examples [start, stop) (`_chunk_data`) and the Parquet bytes of their examples and tokens meta parts:
        made ahead, while the model runs the chunk before, so the writer (and the last chunk's wait) has less
        to do."""
        data = self._chunk_data(start, stop)
        frames = {"examples": examples_frame(data, start), "tokens": tokens_frame(data, start)}
        if self.columns is not None:  # resuming chunks an earlier version wrote: keep their columns
            frames = {t: f.select(self.columns[t]) if t in self.columns else f for t, f in frames.items()}
        return data, {t: part_bytes(f) for t, f in frames.items()}

    def _chunk_data(self, start: int, stop: int) -> TaskData:
        """Examples [start, stop), checked against the model and padded to the store's width."""
        data = self.source(start, stop)
        _check_fits(data, self.net.cfg)
        width = int(data.tokens.shape[1])
        if width != self.manifest.width:  # a task whose width follows its examples (one with only `generate`)
            if width > self.manifest.width:
                raise InvalidParameterError(
                    f"task {data.task}: examples {start}..{stop - 1} are {width} tokens wide, wider than the store's "
                    f"{self.manifest.width}; give the task a fixed width (as the built-in tasks have)")
            pad = ((0, 0), (0, self.manifest.width - width))
            data = dataclasses.replace(
                data, tokens=np.pad(data.tokens, pad, constant_values=data.pad_id),
                roles=np.pad(data.roles, pad, constant_values=""),
                corrupted_tokens=None if data.corrupted_tokens is None else
                np.pad(data.corrupted_tokens, pad, constant_values=data.pad_id))
        return data

    def _forward(self, sink: Sink, bufs: dict[str, torch.Tensor], data: TaskData, start: int, b0: int,
                 b1: int) -> dict[str, np.ndarray]:
        """Run examples [b0, b1) (inside the chunk starting at `start`, whose examples are `data`); returns their
        answer outputs."""
        t = _batch_tensors(data, b0 - start, b1 - start, self.dev)
        mask = attention_mask(t.lengths, self.manifest.width)
        sink.target = {name: buf[b0 - start:b1 - start] for name, buf in bufs.items()}
        sink.answer_pos, sink.key_mask = t.answer_pos, mask.bool()
        if not self.manifest.outputs:  # nothing after the deepest stored hook is kept: stop there
            run_hooks(self.net, sink, t.tokens, mask)
            return {}
        at_answers = answer_pass(self.net, t.tokens, mask, t.answer_pos)
        out = answer_outputs(at_answers, t.answer_tokens, t.counter_tokens)
        if self.manifest.top_k:
            out.update(answer_topk(at_answers, self.manifest.top_k))
        del at_answers
        if self.twin:
            out.update(self._twin_outputs(sink, t, mask))
        return out

    def _twin_outputs(self, sink: Sink, t: _BatchTensors, mask: torch.Tensor) -> dict[str, np.ndarray]:
        """The clean answer (and counter) token read on the corrupted twins' run: one more forward pass,
        same attention mask, nothing captured; {'corrupted_' + column: [batch, answer]}."""
        if t.corrupted_tokens is None:
            raise RuntimeError("the twins' pass runs only for a task with corrupted twins")  # self.twin says so
        started = time.perf_counter()
        sink.capture = False
        try:
            logits = answer_pass(self.net, t.corrupted_tokens, mask, t.answer_pos)
        finally:
            sink.capture = True
        twin = answer_outputs(logits, t.answer_tokens, t.counter_tokens)
        self.twin_s += time.perf_counter() - started  # answer_outputs copied to the host: the pass is done
        return {f"corrupted_{k}": twin[k] for k in TWIN_OUTPUTS if k in twin}

    def _write(self, item: tuple[int, dict[str, torch.Tensor], dict[str, np.ndarray], TaskData,
                                 dict[str, pl.DataFrame | bytes]]) -> None:
        k, bufs, outs, part, made = item
        start, stop = self.ranges[k]
        meta: dict[str, pl.DataFrame | bytes] = dict(made)  # examples, tokens: made with the chunk's examples
        if "outputs" in meta_tables(self.manifest):
            meta["outputs"] = outputs_frame(part, start, outs)
        if "topk" in meta_tables(self.manifest):
            meta["topk"] = topk_frame(part, start, outs, self.names)
        if self.columns is not None:  # resuming chunks an earlier version wrote: keep their columns
            meta = {t: frame.select(self.columns[t]) if isinstance(frame, pl.DataFrame) and t in self.columns
                    else frame for t, frame in meta.items()}
        acts = {name: buf[: stop - start].numpy() for name, buf in bufs.items()}
        self.bytes_written += self._chunk_writer().write_chunk(k, acts, meta)
        self.free.put(bufs)


_Made = TypeVar("_Made")


class _Ahead(Generic[_Made]):
    """Makes each chunk's examples on a helper thread while the model runs the chunk before: `next_future()`
    returns the future of make(*ranges[i]) for i = 0, 1, ... (its error raised by its result()) and queues the
    one after."""

    def __init__(self, make: Callable[[int, int], _Made], ranges: list[tuple[int, int]]) -> None:
        self._make, self._ranges = make, ranges
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="actstore-examples")
        self._i = 0
        self._next: Future[_Made] | None = self._pool.submit(make, *ranges[0]) if ranges else None

    def next_future(self) -> Future[_Made]:
        """The future of the next chunk's make (the one after it starts once it is done)."""
        if self._next is None:
            raise IndexError("no chunk left to make")
        current = self._next
        self._i += 1
        self._next = self._pool.submit(self._make, *self._ranges[self._i]) if self._i < len(self._ranges) else None
        return current

    def close(self) -> None:
        """Drop the chunk being made ahead (after an error or at the end)."""
        if self._next is not None:
            self._next.cancel()
        self._pool.shutdown(wait=True)


MAX_CHUNK_BYTES = 2**31 - 1  # Blosc compresses at most this many bytes at once


def _check_chunk_size(m: Manifest) -> None:
    """InvalidParameterError if a hook's chunk would exceed what the codec can compress in one piece."""
    widest = max(m.hooks, key=lambda h: h.example_bytes)
    if m.chunk * widest.example_bytes > MAX_CHUNK_BYTES:
        most = max(1, MAX_CHUNK_BYTES // widest.example_bytes)
        raise InvalidParameterError(
            f"chunk={m.chunk} makes chunks of {widest.name} {m.chunk * widest.example_bytes / 2**30:.1f} GiB, over "
            f"the 2 GiB the codec compresses at once; pass chunk <= {most} (or leave it to the default)")


def _alloc_buffers(m: Manifest, pinned: bool) -> list[dict[str, torch.Tensor]]:
    """The loop's chunk buffers (one filling, WRITE_QUEUE_DEPTH queued, one being written): each
    {hook: [chunk, ...] tensor in the stored dtype, pinned on CUDA}. InvalidParameterError if the
    machine cannot hold them."""
    dt = getattr(torch, m.dtype)
    n_sets = WRITE_QUEUE_DEPTH + 2
    try:
        return [{h.name: torch.empty((m.chunk, *h.shape[1:]), dtype=dt, pin_memory=pinned) for h in m.hooks}
                for _ in range(n_sets)]
    except (RuntimeError, MemoryError):
        size = n_sets * m.chunk * sum(h.example_bytes for h in m.hooks)
        raise InvalidParameterError(f"chunk={m.chunk} needs {size / 2**30:.1f} GiB of buffers, more than this "
                                    "machine can allocate; pass a smaller chunk (or leave it to the default)") from None


def _source_dims(h: HookInfo) -> tuple[str, ...]:
    """Axis names of the hook as the model produces it (pos axis, not answer)."""
    return tuple("query_pos" if d == "answer" and "key_pos" in h.dims else "pos" if d == "answer" else d
                 for d in h.dims)


def _hook_infos(choices: list, shapes: dict[str, tuple[int, ...]], data: TaskData, n: int,
                dtype: str) -> list[HookInfo]:
    infos = []
    for c in choices:
        shape = shapes.get(c.name)
        if shape is None and not c.explicit:
            continue  # picked by 'default' or a short form, but this model never runs it
        if shape is None:
            raise InvalidParameterError(f"hook {c.name!r} did not fire in a forward pass; it cannot be stored")
        dims = hook_dims(c.name, 1 + len(shape))
        full = [n, *shape]
        if c.positions == "answer":
            axis = pos_axis(dims)
            if full[axis] != data.tokens.shape[1]:
                raise InvalidParameterError(f"hook {c.name!r} has no position axis; store it with ':all'")
            full[axis] = data.n_answers
            dims = answer_dims(dims)
        infos.append(HookInfo(name=c.name, positions=c.positions, dims=dims, shape=tuple(full), dtype=dtype))
    return infos


def _auto_chunk(infos: list[HookInfo], n: int) -> int:
    per_example = max(1, sum(h.example_bytes for h in infos))
    chunk = 2 ** max(0, int(math.floor(math.log2(max(1, CHUNK_TARGET_BYTES // per_example)))))
    return int(max(1, min(chunk, MAX_AUTO_CHUNK, n)))


def _check_fits(data: TaskData, cfg: Any) -> None:
    width = int(data.tokens.shape[1])
    if width > cfg.n_ctx:
        k = int(np.argmax(data.lengths > cfg.n_ctx))  # the first example too long: name it
        text = data.text[k] if len(data.text[k]) <= 60 else data.text[k][:57] + "..."
        raise InvalidParameterError(
            f"task {data.task}: examples are {width} tokens long but the model's n_ctx is {cfg.n_ctx} (first "
            f"example {k}, {int(data.lengths[k])} tokens: {text!r})")
    answers = [data.answer_tokens] + ([] if data.counter_tokens is None else [data.counter_tokens])
    tokens = [data.tokens] + ([] if data.corrupted_tokens is None else [data.corrupted_tokens])
    for label, top, size in (("token", int(max(t.max() for t in tokens)), cfg.d_vocab),
                             ("answer token", int(max(a.max() for a in answers)), cfg.d_vocab_out)):
        if top >= size:
            raise InvalidParameterError(
                f"task {data.task}: {label} id {top} is outside the model's vocabulary ({size}); "
                "is this model trained on this task?")


def _complete(digest_of: Callable[[], str], net: Any, processing: dict[str, Any] | None,
              manifest: Manifest) -> Manifest:
    """`manifest` with what the weights tell: their digest (waited for) and the processing record."""
    digest = digest_of()
    return dataclasses.replace(manifest, weights_sha256=digest,
                               processing=model_info.processing_dict(net, processing, digest))


def _check_cache_ahead(weights_sha256: str) -> None:
    """weight_cache.check_ahead of the entry a new store's params/ will link (the codec every store has)."""
    check_ahead(weights_sha256, DEFAULT_CODEC, cache_dir())


def _check_writable(out: StorePath) -> None:
    """Refuse early (before any work) an output path whose nearest existing ancestor is not writable."""
    if isinstance(out, RemotePath):  # an object store says whether it is writable when the lock is put
        if out.is_file():
            raise InvalidParameterError(f"--out {out.url!r} is an object, not a store prefix")
        return
    if out.exists() and not out.is_dir():
        raise InvalidParameterError(f"--out {str(out)!r} is a file, not a store directory")
    target = out if is_store(out) else out.absolute().parent  # a new store is renamed into its parent
    while not target.exists():
        target = target.parent
    if not target.is_dir() or not os.access(target, os.W_OK | os.X_OK):
        raise InvalidParameterError(
            f"cannot write a store at {str(out)!r}: {str(target)!r} is not a writable directory")


def _device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise InvalidParameterError(f"device must be auto, cpu or cuda, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidParameterError("device cuda requested but no CUDA device is available; use --device cpu")
    return torch.device(device)


def _top_k(top_k: int | None, d_vocab_out: int, outputs: bool = True) -> int:
    """The top-k the manifest records: DEFAULT_TOP_K capped at the output vocabulary unless asked, 0
    without outputs; InvalidParameterError for more tokens than the model outputs, or any without outputs."""
    if not outputs:
        if top_k:
            raise InvalidParameterError(f"top_k={top_k} needs the outputs; drop --top-k or --no-outputs")
        return 0
    if top_k is None:
        return min(DEFAULT_TOP_K, d_vocab_out)
    if top_k > d_vocab_out:
        raise InvalidParameterError(f"top_k={top_k} is more than the model's {d_vocab_out} output tokens; pass "
                                    f"--top-k {d_vocab_out} or less (0 keeps none)")
    return int(top_k)


def _resume_differences(old: Manifest, new: Manifest) -> list[str]:
    """Identity fields that keep `new` from resuming the store of `old`. A store written before meta/topk
    (top_k None) resumes as it was made, without a topk table, so its remaining chunks match its first."""
    diffs = old.differences(new)
    if old.top_k is None and "top_k" in diffs:
        diffs.remove("top_k")
    return diffs


def _prepare_out(out: StorePath, manifest: Manifest, overwrite: bool,
                 params: Callable[[], dict[str, np.ndarray]], quiet: bool = False,
                 auto_chunk: bool = False, exclusive: bool = True) -> Manifest:
    """Create the store, or return the stored manifest of the same run to resume (or grow) it (lock held)."""
    remove_leftovers(out)
    if out.exists():
        if is_store(out):
            if not overwrite:
                grown = _grow(out, manifest, auto_chunk, exclusive)
                if grown is not None:
                    return grown
            try:
                old = read_manifest(out)
                diffs = _resume_differences(old, manifest)
                if old.n < manifest.n:  # a growth refused: name what keeps it from growing, not n and the shapes
                    diffs = growth_differences(old, manifest, auto_chunk) or diffs
                if not diffs and not overwrite:
                    Store(out, old)  # its records agree with the manifest: safe to resume into
            except (StoreFormatError, StoreCorruptError) as e:
                if not overwrite:
                    raise StoreExistsError(f"{out} holds a store this ingest cannot resume ({e}); "
                                           "pass --overwrite to replace it or choose another --out") from None
                diffs = ["format"]
            if overwrite:
                _remove_store(out)
            elif diffs:
                raise StoreExistsError(
                    f"{out} holds a store of another run (differs in: {', '.join(diffs)}); pass --overwrite "
                    "to replace it or choose another --out")
            else:
                if old.top_k is None and manifest.top_k and not quiet:
                    print("actstore ingest: warning: this store was written before meta/topk; it is resumed "
                          "without a top-k table (ingest to a new --out to keep one)", file=sys.stderr)
                return old  # same run: resume, keeping the stored manifest byte for byte
        elif any(out.iterdir()):
            raise StoreExistsError(f"{out} exists and is not an actstore store; choose another --out")
    create_store(out, manifest, params())
    return manifest


def _grow(out: StorePath, manifest: Manifest, auto_chunk: bool, exclusive: bool) -> Manifest | None:
    """The grown manifest where `out` holds this run with another n (or a growth to finish: see
    actstore.ingest.grow); None where it holds no such store (then the caller resumes or refuses)."""
    try:
        old = read_manifest(out)
    except StoreFormatError:
        return None
    if growth_differences(old, manifest, auto_chunk):
        return None
    if isinstance(out, RemotePath):
        if old.n == manifest.n:
            return None  # the same run: resumed
        raise StoreExistsError(f"{out} holds {old.n} examples of this run; a store at a URL is not grown (growth "
                               f"is local only): ingest --n {manifest.n} to a local path and upload it, or to "
                               f"another URL")
    if read_intent(out) is not None:
        return finish_growth(out, manifest.n)
    if old.n == manifest.n:
        return None
    try:
        finished = Store(out, old).finished  # its records agree with the manifest: safe to grow
    except StoreCorruptError as e:
        raise StoreExistsError(f"{out} holds a store this ingest cannot grow ({e}); pass --overwrite to replace "
                               "it or choose another --out") from None
    if not exclusive and not finished:  # shards of the old n may still be writing it
        raise StoreExistsError(f"{out} holds an unfinished store of this run with n={old.n}; a shard grows only a "
                               f"finished store: finish it (rerun with --n {old.n}) or grow it without --shard")
    return grow_store(out, old, manifest.n)


def _remove_store(out: StorePath) -> None:
    """Move the old store out of the way in one rename, then delete it (lock held)."""
    remove_store(out)


def _progress(total: int, initial: int, quiet: bool) -> Any:
    return tqdm(total=total, initial=initial, unit="ex", desc="ingest", file=sys.stderr, disable=quiet,
                dynamic_ncols=True, mininterval=0.5)
