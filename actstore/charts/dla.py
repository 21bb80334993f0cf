"""Direct logit attribution charts over `actstore.query.dla` tables.

Input rows: example_id, answer_idx, answer_pos, target, component, layer, head, value (one per
example, answer and component), or the output of `breakdown` (keys + mean, ci_low, ci_high, n).
Each builder averages over examples first, so the chart holds one row per cell or bar.
"""

from __future__ import annotations

from collections.abc import Mapping

import altair as alt
import polars as pl

from actstore.charts import style
from actstore.charts.tables import (
    check_split,
    component_order,
    join_labels,
    pick_target,
    require_columns,
    summarise,
)
from actstore.errors import InvalidParameterError

MAX_FACETS = 12          # more answers than this are averaged together instead of faceted
DEFAULT_TOP = 30         # bars shown when a model has many components


def _answers(table: pl.DataFrame) -> list[int]:
    if "answer_idx" not in table.columns:
        return []
    return sorted(table.get_column("answer_idx").unique().drop_nulls().to_list())


def _with_answer(table: pl.DataFrame, facet: bool) -> tuple[pl.DataFrame, list[str]]:
    """Add a readable `answer` column when faceting by answer; returns the extra group keys."""
    answers = _answers(table)
    if facet and 1 < len(answers) <= MAX_FACETS:
        return table.with_columns(answer=pl.format("answer {}", pl.col("answer_idx"))), ["answer"]
    return table, []


def _target_name(table: pl.DataFrame, target: str | None) -> str:
    if target:
        return target
    if "target" in table.columns and table.height:
        return str(table.get_column("target")[0])
    return "correct"


def _value_title(target: str) -> str:
    """Axis title for a target: the two built-in ones by name, any other (a custom direction) as given."""
    if target == "diff":
        return "DLA to logit difference"
    if target == "correct":
        return "DLA to correct logit"
    return f"DLA to {target}"


def _top_components(summary: pl.DataFrame, top: int | None) -> list[str]:
    """Component names in residual order, keeping the `top` largest by max |mean| over groups."""
    names = summary.get_column("component").unique().to_list()
    if top is not None and len(names) > top:
        size = summary.group_by("component").agg(pl.col("mean").abs().max().alias("size"))
        names = size.sort("size", descending=True).head(top).get_column("component").to_list()
    return component_order(names)


def dla_heatmap(dla: pl.DataFrame, target: str | None = None, facet_answers: bool = True) -> alt.Chart:
    """Mean direct attribution of each attention head as a layer x head heatmap.

    One panel per answer position when there are several (up to 12), else averaged.
    """
    require_columns(dla, ["component", "layer", "head"], "dla_heatmap")
    tname = _target_name(dla, target)
    table = pick_target(dla, target, "dla_heatmap")
    table = table.filter(pl.col("head").is_not_null() & pl.col("component").str.contains(r"^L\d+H\d+$"))
    if table.height == 0:
        raise InvalidParameterError("dla_heatmap: no per-head rows; run dla(store, level='head')")
    table, facet = _with_answer(table, facet_answers)
    summary = summarise(table, [*facet, "component", "layer", "head"])
    title = _value_title(tname)
    n_heads = int(summary.get_column("head").cast(pl.Int64).max() or 0) + 1  # type: ignore[arg-type]
    n_layers = int(summary.get_column("layer").cast(pl.Int64).max() or 0) + 1  # type: ignore[arg-type]
    base = alt.Chart(summary).mark_rect().encode(
        x=alt.X("head:O", title="Head"),
        y=alt.Y("layer:O", title="Layer"),
        color=style.diverging("mean", title, summary.get_column("mean")),
        tooltip=[
            alt.Tooltip("component:N", title="Head"),
            style.value_tooltip("mean", f"mean {title}"),
            style.value_tooltip("ci_low", "95% CI low"),
            style.value_tooltip("ci_high", "95% CI high"),
            alt.Tooltip("n:Q", title="examples"),
        ],
    ).properties(width=max(style.CELL * n_heads, 120), height=max(style.CELL * n_layers, 60))
    chart = base.facet(column=alt.Column("answer:N", title=None)) if facet else base
    return chart.properties(title=style.chart_title(f"{title} per attention head", "mean over examples"))


def _bars(summary: pl.DataFrame, order: list[str], group: str | None, group_title: str, title: str,
          signed_colour: bool) -> alt.LayerChart:
    """Bars of `mean` per component with 95% CI whiskers; grouped side by side by `group`."""
    x = alt.X("component:N", sort=order, title="Component", axis=alt.Axis(labelAngle=-45))
    tooltip = [
        alt.Tooltip("component:N", title="Component"),
        style.value_tooltip("mean", f"mean {title}"),
        style.value_tooltip("ci_low", "95% CI low"),
        style.value_tooltip("ci_high", "95% CI high"),
        alt.Tooltip("n:Q", title="examples"),
    ]
    enc: dict = {"x": x, "y": alt.Y("mean:Q", title=f"mean {title}"), "tooltip": tooltip}
    if group:
        enc["xOffset"] = alt.XOffset(f"{group}:N")
        enc["color"] = alt.Color(f"{group}:N", title=group_title)
        tooltip.insert(1, alt.Tooltip(f"{group}:N", title=group_title))
    elif signed_colour:
        enc["color"] = style.diverging("mean", title, summary.get_column("mean"))
    bars = alt.Chart().mark_bar().encode(**enc)
    err_enc: dict = {"x": x, "y": alt.Y("ci_low:Q", title=f"mean {title}"), "y2": alt.Y2("ci_high:Q")}
    if group:
        err_enc["xOffset"] = alt.XOffset(f"{group}:N")
    whiskers = alt.Chart().mark_errorbar(ticks=True).encode(**err_enc)
    width = max(style.PLOT_WIDTH, 18 * len(order) * (1 + (group is not None)))
    layered = alt.layer(bars, whiskers, data=summary)
    return layered.properties(width=min(width, 1400), height=style.PLOT_HEIGHT)  # type: ignore[return-value]


def component_bars(dla: pl.DataFrame, target: str | None = None, top: int | None = DEFAULT_TOP) -> alt.LayerChart:
    """Mean direct attribution of each component (embeddings, heads, MLPs, bias) as bars with 95% CIs.

    Several answer positions are drawn side by side, coloured by answer; `top` keeps the
    components with the largest mean magnitude.
    """
    require_columns(dla, ["component"], "component_bars")
    tname = _target_name(dla, target)
    table = pick_target(dla, target, "component_bars")
    table, facet = _with_answer(table, True)
    summary = summarise(table, [*facet, "component"])
    order = _top_components(summary, top)
    summary = summary.filter(pl.col("component").is_in(order))
    title = _value_title(tname)
    chart = _bars(summary, order, facet[0] if facet else None, "Answer", title, signed_colour=True)
    sub = "mean over examples, 95% CI" + (f"; top {top} components by size" if top and len(order) >= top else "")
    return chart.properties(title=style.chart_title(f"{title} by component", sub))


def component_bars_by(
    dla: pl.DataFrame,
    examples: pl.DataFrame,
    group_by: str | Mapping[int, str],
    target: str | None = None,
    top: int | None = DEFAULT_TOP,
    label_title: str | None = None,
) -> alt.FacetChart | alt.LayerChart:
    """Component attributions split by an example label (e.g. carry vs no carry), one panel per answer.

    `group_by` names a column of `examples`, or maps answer_idx -> column so that each answer is
    split by its own label (addition: digit i by `carry_i`); answers missing from the mapping
    are shown unsplit as 'all'. Boolean labels read 'carry_2' / 'not carry_2'.
    """
    require_columns(dla, ["component", "example_id"], "component_bars_by")
    tname = _target_name(dla, target)
    table = pick_target(dla, target, "component_bars_by")
    if isinstance(group_by, str):
        table = join_labels(table, examples, [group_by], "component_bars_by")
        table = table.with_columns(split=_label_text(table, group_by))
        split_title = label_title or group_by
    else:
        if not group_by:
            raise InvalidParameterError("component_bars_by: the group_by mapping is empty")
        require_columns(table, ["answer_idx"], "component_bars_by")
        cols = sorted(set(group_by.values()))
        table = join_labels(table, examples, cols, "component_bars_by")
        split = pl.lit("all")
        for idx, col in group_by.items():
            split = pl.when(pl.col("answer_idx") == idx).then(_label_text(table, col, generic=True)).otherwise(split)
        table = table.with_columns(split=split)
        split_title = label_title or "label"
    check_split(table, "split", group_by if isinstance(group_by, str) else split_title, "component_bars_by")
    table, facet = _with_answer(table, True)
    summary = summarise(table, [*facet, "split", "component"])
    order = _top_components(summary, top)
    summary = summary.filter(pl.col("component").is_in(order))
    title = _value_title(tname)
    layer = _bars(summary, order, "split", split_title, title, signed_colour=False)
    name = group_by if isinstance(group_by, str) else split_title
    chart_title = style.chart_title(f"{title} by component, split by {name}", "mean over examples, 95% CI")
    if facet:
        inner = layer.properties(width=min(max(260, 30 * len(order)), 700), height=200)
        return inner.facet(facet=alt.Facet("answer:N", title=None), columns=2).properties(title=chart_title)
    return layer.properties(title=chart_title)


def _label_text(table: pl.DataFrame, col: str, generic: bool = False) -> pl.Expr:
    """A label column as text: booleans become 'col' / 'not col' (or 'yes'/'no' when generic)."""
    dtype = table.schema[col]
    if dtype == pl.Boolean:
        yes, no = ("yes", "no") if generic else (col, f"not {col}")
        return pl.when(pl.col(col)).then(pl.lit(yes)).otherwise(pl.lit(no))
    return pl.col(col).cast(pl.String).fill_null("none")


__all__ = ["component_bars", "component_bars_by", "dla_heatmap"]
