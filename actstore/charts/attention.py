"""Attention charts over `actstore.query.attention` tables, with token roles on the axes.

Input rows (raw): example_id, layer, head, q_pos, k_pos, q_role, k_role, prob. Key positions
that share a role are summed (attention *mass* on that role), then averaged over the query
positions of each query role, counting keys a query never sees (causal mask) as 0. An
aggregated table (q_role, k_role, mean per head, as `attention(store, group_by=[...])` streams it) is
charted as given: there a query row counts only where it sees a key of that role, so masked
cells are absent rather than 0 (the total mass per cell is the same).
"""

from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import polars as pl

from actstore.charts import style
from actstore.charts.tables import Z95, check_split, join_labels, require_columns, role_label, summarise
from actstore.errors import InvalidParameterError

MAX_PANELS = 48  # heads drawn in one chart; pass heads= to choose


def _head_label() -> pl.Expr:
    return pl.format("L{}H{}", pl.col("layer"), pl.col("head"))


def _role(column: str) -> pl.Expr:
    """A role column with missing / empty roles named 'other' (see tables.role_label)."""
    return pl.when(pl.col(column).fill_null("") == "").then(pl.lit("other")).otherwise(pl.col(column)).alias(column)


def _select_heads(attn: pl.DataFrame, heads: Sequence[tuple[int, int]] | None, what: str) -> pl.DataFrame:
    if heads is None:
        return attn
    keep = pl.DataFrame({"layer": [int(h[0]) for h in heads], "head": [int(h[1]) for h in heads]},
                        schema={"layer": attn.schema["layer"], "head": attn.schema["head"]})
    out = attn.join(keep, on=["layer", "head"], how="semi")
    if out.height == 0:
        raise InvalidParameterError(f"{what}: none of heads={list(heads)} is in the attention table")
    return out


def role_summary(attn: pl.DataFrame, split: str | None = None) -> pl.DataFrame:
    """Mean attention mass from each query role to each key role, per head (and `split` value).

    attn: raw attention rows (plus a `split` column if given). A query's mass on a key role is
    the sum of its probabilities on keys of that role; a key role it never attends to (causal
    mask) counts as 0. Mean and std come from per-group sums and sums of squares over the
    nonzero masses and the number of queries, so no zero rows are materialised.
    Returns layer, head, q_role, k_role, [split], mean, std, n, ci_low, ci_high.
    """
    require_columns(attn, ["example_id", "layer", "head", "q_pos", "q_role", "k_role", "value"], "role_summary")
    extra = [split] if split else []
    groups = ["layer", "head", "q_role", *extra]
    t = attn.with_columns(_role("q_role"), _role("k_role"))
    mass = t.group_by(["example_id", "q_pos", *groups, "k_role"]).agg(mass=pl.col("value").sum())
    sums = mass.group_by([*groups, "k_role"]).agg(s1=pl.col("mass").sum(), s2=(pl.col("mass") ** 2).sum())
    queries = t.select(["example_id", "q_pos", *groups]).unique().group_by(groups).agg(n=pl.len())
    grid = queries.join(t.select("k_role").unique(), how="cross")
    out = grid.join(sums, on=[*groups, "k_role"], how="left").with_columns(
        pl.col("s1").fill_null(0.0), pl.col("s2").fill_null(0.0))
    n = pl.col("n").cast(pl.Float64)
    mean = pl.col("s1") / n
    var = pl.when(n > 1).then(((pl.col("s2") - n * mean**2) / (n - 1)).clip(lower_bound=0.0)).otherwise(None)
    out = out.with_columns(mean=mean, std=var.sqrt())
    half = Z95 * pl.col("std").fill_null(0.0) / n.sqrt()
    return out.with_columns(ci_low=pl.col("mean") - half, ci_high=pl.col("mean") + half).drop("s1", "s2")


def role_order(attn: pl.DataFrame) -> list[str]:
    """Token roles in order of their mean position (keys and queries together); 'other' last.

    `attn` is raw attention rows (q_pos, k_pos), or any table with `role` and `pos` columns
    such as `store.tokens`; without positions the roles are sorted by name.
    """
    if {"role", "pos"} <= set(attn.columns):
        both = attn.select(pl.col("role"), pl.col("pos"))
    elif "k_pos" in attn.columns:
        both = pl.concat([
            attn.select(role=pl.col("q_role"), pos=pl.col("q_pos")),
            attn.select(role=pl.col("k_role"), pos=pl.col("k_pos")),
        ])
    else:
        roles = {role_label(r) for c in ("q_role", "k_role") if c in attn.columns for r in attn.get_column(c).to_list()}
        return sorted(roles, key=lambda r: (r == "other", r))
    means = both.with_columns(_role("role")).group_by("role").agg(pl.col("pos").mean()).sort("pos", "role")
    names = means.get_column("role").to_list()
    return [r for r in names if r != "other"] + (["other"] if "other" in names else [])


def _aggregated(attn: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """An aggregated attention table (from attention(..., group_by=[...])) with roles named and 95% CIs."""
    out = attn.with_columns([_role(c) for c in ("q_role", "k_role") if c in attn.columns])
    return summarise(out, keys)


def _sorted_order(order: list[str], present: set[str]) -> list[str]:
    """`order` restricted to the roles present, with any role it misses appended."""
    return [r for r in order if r in present] + sorted(present - set(order))


def attention_heatmap(attn: pl.DataFrame, heads: Sequence[tuple[int, int]] | None = None,
                      roles: Sequence[str] | None = None) -> alt.FacetChart:
    """Average attention pattern of each head as a query-role x key-role heatmap (one panel per head).

    attn: raw rows, or the aggregated table of attention(store, group_by=['q_role', 'k_role']).
    Cell = mean over examples and query positions of that role of the attention mass on keys
    of the key role; rows sum to 1 for a softmax head. `roles` orders the axes (default: by
    mean position in raw rows, else by name).
    """
    require_columns(attn, ["layer", "head", "q_role", "k_role"], "attention_heatmap")
    attn = _select_heads(attn, heads, "attention_heatmap")
    if "value" in attn.columns:
        summary = role_summary(attn)
    else:
        require_columns(attn, ["mean"], "attention_heatmap")
        summary = _aggregated(attn, ["layer", "head", "q_role", "k_role"])
    present = set(summary.get_column("q_role").to_list()) | set(summary.get_column("k_role").to_list())
    order = _sorted_order(list(roles) if roles is not None else role_order(attn), present)
    summary = summary.with_columns(head_label=_head_label())
    n_panels = summary.select("layer", "head").unique().height
    if n_panels > MAX_PANELS:
        raise InvalidParameterError(
            f"attention_heatmap: {n_panels} heads is too many for one chart (max {MAX_PANELS}); "
            "pass heads=[(layer, head), ...]")
    head_order = [f"L{layer_idx}H{h}"
                  for layer_idx, h in summary.select("layer", "head").unique().sort("layer", "head").iter_rows()]
    n_heads = summary.get_column("head").n_unique()
    side = max(style.CELL * len(order), 100)
    base = alt.Chart(summary).mark_rect().encode(
        x=alt.X("k_role:N", sort=order, title="Key token role"),
        y=alt.Y("q_role:N", sort=order, title="Query token role"),
        color=style.sequential("mean", "Attention mass"),
        tooltip=[
            alt.Tooltip("head_label:N", title="Head"),
            alt.Tooltip("q_role:N", title="Query role"),
            alt.Tooltip("k_role:N", title="Key role"),
            style.value_tooltip("mean", "mean attention mass"),
            alt.Tooltip("n:Q", title="queries"),
        ],
    ).properties(width=side, height=side)
    return base.facet(
        facet=alt.Facet("head_label:N", sort=head_order, title=None), columns=min(max(n_heads, 1), 6)
    ).properties(title=style.chart_title("Average attention pattern by token role",
                                         "attention mass from each query role to each key role, mean over examples"))


def attention_role_bars(
    attn: pl.DataFrame,
    query_role: str,
    key_roles: Sequence[str] | None = None,
    heads: Sequence[tuple[int, int]] | None = None,
    examples: pl.DataFrame | None = None,
    group_by: str | None = None,
    roles: Sequence[str] | None = None,
) -> alt.LayerChart | alt.FacetChart:
    """Attention mass from the `query_role` token to each key role, per head, as grouped bars.

    attn: raw rows, or the aggregated table of attention(store, query=query_role, group_by=['k_role'
    (, label)]). `key_roles` restricts the bars (e.g. IOI END -> IO, S1, S2); `group_by` splits by a
    label column (joined from `examples` for raw rows), one row of panels per label value.
    """
    require_columns(attn, ["layer", "head", "k_role"], "attention_role_bars")
    attn = _select_heads(attn, heads, "attention_role_bars")
    raw = "value" in attn.columns
    if raw or "q_role" in attn.columns:
        present = set(attn.get_column("q_role").drop_nulls().to_list())
        if query_role not in present:
            raise InvalidParameterError(
                f"attention_role_bars: query role {query_role!r} not in the table (roles: {sorted(present)})")
        rows = attn.filter(pl.col("q_role") == query_role)
    else:
        rows = attn
    if group_by is not None:
        if raw:
            if examples is None:
                raise InvalidParameterError("attention_role_bars: group_by= needs examples= (store.examples)")
            rows = join_labels(rows, examples, [group_by], "attention_role_bars")
        else:
            require_columns(rows, [group_by], "attention_role_bars")
        rows = rows.with_columns(pl.col(group_by).cast(pl.String).fill_null("none").alias("split"))
        check_split(rows, "split", group_by, "attention_role_bars")
    split = ["split"] if group_by is not None else []
    if raw:
        summary = role_summary(rows, split=split[0] if split else None)
    else:
        require_columns(rows, ["mean"], "attention_role_bars")
        summary = _aggregated(rows, ["layer", "head", "k_role", *split])
    present = set(summary.get_column("k_role").to_list())
    order = _sorted_order(list(roles) if roles is not None else role_order(attn), present)
    if key_roles is not None:
        missing = [r for r in key_roles if r not in present]
        if missing:
            raise InvalidParameterError(
                f"attention_role_bars: key roles {missing} not in the table (roles: {order})")
        summary = summary.filter(pl.col("k_role").is_in(list(key_roles)))
        order = list(key_roles)
    summary = summary.with_columns(head_label=_head_label())
    head_order = [f"L{layer_idx}H{h}"
                  for layer_idx, h in summary.select("layer", "head").unique().sort("layer", "head").iter_rows()]
    x = alt.X("head_label:N", sort=head_order, title="Head")
    tooltip = [
        alt.Tooltip("head_label:N", title="Head"),
        alt.Tooltip("k_role:N", title="Key role"),
        style.value_tooltip("mean", "mean attention mass"),
        style.value_tooltip("ci_low", "95% CI low"),
        style.value_tooltip("ci_high", "95% CI high"),
        alt.Tooltip("n:Q", title="queries"),
    ]
    bars = alt.Chart().mark_bar().encode(
        x=x, xOffset=alt.XOffset("k_role:N", sort=order),
        y=alt.Y("mean:Q", title="Attention mass", scale=alt.Scale(domainMin=0)),
        color=alt.Color("k_role:N", sort=order, title="Key token role"), tooltip=tooltip,
    )
    whiskers = alt.Chart().mark_errorbar(ticks=True).encode(
        x=x, xOffset=alt.XOffset("k_role:N", sort=order), y=alt.Y("ci_low:Q", title="Attention mass"), y2="ci_high:Q")
    width = min(max(style.PLOT_WIDTH, 14 * len(head_order) * len(order)), 1400)
    layer = alt.layer(bars, whiskers, data=summary).properties(width=width, height=style.PLOT_HEIGHT)
    title = style.chart_title(f"Attention from {query_role} by key role", "mean over examples, 95% CI")
    if group_by is not None:
        return layer.facet(row=alt.Row("split:N", title=group_by)).properties(title=title)
    return layer.properties(title=title)


__all__ = ["attention_heatmap", "attention_role_bars", "role_order", "role_summary"]
