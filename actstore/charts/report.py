"""`build_report(store, path)`: the store's summary, accuracy by label and its task's standard charts.

Each query runs once (DLA, attention, logit lens, neurons) and feeds several charts. A section
whose query cannot run on this store (a hook it did not keep, an attention-only model for
neurons) is kept with a one-line note saying why, so the page always shows what is missing.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from actstore.charts import accuracy, attention, dla, logit_lens, neurons, standard
from actstore.charts.page import Section, check_report_path, write_report
from actstore.errors import ActstoreError, StoreCorruptError


def _hooks_summary(hooks: list[str]) -> str:
    """'attn.hook_z x2, attn.hook_pattern x2, ln_final.hook_scale': hook names without the block number."""
    counts = Counter(h.split(".", 2)[2] if h.startswith("blocks.") else h for h in hooks)
    return ", ".join(f"{name} x{n}" if n > 1 else name for name, n in counts.items())


def store_summary(store: Any) -> dict[str, object]:
    """Key facts of a store for the report header (model, task, examples, hooks, storage, checks)."""
    m = store.manifest
    cfg = store.config
    shape = ", ".join(f"{k} {cfg[k]}" for k in ("n_layers", "n_heads", "d_model", "d_head", "d_mlp", "d_vocab")
                      if cfg.get(k) is not None)
    extras = [k for k in ("attn_only",) if cfg.get(k)] + [
        f"{k} {cfg[k]}" for k in ("normalization_type", "positional_embedding_type", "act_fn")
        if cfg.get(k) and not (k == "act_fn" and cfg.get("attn_only"))]
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


def _section(title: str, caption: str, build: Callable[[], Any], table: Callable[[], pl.DataFrame] | None = None) -> Section:
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
        self.fn, self.value, self.error = fn, None, None

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


def report_sections(store: Any) -> list[Section]:
    """The standard sections of the store's task (see the module docstring)."""
    task = standard.task_of(store)
    examples = store.examples
    target = standard.default_target(store)
    target_text = "logit difference (correct - counterfactual)" if target == "diff" else "correct-token logit"
    dla_table = _Once(lambda: standard.query_fn("dla")(store, by="head", target=target))

    def heads() -> list[tuple[int, int]]:
        every = standard.all_heads(store)
        return every if len(every) <= standard.TOP_HEADS else standard.top_heads(dla_table())

    attn_table = _Once(lambda: standard.attention_pattern_table(store, heads()))
    roles = standard.token_roles(store)
    acc = _Once(lambda: accuracy.accuracy_table(store.outputs, examples))

    sections = [
        _section("Accuracy by label", "Fraction of answers whose correct token has the top logit, overall, "
                 "per answer position and per label value.", lambda: accuracy.accuracy_bars(acc()), table=acc),
        _section("Direct logit attribution per head", f"Mean direct contribution of each attention head to the "
                 f"{target_text}, per answer position.", lambda: dla.dla_heatmap(dla_table())),
        _section("Direct logit attribution per component", f"Embeddings, heads, MLPs and bias: mean contribution to "
                 f"the {target_text} with 95% confidence intervals.", lambda: dla.component_bars(dla_table())),
    ]

    if task == "addition":
        split, title = standard.default_split(store)
        sections.append(_section("Carry vs no carry", "Component attributions of each sum digit, split by whether "
                                 "that digit receives a carry (the seed's carry analysis).",
                                 lambda: dla.component_bars_by(dla_table(), examples, split, label_title=title)))
        first_carry = next(iter(split.values())) if isinstance(split, dict) and split else None
        role = _safe(lambda: standard.default_query_role(store))
        if role and first_carry:
            sections.append(_section(f"Attention from '{role}', carry vs no carry",
                                     f"Attention mass from the first answer position to each token role, split by "
                                     f"{first_carry}.", lambda: attention.attention_role_bars(
                                         standard.attention_roles_table(store, heads(), role, by=first_carry),
                                         query_role=role, by=first_carry, roles=roles)))
    elif task == "brackets":
        label = standard.first_label(examples, "failure", "failure_type")
        if label:
            sections.append(_section("Attribution by failure type", "Component attributions split by why a string is "
                                     "unbalanced (or 'balanced').",
                                     lambda: dla.component_bars_by(dla_table(), examples, label)))
        x = _safe(lambda: standard.default_x(store))
        if x:
            n_layers = int(store.config["n_layers"])
            for layer in range(n_layers):
                table = _Once(lambda layer=layer: standard.query_fn("neurons")(store, layer=layer, direction="answer"))
                sections.append(_section(f"MLP {layer} neurons vs {x}",
                                         f"Output of layer {layer}'s neurons onto the answer direction, per example, "
                                         f"against {x}, coloured by {label or 'example'}: the layer total and its most "
                                         "variable neurons.",
                                         lambda table=table: neurons.neuron_scatter(table(), examples, x=x, color=label,
                                                                                   which="sum", direction="the answer direction")
                                         & neurons.neuron_scatter(table(), examples, x=x, color=label, top_k=3,
                                                                  direction="the answer direction")))
    elif task == "ioi":
        keys = standard.ioi_key_roles(store)
        sections.append(_section("END -> IO / S attention", "Attention mass from the END token to the indirect object "
                                 "and subject names, for the heads with the largest attribution.",
                                 lambda: attention.attention_role_bars(
                                     standard.attention_roles_table(store, heads(), "END", keys), query_role="END",
                                     key_roles=keys, roles=roles)))
        label = standard.first_label(examples, "abba", "order", "template")
        if label:
            sections.append(_section(f"Attribution by {label}", f"Component attributions split by {label}.",
                                     lambda: dla.component_bars_by(dla_table(), examples, label)))

    sections.append(_section("Average attention by token role", "Attention mass from each query role to each key "
                             "role, averaged over examples" + (" (heads with the largest attribution)." if
                                                              len(standard.all_heads(store)) > standard.TOP_HEADS else "."),
                             lambda: attention.attention_heatmap(attn_table(), roles=roles)))
    sections.append(_section("Logit lens", f"Mean {target_text} read off the residual stream after each stage.",
                             lambda: logit_lens.logit_lens_lines(standard.query_fn("logit_lens")(store, target=target))))
    return sections


def _safe(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except StoreCorruptError:
        raise
    except ActstoreError:
        return None


def build_report(store: Any, path: str | os.PathLike, title: str | None = None) -> Path:
    """Write the store's report to `path` (.html); returns the path."""
    check_report_path(path)  # before the queries run
    m = store.manifest
    title = title or f"actstore report: {m.task} x {m.model_spec}"
    return write_report(path, title, store_summary(store), report_sections(store))


__all__ = ["build_report", "report_sections", "store_summary"]
