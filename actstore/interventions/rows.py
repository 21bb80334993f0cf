"""The rows of a sweep: its plan (examples, positions, targets, ablation sources) resolved once
against the store, and each part's rows computed batch by batch exactly as the spec fixes them.

The same functions run here and on Dask workers (actstore.interventions.cluster), so a part's rows
are the same wherever it was computed (given the same torch thread count: see `part_rows`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl
import torch

from actstore.errors import InvalidParameterError
from actstore.interventions import ablation
from actstore.interventions.forward import Runner
from actstore.interventions.gradients import atp_batch
from actstore.interventions.pairs import Pairs, load_pairs, resolve_positions
from actstore.interventions.paths import path_batch
from actstore.interventions.patching import Answers, cached_run, patch_batch
from actstore.interventions.spec import SweepSpec
from actstore.interventions.targets import Targets, make_targets
from actstore.store.reader import Store
from actstore.store.sweeps import ROW_SCHEMA

MEANS_BATCH = 256  # examples per forward pass of the means pass (no patched variants: one row each)


class SweepPlan:
    """Everything a sweep needs that does not depend on the batch: examples, positions, targets,
    ablation sources (means, resampling order)."""

    def __init__(self, store: Store, spec: SweepSpec) -> None:
        self.store, self.spec = store, spec
        arch = store.arch
        self.pairs = load_pairs(store, spec.start, spec.stop)
        self.slots: np.ndarray | None = None
        self.slot_names: list[str] = []
        n_slots = 0
        if spec.grain.endswith(",pos"):
            roles = set(store.tokens["role"].drop_nulls().unique().to_list())
            self.slots, self.slot_names = resolve_positions(self.pairs, spec.pos, roles)
            n_slots = self.slots.shape[1]
        self.receivers = _receivers(spec.receivers, arch.n_layers, arch.n_heads)
        layers = None
        if self.receivers:
            layers = list(range(max(r for r, _ in self.receivers)))
            if not layers:
                raise InvalidParameterError("receivers in layer 0 have no sender heads before them")
        self.targets = make_targets(spec.grain, arch.n_layers, arch.n_heads, n_slots, layers)
        self.means: dict[int, torch.Tensor] | None = None
        self.groups: np.ndarray | None = None
        self.resample: np.ndarray | None = None

    def slice(self, a: int, b: int) -> "Batch":
        return Batch(self.pairs.take(slice(a, b)), None if self.slots is None else self.slots[a:b])


class Batch:
    """One batch: its examples and their resolved position slots ([B, slot] or None)."""

    def __init__(self, pairs: Pairs, slots: np.ndarray | None) -> None:
        self.pairs, self.slots = pairs, slots

    def __len__(self) -> int:
        return len(self.pairs)


def _receivers(receivers: tuple[str, ...] | None, n_layers: int, n_heads: int) -> list[tuple[int, int]] | None:
    if receivers is None or receivers == ("logits",):
        return None
    out = []
    for r in receivers:
        layer, dot, head = r.partition(".")
        if not (dot and layer.isdigit() and head.isdigit()):
            raise InvalidParameterError(f"receiver {r!r} is not 'logits' or a head as LAYER.HEAD (e.g. 3.1)")
        if int(layer) >= n_layers or int(head) >= n_heads:
            raise InvalidParameterError(f"receiver {r} is not a head of this model (layers 0..{n_layers - 1}, "
                                        f"heads 0..{n_heads - 1})")
        out.append((int(layer), int(head)))
    return out


def plan_sweep(store: Store, spec: SweepSpec) -> SweepPlan:
    """Check the spec against the store before any model is loaded."""
    if spec.stop > store.n_examples:
        raise InvalidParameterError(f"examples {spec.start}..{spec.stop - 1} asked, store {store.path} has "
                                    f"{store.n_examples}; ask for fewer")
    arch = store.arch
    if spec.hook in ("mlp_out", "resid_mid") and not arch.has_mlp:
        raise InvalidParameterError(f"store {store.path}'s model is attention-only: it has no {spec.hook}")
    plan = SweepPlan(store, spec)
    needs_twin = spec.kind in ("patch", "path_patch", "atp")
    if needs_twin and plan.pairs.corrupted is None:
        raise InvalidParameterError(f"task {store.manifest.task!r} has no corrupted twins in store {store.path} "
                                    f"(a store ingested before twins existed?); {spec.kind} needs them: reingest, "
                                    "or use `actstore ablate`")
    over = spec.mean_over or ""
    if spec.method == "mean" and over.startswith("label:") and over[6:] not in store.examples.columns:
        ablation.token_groups(plan.pairs.take(slice(0, 1)), over, store.examples)  # raises, naming the labels
    if "logit_diff" in spec.metrics and plan.pairs.counter is None:
        raise InvalidParameterError(f"task {store.manifest.task!r} has no counterfactual tokens: metric logit_diff "
                                    "is undefined; use --metric logprob,loss,correct_logit")
    return plan


def part_rows(runner: Runner, plan: SweepPlan, k: int, sid: str,
              done: Callable[[int], object] | None = None) -> pl.DataFrame:
    """The rows of part k of the plan's sweep, its examples run `spec.batch` at a time from the
    part's start (the batches the spec fixes, so the bytes never depend on where it ran).

    done(n) is called after each batch of n examples (a progress bar). Float results depend on
    torch's thread count (a backward pass's reductions split across threads): a part computed
    elsewhere must run with the same count to give the same bytes.
    """
    spec = plan.spec
    a, b = spec.ranges()[k]
    frames = []
    with torch.no_grad():
        for s in range(a, b, spec.batch):
            rows = plan.slice(s - spec.start, min(s + spec.batch, b) - spec.start)
            frames.append(run_batch(runner, spec, plan, rows, sid))
            if done is not None:
                done(len(rows))
    return pl.concat(frames) if frames else pl.DataFrame(schema=ROW_SCHEMA)


def run_batch(runner: Runner, spec: SweepSpec, plan: SweepPlan, rows: Batch, sid: str) -> pl.DataFrame:
    """The rows of one batch of examples (every target, answer and metric)."""
    dev = runner.device
    p = rows.pairs
    t = {name: torch.as_tensor(v, device=dev) for name, v in (("clean", p.tokens), ("lengths", p.lengths),
                                                              ("answer_pos", p.answer_pos), ("answer", p.answer))}
    counter = None if p.counter is None else torch.as_tensor(p.counter, device=dev)
    answers = Answers(t["answer_pos"], t["answer"], counter, spec.metrics)
    corrupted = None if p.corrupted is None else torch.as_tensor(p.corrupted, device=dev)
    slots = None if rows.slots is None else torch.as_tensor(rows.slots, device=dev)
    layers = plan.targets.layers
    all_layers = list(range(runner.n_layers))
    hook = spec.hook
    clean_run = cached_run(runner, t["clean"], t["lengths"], answers, hook, all_layers if spec.kind == "path_patch"
                           else layers)
    corr_run = None if corrupted is None else cached_run(runner, corrupted, t["lengths"], answers, hook,
                                                         all_layers if spec.kind == "path_patch" else layers)
    if spec.kind == "ablate":
        base = clean_run
        sources = _ablation_sources(runner, spec, plan, rows, base, answers, layers)
        values = patch_batch(runner, base, sources, hook, plan.targets, slots, answers, spec.rows)
    else:
        assert corr_run is not None and corrupted is not None  # checked by _plan
        base, source = (corr_run, clean_run) if spec.mode == "denoise" else (clean_run, corr_run)
        if spec.kind == "patch":
            values = patch_batch(runner, base, source.acts, hook, plan.targets, slots, answers, spec.rows)
        elif spec.kind == "path_patch":
            values = path_batch(runner, base, source, plan.targets, plan.receivers, spec.receiver_input, answers,
                                spec.rows)
        else:
            base_tokens = corrupted if spec.mode == "denoise" else t["clean"]
            est, base_metrics = atp_batch(runner, base_tokens, t["lengths"], source, hook, plan.targets, slots, answers)
            values = base_metrics[None] + est
    return _frame(sid, spec, plan.targets, rows, values.cpu().numpy(), clean_run.metrics.cpu().numpy(),
                  None if corr_run is None else corr_run.metrics.cpu().numpy())


def _ablation_sources(runner: Runner, spec: SweepSpec, plan: SweepPlan, rows: Batch, base: Any, answers: Answers,
                      layers: list[int]) -> dict[int, torch.Tensor]:
    if spec.method == "zero":
        return {layer: torch.zeros_like(base.acts[layer]) for layer in layers}
    if spec.method == "resample":
        if plan.resample is None:
            plan.resample = ablation.derangement(plan.pairs.lengths, spec.seed)
        src = plan.pairs.take(plan.resample[_offsets(plan, rows)])
        run = cached_run(runner, torch.as_tensor(src.tokens, device=runner.device),
                         torch.as_tensor(src.lengths, device=runner.device), answers, spec.hook, layers)
        return run.acts
    means = ensure_means(runner, spec, plan, layers)
    gid = plan.groups[_offsets(plan, rows)]  # type: ignore[index]
    return {layer: ablation.mean_source(means[layer].to(runner.device), gid, spec.hook) for layer in layers}


def _offsets(plan: SweepPlan, rows: Batch) -> np.ndarray:
    """Rows of the plan's example arrays that `rows` holds."""
    return rows.pairs.ids - plan.spec.start


def ensure_means(runner: Runner, spec: SweepSpec, plan: SweepPlan, layers: list[int]) -> dict[int, torch.Tensor]:
    """Group means over every committed example of the store (computed once per sweep)."""
    if plan.means is not None:
        return plan.means
    store = plan.store
    every = load_pairs(store, 0, store.n_examples)
    groups, n_groups = ablation.token_groups(every, spec.mean_over or "pos", store.examples)
    chunks = ablation.store_chunks(store, spec.hook, layers, groups)
    if chunks is None:
        def run(pairs: Pairs) -> dict[int, torch.Tensor]:
            dev = runner.device
            answers = Answers(torch.as_tensor(pairs.answer_pos, device=dev), torch.as_tensor(pairs.answer, device=dev),
                              None, ("correct_logit",))
            got = cached_run(runner, torch.as_tensor(pairs.tokens, device=dev),
                             torch.as_tensor(pairs.lengths, device=dev), answers, spec.hook, layers)
            return {layer: a.cpu() for layer, a in got.acts.items()}
        chunks = ablation.model_chunks(every, groups, max(spec.batch, MEANS_BATCH), run)
    plan.means = ablation.group_means(chunks, n_groups, layers, spec.hook)
    plan.groups = groups[spec.start:spec.stop]
    return plan.means


def _frame(sid: str, spec: SweepSpec, targets: Targets, rows: Batch, values: np.ndarray, clean: np.ndarray,
           corrupted: np.ndarray | None) -> pl.DataFrame:
    """values [T, B, answer, metric] -> one row per (target, example, answer, metric), absent positions dropped."""
    n_t, b, n_a, n_m = values.shape
    shape = (n_t, b, n_a, n_m)
    ti, bi, ai, mi = (np.broadcast_to(x, shape).reshape(-1) for x in np.ix_(np.arange(n_t), np.arange(b),
                                                                             np.arange(n_a), np.arange(n_m)))
    pos = np.full(ti.shape, -1, dtype=np.int64)
    has_pos = rows.slots is not None
    if has_pos:
        pos = rows.slots[bi, targets.slot[ti]]  # type: ignore[index]
    keep = pos >= 0 if has_pos else np.ones(ti.shape, dtype=bool)
    ti, bi, ai, mi, pos = ti[keep], bi[keep], ai[keep], mi[keep], pos[keep]
    role = rows.pairs.roles[bi, pos] if has_pos else np.full(ti.shape, "", dtype=object)
    head = targets.head[ti]
    metric_names = np.array(spec.metrics, dtype=object)
    frame = pl.DataFrame({
        "sweep": pl.Series([sid] * ti.shape[0], dtype=pl.String),
        "kind": pl.Series([spec.kind] * ti.shape[0], dtype=pl.String),
        "hook": pl.Series([spec.hook] * ti.shape[0], dtype=pl.String),
        "layer": targets.layer[ti],
        "head": pl.Series(head, dtype=pl.Int64),
        "pos": pl.Series(pos, dtype=pl.Int64),
        "role": pl.Series(role.astype(str), dtype=pl.String),
        "example_id": rows.pairs.ids[bi],
        "answer_idx": ai.astype(np.int64),
        "metric": pl.Series(metric_names[mi], dtype=pl.String),
        "value": values.reshape(-1)[keep],
        "clean": clean[bi, ai, mi],
        "corrupted": np.full(ti.shape, np.nan, dtype=np.float32) if corrupted is None else corrupted[bi, ai, mi],
    })
    return frame.with_columns(
        pl.when(pl.col("head") >= 0).then(pl.col("head")).alias("head"),
        pl.when(pl.col("pos") >= 0).then(pl.col("pos")).alias("pos"),
        pl.when(pl.col("role") != "").then(pl.col("role")).alias("role"),
        pl.when(pl.col("corrupted").is_nan()).then(None).otherwise(pl.col("corrupted")).alias("corrupted")
        if corrupted is None else pl.col("corrupted"),
    ).cast(ROW_SCHEMA)  # type: ignore[arg-type]
