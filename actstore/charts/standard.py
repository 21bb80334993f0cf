"""The chart kinds of `actstore chart`: store -> (query, builder).

Each kind runs one `actstore.query` function with the options given (or the store's default,
from its task's `ReportSpec`, see `actstore.charts.defaults`) and hands the table to a pure
builder. Stores with counterfactual tokens attribute the logit difference by default.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import altair as alt
import polars as pl

from actstore import query
from actstore.charts import accuracy, attention, circuits, dla, logit_lens, neurons, probes, weights
from actstore.charts.defaults import (
    default_color,
    default_key_roles,
    default_query_role,
    default_split,
    default_target,
    default_x,
)
from actstore.charts.kinds import KIND_HELP
from actstore.errors import InvalidParameterError
from actstore.query.options import Target
from actstore.store.reader import Store

TOP_HEADS = 12         # heads shown where a model has more (chosen by |mean DLA|)
MAX_VOCAB = 70         # circuits over a bigger vocabulary keep the tokens the task uses


# --- heads ------------------------------------------------------------------------------------

def top_heads(dla_table: pl.DataFrame, k: int = TOP_HEADS) -> list[tuple[int, int]]:
    """The `k` heads with the largest mean |direct attribution| (ties broken by layer, head)."""
    heads = dla_table.filter(pl.col("head").is_not_null() & pl.col("component").str.contains(r"^L\d+H\d+$"))
    size = heads.group_by("layer", "head").agg(pl.col("value").mean().abs().alias("size"))
    size = size.sort(["size", "layer", "head"], descending=[True, False, False]).head(k).sort("layer", "head")
    return [(int(a), int(b)) for a, b in size.select("layer", "head").iter_rows()]


def all_heads(store: Store) -> list[tuple[int, int]]:
    return store.arch.heads()


# --- kinds ------------------------------------------------------------------------------------

def _dla_table(store: Store, target: Target | None) -> pl.DataFrame:
    return query.dla(store, "head", target=target or default_target(store))


def chart_dla_heads(store: Store, target: Target | None = None, **_: Any) -> alt.TopLevelMixin:
    return dla.dla_heatmap(_dla_table(store, target))


def chart_dla_components(store: Store, target: Target | None = None, top: int | None = None,
                         **_: Any) -> alt.TopLevelMixin:
    return dla.component_bars(_dla_table(store, target), top=top or dla.DEFAULT_TOP)


def chart_dla_split(store: Store, target: Target | None = None, group_by: str | None = None, top: int | None = None,
                    **_: Any) -> alt.TopLevelMixin:
    split, title = (group_by, group_by) if group_by else default_split(store)
    return dla.component_bars_by(_dla_table(store, target), store.examples, split, top=top or dla.DEFAULT_TOP,
                                 label_title=title)


def _heads_for(store: Store, heads: list[tuple[int, int]] | None, layer: int | None = None) -> list[tuple[int, int]]:
    """`heads` (checked against the model), every head of `layer`, or the default set of heads."""
    n_layers, n_heads = store.arch.n_layers, store.arch.n_heads
    if heads is not None and layer is not None:
        raise InvalidParameterError("give heads or layer, not both")
    if layer is not None:
        if not 0 <= layer < n_layers:
            raise InvalidParameterError(
                f"layer {layer} is not in this {n_layers}-layer model (layers 0..{n_layers - 1})")
        return [(layer, h) for h in range(n_heads)]
    if heads:
        for lay, head in heads:
            if not (0 <= lay < n_layers and 0 <= head < n_heads):
                raise InvalidParameterError(f"head L{lay}H{head} is not in this {n_layers}-layer, {n_heads}-head model")
        return heads
    every = all_heads(store)
    if len(every) <= TOP_HEADS:
        return every
    return top_heads(_dla_table(store, None))


def _keep_heads(table: pl.DataFrame, heads: list[tuple[int, int]]) -> pl.DataFrame:
    keep = pl.DataFrame({"layer": [h[0] for h in heads], "head": [h[1] for h in heads]},
                        schema={"layer": table.schema["layer"], "head": table.schema["head"]})
    return table.join(keep, on=["layer", "head"], how="semi")


def attention_pattern_table(store: Store, heads: list[tuple[int, int]]) -> pl.DataFrame:
    """Mean attention mass per (head, query role, key role) of `heads`, aggregated by the query
    layer while streaming (no raw rows): layer, head, q_role, k_role, mean, std, n, ci_low, ci_high, entropy."""
    layers = sorted({layer for layer, _ in heads})
    head_ids = sorted({head for _, head in heads})
    table = query.attention(store, layers=layers, heads=head_ids, group_by=["q_role", "k_role"])
    return _keep_heads(table, heads)


def attention_roles_table(store: Store, heads: list[tuple[int, int]], query_role: str,
                          key_roles: list[str] | None = None, group_by: str | None = None) -> pl.DataFrame:
    """Mean attention mass from `query_role` to each key role (and `group_by` label value), per head."""
    layers = sorted({layer for layer, _ in heads})
    head_ids = sorted({head for _, head in heads})
    table = query.attention(store, layers=layers, heads=head_ids, query=query_role, key=key_roles,
                            group_by=["k_role", *([group_by] if group_by else [])])
    return _keep_heads(table, heads)


def token_roles(store: Store) -> list[str]:
    """The store's token roles in order of mean position ('other' last)."""
    return attention.role_order(store.tokens.select("pos", "role"))


def chart_attention(store: Store, heads: list[tuple[int, int]] | None = None, layer: int | None = None,
                    **_: Any) -> alt.TopLevelMixin:
    chosen = _heads_for(store, heads, layer)
    return attention.attention_heatmap(attention_pattern_table(store, chosen), roles=token_roles(store))


def chart_attention_roles(store: Store, heads: list[tuple[int, int]] | None = None, query_role: str | None = None,
                          key_roles: list[str] | None = None, group_by: str | None = None, layer: int | None = None,
                          **_: Any) -> alt.TopLevelMixin:
    chosen = _heads_for(store, heads, layer)
    role = query_role or default_query_role(store)
    if key_roles is None:
        key_roles = default_key_roles(store, role)
    table = attention_roles_table(store, chosen, role, key_roles, group_by)
    return attention.attention_role_bars(table, query_role=role, key_roles=key_roles, group_by=group_by,
                                         roles=token_roles(store))


def chart_logit_lens(store: Store, target: Target | None = None, group_by: str | None = None,
                     **_: Any) -> alt.TopLevelMixin:
    table = query.logit_lens(store, target=target or default_target(store))
    return logit_lens.logit_lens_lines(table, examples=store.examples if group_by else None, group_by=group_by)


def chart_neurons(store: Store, layer: int | None = None, x: str | None = None, color: str | None = None,
                  which: list[int] | str | None = None, top: int | None = None, direction: str | None = None,
                  through_head: str | None = None, pos: int | str | None = None, **_: Any) -> alt.TopLevelMixin:
    """Neuron projections of `layer` (default: the last) vs a numeric label; `through_head` pulls the
    direction back through a head's OV (brackets seed: '2.0' with pos=1)."""
    if not store.arch.has_mlp:
        raise InvalidParameterError(f"model of store {store.path} has no MLP neurons (attention-only)")
    n_layers = store.arch.n_layers
    layer = n_layers - 1 if layer is None else layer
    table = query.neurons(store, layers=layer, direction=direction or "answer", through_head=through_head, pos=pos)
    colour = color if color is not None else default_color(store)
    name = f"the {direction or 'answer'} direction" + (f" through head {through_head}" if through_head else "")
    return neurons.neuron_scatter(table, store.examples, x=x or default_x(store), color=colour, which=which,
                                  top_k=top or 6, direction=name)


def vocab_labels(store: Store) -> dict[int, str]:
    """token id -> string for the tokens seen in the store (all of a small task vocabulary)."""
    pairs = store.tokens.select("token_id", "str_token").unique("token_id").sort("token_id")
    return {int(t): str(s) for t, s in pairs.iter_rows()}


def _circuit_tokens(store: Store) -> tuple[list[int], list[str]]:
    """Token ids (and strings) a circuit chart shows: every token seen in the store for a small
    vocabulary, else the MAX_VOCAB most frequent answer tokens."""
    labels = vocab_labels(store)
    ids = list(labels)
    if len(ids) > MAX_VOCAB:
        counts = store.outputs.group_by("correct_token").len().sort(["len", "correct_token"], descending=[True, False])
        ids = sorted(int(t) for t in counts.get_column("correct_token").head(MAX_VOCAB))
    return ids, [labels.get(t, str(t)) for t in ids]


def _output_tokens(store: Store, ids: list[int], names: list[str]) -> tuple[list[int], list[str]]:
    """Output ids of an OV circuit: the same tokens, or every class of a classifier head (brackets)."""
    d_vocab_out = store.arch.d_vocab_out
    if d_vocab_out == store.arch.d_vocab:
        return ids, names
    classes = list(range(min(d_vocab_out, MAX_VOCAB)))
    return classes, [f"class {c}" for c in classes]


def _layer_head(store: Store, layer: int | None, head: int | None) -> tuple[int, int]:
    if layer is None or head is None:
        raise InvalidParameterError("circuit charts need layer and head")
    n_layers, n_heads = store.arch.n_layers, store.arch.n_heads
    if not 0 <= layer < n_layers or not 0 <= head < n_heads:
        raise InvalidParameterError(f"head L{layer}H{head} is not in this {n_layers}-layer, {n_heads}-head model")
    return layer, head


def chart_ov_circuit(store: Store, layer: int | None = None, head: int | None = None, **_: Any) -> alt.TopLevelMixin:
    layer, head = _layer_head(store, layer, head)
    ids, names = _circuit_tokens(store)
    out_ids, out_names = _output_tokens(store, ids, names)
    # [source token, output token]
    matrix = query.circuit_matrix(query.ov_circuit(store, layer, head, tokens=ids, outputs=out_ids))
    return circuits.circuit_heatmap(matrix, f"OV circuit of L{layer}H{head}: embed -> head -> unembed",
                                    row_labels=names, col_labels=out_names, value_title="Logit contribution")


def chart_qk_circuit(store: Store, layer: int | None = None, head: int | None = None, **_: Any) -> alt.TopLevelMixin:
    layer, head = _layer_head(store, layer, head)
    ids, names = _circuit_tokens(store)
    # [query token, key token]
    matrix = query.circuit_matrix(query.qk_circuit(store, layer, head, queries=ids, keys=ids))
    return circuits.circuit_heatmap(matrix, f"QK circuit of L{layer}H{head}: token embeddings",
                                    row_title="Query token", col_title="Key token", row_labels=names,
                                    col_labels=names, value_title="Attention score")


def chart_accuracy(store: Store, group_by: str | None = None, **_: Any) -> alt.TopLevelMixin:
    table = accuracy.accuracy_table(store.outputs, store.examples, group_by=[group_by] if group_by else None)
    return accuracy.accuracy_bars(table)


def chart_sweep(store: Store, *, sweep: str | None = None, group_by: str | None = None) -> alt.TopLevelMixin:
    """The chart of one complete intervention sweep (default: the store's only one); ablations split by
    `group_by` (default: the task's label split)."""
    from actstore.charts import interventions as charts_iv  # noqa: PLC0415 (sweeps are rare; keep import light)
    from actstore.query import interventions as iv  # noqa: PLC0415

    table = iv.sweeps(store).filter(pl.col("complete"))
    if sweep is None:
        if table.height != 1:
            ids = ", ".join(table["sweep"].to_list()) or "(none: run actstore patch or ablate first)"
            raise InvalidParameterError(f"store {store.path} holds {table.height} complete sweeps; pick one with "
                                        f"--sweep ({ids})")
        sweep = str(table["sweep"][0])
    row = table.filter(pl.col("sweep") == sweep)
    if row.height == 0:
        raise InvalidParameterError(f"no complete sweep {sweep!r} in store {store.path}; sweeps: "
                                    f"{', '.join(table['sweep'].to_list()) or '(none)'}")
    split: Any = group_by
    title = None
    if split is None:
        try:
            split, title = default_split(store)
        except InvalidParameterError:
            split = None
    return charts_iv.sweep_chart(iv.interventions(store, sweep), row.row(0, named=True), store.examples, store.tokens,
                                 split, title)


@dataclass(frozen=True)
class Kind:
    """One `actstore chart` kind: what it draws and the function building it from a store."""

    name: str
    help: str
    build: Callable[..., alt.TopLevelMixin]


_BUILDERS: dict[str, Callable[..., alt.TopLevelMixin]] = {
    "dla-heads": chart_dla_heads,
    "dla-components": chart_dla_components,
    "dla-split": chart_dla_split,
    "attention": chart_attention,
    "attention-roles": chart_attention_roles,
    "logit-lens": chart_logit_lens,
    "neurons": chart_neurons,
    "ov-circuit": chart_ov_circuit,
    "qk-circuit": chart_qk_circuit,
    "accuracy": chart_accuracy,
    "pca": probes.chart_pca,
    "sweep": chart_sweep,
    "weights": weights.chart_weights,
    "weight-svd": weights.chart_weight_svd,
    "weight-fourier": weights.chart_weight_fourier,
}
KINDS: dict[str, Kind] = {name: Kind(name, KIND_HELP[name], _BUILDERS[name]) for name in KIND_HELP}


def kind_options(kind: str) -> tuple[str, ...]:
    """The options chart `kind` uses (its builder's keyword parameters)."""
    if kind not in KINDS:
        raise InvalidParameterError(f"unknown chart kind {kind!r}; kinds: {', '.join(KINDS)}")
    params = inspect.signature(KINDS[kind].build).parameters.values()
    return tuple(p.name for p in params if p.kind == p.KEYWORD_ONLY or (p.default is not p.empty))


def make_chart(store: Store, kind: str, **options: Any) -> alt.TopLevelMixin:
    """Chart `kind` of `store`; unset options take the task's defaults, options `kind` does not use are refused."""
    used = kind_options(kind)
    given = {k: v for k, v in options.items() if v is not None}
    unused = [k for k in given if k not in used]
    if unused:
        raise InvalidParameterError(f"chart {kind} does not use option {unused[0]!r} (it uses: {', '.join(used)})")
    return KINDS[kind].build(store, **given)


__all__ = ["KINDS", "Kind", "all_heads", "attention_pattern_table", "attention_roles_table", "default_query_role",
           "default_split", "default_target", "default_x", "kind_options", "make_chart", "token_roles", "top_heads"]
