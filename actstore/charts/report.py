"""`build_report(store, path)`: the store's summary, accuracy by label and its task's standard charts.

Every store gets the common sections (accuracy, DLA per head and per component, attention by
token role, logit lens); its task's `ReportSpec` adds label splits, role attention and neuron
scatters, each left out where the store lacks its label or role; a store with complete
intervention sweeps gets a last section, "Interventions", with one chart per sweep. Each query
runs once (DLA, attention, logit lens, neurons) and feeds several charts. A section whose query
cannot run on this store (a hook it did not keep, an attention-only model for neurons) is kept
with a one-line note saying why, so the page always shows what is missing.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from actstore import query
from actstore.charts import accuracy, attention, defaults, dla, interventions, logit_lens, neurons, standard
from actstore.charts.page import Section, check_report_path, write_report
from actstore.datasets.report_spec import LabelSplit, RoleAttention
from actstore.errors import ActstoreError, InvalidParameterError, StoreCorruptError
from actstore.store import Store
from actstore.query import interventions as sweeps_query
from actstore.query.options import Target


def _hooks_summary(hooks: list[str]) -> str:
    """'attn.hook_z x2, attn.hook_pattern x2, ln_final.hook_scale': hook names without the block number."""
    counts = Counter(h.split(".", 2)[2] if h.startswith("blocks.") else h for h in hooks)
    return ", ".join(f"{name} x{n}" if n > 1 else name for name, n in counts.items())


def store_summary(store: Store) -> dict[str, object]:
    """Key facts of a store for the report header (model, task, examples, hooks, storage, checks)."""
    m = store.manifest
    a = store.arch
    sizes = {"n_layers": a.n_layers, "n_heads": a.n_heads, "d_model": a.d_model, "d_head": a.d_head,
             "d_mlp": a.d_mlp, "d_vocab": a.d_vocab}
    shape = ", ".join(f"{k} {v}" for k, v in sizes.items() if v is not None)
    named = {"normalization_type": a.norm, "positional_embedding_type": a.pos_embed,
             "act_fn": a.act_fn if a.has_mlp else None}
    extras = ([] if a.has_mlp else ["attn_only"]) + [f"{k} {v}" for k, v in named.items() if v]
    processing = ", ".join(k for k, v in (m.processing or {}).items() if v is True and k != "inferred") or "none"
    summary: dict[str, object] = {
        "store": str(store.path),
        "model": m.model_spec,
        "architecture": shape + (f" ({', '.join(extras)})" if extras else ""),
        "weight processing": processing,
        "task": f"{m.task} {m.task_params}".strip(),
        "seed": m.seed,
        "examples": f"{store.n_examples} committed of {m.n}",
        "answers per example": m.n_answers,
        "sequence width": m.width,
        "hooks": f"{len(m.hooks)}: {_hooks_summary([h.name for h in m.hooks])}",
        "positions": ", ".join(sorted({h.positions for h in m.hooks})),
        "stored dtype": m.dtype,
        "chunk (examples)": m.chunk,
    }
    if m.decomposition:
        d = m.decomposition
        err = next((d[k] for k in ("max_abs_error", "max_error", "error") if k in d), None)
        summary["decomposition check"] = (f"max |sum of components - logits| = {err:.3g}" if isinstance(err, float)
                                          else ", ".join(f"{k} {v}" for k, v in d.items()))
    if m.package_version:
        summary["written by"] = f"actstore {m.package_version}"
    return summary


def _section(title: str, caption: str, build: Callable[[], Any],
             table: Callable[[], pl.DataFrame] | None = None) -> Section:
    """A Section from `build()` (a chart); an ActstoreError becomes the section's note, except a
    corrupt store, which fails the whole report (a page of notes would pass for a report)."""
    try:
        return Section(title, caption, chart=build(), table=table() if table else None)
    except StoreCorruptError:
        raise
    except ActstoreError as e:
        return Section(title, caption, note=f"Not available for this store: {e}")


class _Once:
    """Runs a query the first time it is asked for and keeps the table (or the error) for later sections."""

    def __init__(self, fn: Callable[[], pl.DataFrame]) -> None:
        self.fn = fn
        self.value: pl.DataFrame | None = None
        self.error: ActstoreError | None = None

    def __call__(self) -> pl.DataFrame:
        if self.error is not None:
            raise self.error
        if self.value is None:
            try:
                self.value = self.fn()
            except ActstoreError as e:
                self.error = e
                raise
        return self.value


class _Tables:
    """The store's shared query tables, each run once: DLA per head, the heads to chart, token roles."""

    def __init__(self, store: Store, target: Target) -> None:
        self.store = store
        self.dla = _Once(lambda: query.dla(store, "head", target=target))
        self.pattern = _Once(lambda: standard.attention_pattern_table(store, self.heads()))
        self.roles = standard.token_roles(store)

    def heads(self) -> list[tuple[int, int]]:
        every = standard.all_heads(self.store)
        return every if len(every) <= standard.TOP_HEADS else standard.top_heads(self.dla())


def report_sections(store: Store) -> list[Section]:
    """The common sections, then those its task's `ReportSpec` declares (see the module docstring)."""
    spec = defaults.task_spec(store)
    examples = store.examples
    target = defaults.default_target(store)
    target_text = "logit difference (correct - counterfactual)" if target == "diff" else "correct-token logit"
    t = _Tables(store, target)
    acc = _Once(lambda: accuracy.accuracy_table(store.outputs, examples))

    sections = [
        _section("Accuracy by label", "Fraction of answers whose correct token has the top logit, overall, "
                 "per answer position and per label value.", lambda: accuracy.accuracy_bars(acc()), table=acc),
        _section("Direct logit attribution per head", f"Mean direct contribution of each attention head to the "
                 f"{target_text}, per answer position.", lambda: dla.dla_heatmap(t.dla())),
        _section("Direct logit attribution per component", f"Embeddings, heads, MLPs and bias: mean contribution to "
                 f"the {target_text} with 95% confidence intervals.", lambda: dla.component_bars(t.dla())),
    ]
    sections += [s for split in spec.splits if (s := _split_section(store, t, split))]
    sections += [s for att in spec.attention if (s := _attention_section(store, t, att))]
    if spec.neurons is not None:
        sections += _neuron_sections(store)
    top = " (heads with the largest attribution)." if len(standard.all_heads(store)) > standard.TOP_HEADS else "."
    sections.append(_section("Average attention by token role", "Attention mass from each query role to each key "
                             "role, averaged over examples" + top,
                             lambda: attention.attention_heatmap(t.pattern(), roles=t.roles)))
    sections.append(_section("Logit lens", f"Mean {target_text} read off the residual stream after each stage.",
                             lambda: logit_lens.logit_lens_lines(query.logit_lens(store, target=target))))
    if (iv := interventions_section(store)) is not None:
        sections.append(iv)
    return sections


INTERVENTIONS_CAPTION = (
    "Stored intervention sweeps, one chart each, of the sweep's first metric, averaged over its examples "
    "(and answers, unless drawn apart). Patching, path patching and attribution patching show the normalised "
    "score (value - corrupted) / (clean - corrupted): 1 where the intervention restores the clean run, 0 where "
    "it leaves the corrupted one; ablations the effect value - clean, split by the task's label where it has "
    "one. Logit differences of answers whose counterfactual is the answer itself are left out. Attribution "
    "patching is also plotted against exact patching of the same targets where the store has both.")


def interventions_section(store: Store) -> Section | None:
    """"Interventions": a chart per complete sweep (None where the store has none, as old stores do).

    A sweep whose chart cannot be built gets a note in its place; a corrupt sweep fails the report,
    like any corrupt part of the store."""
    table = sweeps_query.sweeps(store)
    done = interventions.sweep_order(table.filter(pl.col("complete")))
    if done.height == 0:
        return None
    try:
        split: tuple[Any, str | None] = defaults.default_split(store)
    except InvalidParameterError:
        split = (None, None)
    pairs = dict(interventions.atp_pairs(done))
    examples, tokens = store.examples, store.tokens
    charts: list[Any] = []
    for sweep in done.iter_rows(named=True):
        sid = str(sweep["sweep"])
        try:
            rows = sweeps_query.interventions(store, sid)
            charts.append(interventions.sweep_chart(rows, sweep, examples, tokens, split[0], split[1]))
            if sid in pairs:
                exact = sweeps_query.interventions(store, pairs[sid])
                metric = interventions.first_metric(sweep, rows)
                charts.append(interventions.atp_scatter(interventions.drop_degenerate(rows, examples),
                                                        interventions.drop_degenerate(exact, examples), metric,
                                                        title=f"{interventions.sweep_title(sweep)}: against exact "
                                                              "patching"))
        except StoreCorruptError:
            raise
        except ActstoreError as e:
            charts.append(f"{interventions.sweep_title(sweep)} (sweep {sid}): not charted: {e}")
    return Section("Interventions", INTERVENTIONS_CAPTION, more=tuple(charts))


def _split_section(store: Store, t: _Tables, split: LabelSplit) -> Section | None:
    """Component attributions split by the task's label (None where the store lacks the label)."""
    by = split.columns(store.examples.columns, store.n_answers)
    if by is None:
        return None
    return _section(split.title, split.caption,
                    lambda: dla.component_bars_by(t.dla(), store.examples, by, label_title=split.legend))


def _attention_section(store: Store, t: _Tables, att: RoleAttention) -> Section | None:
    """Attention from the task's query role to its key roles (None where the store lacks the role or label)."""
    if att.query_role not in defaults.present_roles(store) or (
            att.split_by is not None and att.split_by not in store.examples.columns):
        return None
    keys = defaults.default_key_roles(store, att.query_role)
    return _section(att.title, att.caption, lambda: attention.attention_role_bars(
        standard.attention_roles_table(store, t.heads(), att.query_role, keys, group_by=att.split_by),
        query_role=att.query_role, key_roles=keys, group_by=att.split_by, roles=t.roles))


def _neuron_sections(store: Store) -> list[Section]:
    """One section per MLP layer: its neurons' output onto the answer direction against a numeric label."""
    try:
        x = defaults.default_x(store)
    except InvalidParameterError:
        return []
    color = defaults.default_color(store)
    return [_neuron_section(store, layer, x, color) for layer in store.arch.layers]


def _neuron_section(store: Store, layer: int, x: str, color: str | None) -> Section:
    table = _Once(lambda: query.neurons(store, layers=layer, direction="answer"))
    direction = "the answer direction"

    def build() -> Any:
        return (neurons.neuron_scatter(table(), store.examples, x=x, color=color, which="sum", direction=direction)
                & neurons.neuron_scatter(table(), store.examples, x=x, color=color, top_k=3, direction=direction))

    return _section(f"MLP {layer} neurons vs {x}", f"Output of layer {layer}'s neurons onto the answer direction, "
                    f"per example, against {x}, coloured by {color or 'example'}: the layer total and its most "
                    "variable neurons.", build)


def build_report(store: Store, path: str | os.PathLike, title: str | None = None) -> Path:
    """Write the store's report to `path` (.html); returns the path."""
    check_report_path(path)  # before the queries run
    m = store.manifest
    title = title or f"actstore report: {m.task} x {m.model_spec}"
    return write_report(path, title, store_summary(store), report_sections(store))


__all__ = ["build_report", "interventions_section", "report_sections", "store_summary"]
