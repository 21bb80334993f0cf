"""Logit lens lines over `actstore.query.logit_lens` tables.

Input rows: example_id, answer_idx, answer_pos, target, layer, stage, value: the answer's logit
(or logit difference) read off the residual stream after each stage. The x axis walks the
stages in residual order (layer, then the stage's first appearance within a layer).
"""

from __future__ import annotations

import altair as alt
import polars as pl

from actstore.charts import style
from actstore.charts.tables import check_split, join_labels, pick_target, require_columns, summarise
from actstore.errors import InvalidParameterError



def stage_label() -> pl.Expr:
    """'L1 resid_mid'-style label of a (layer, stage) row; stages with no layer keep their name."""
    return (pl.when(pl.col("layer").is_null()).then(pl.col("stage").cast(pl.String))
            .otherwise(pl.format("L{} {}", pl.col("layer"), pl.col("stage"))))


def stage_order(table: pl.DataFrame) -> list[str]:
    """Stage labels in residual order: layer-less stages (embeddings) first unless named 'final'."""
    t = table.select("layer", "stage").with_row_index("first").group_by("layer", "stage").agg(pl.col("first").min())
    t = t.with_columns(
        rank=pl.when(pl.col("layer").is_not_null()).then(pl.col("layer").cast(pl.Float64))
        .when(pl.col("stage").cast(pl.String).str.contains("(?i)final|unembed|logit")).then(pl.lit(float("inf")))
        .otherwise(pl.lit(-1.0)),
        label=stage_label(),
    )
    return t.sort("rank", "first").get_column("label").to_list()


def logit_lens_lines(
    lens: pl.DataFrame,
    target: str | None = None,
    examples: pl.DataFrame | None = None,
    group_by: str | None = None,
) -> alt.LayerChart:
    """Mean answer logit (or logit difference) after each residual stage, one line per answer
    position, or per value of label `group_by` (joined from `examples`), with a 95% CI band."""
    require_columns(lens, ["layer", "stage"], "logit_lens_lines")
    tname = target or (str(lens.get_column("target")[0]) if "target" in lens.columns and lens.height else "correct")
    table = pick_target(lens, target, "logit_lens_lines")
    order = stage_order(table)
    table = table.with_columns(point=stage_label())
    if group_by is not None:
        if examples is None:
            raise InvalidParameterError("logit_lens_lines: group_by needs examples= (store.examples)")
        table = join_labels(table, examples, [group_by], "logit_lens_lines")
        table = table.with_columns(line=pl.col(group_by).cast(pl.String).fill_null("none"))
        line_title = group_by
    elif "answer_idx" in table.columns and table.get_column("answer_idx").n_unique() > 1:
        table = table.with_columns(line=pl.format("answer {}", pl.col("answer_idx")))
        line_title = "Answer"
    else:
        table = table.with_columns(line=pl.lit("all examples"))
        line_title = "Examples"
    check_split(table, "line", group_by or "answer_idx", "logit_lens_lines")
    summary = summarise(table, ["line", "point"])
    y_title = "Logit difference" if tname == "diff" else "Correct-token logit"
    x = alt.X("point:N", sort=order, title="Residual stream stage", axis=alt.Axis(labelAngle=-45))
    colour = alt.Color("line:N", title=line_title)
    band = alt.Chart().mark_area(opacity=0.2).encode(x=x, y="ci_low:Q", y2="ci_high:Q", color=colour)
    line = alt.Chart().mark_line(point=True).encode(
        x=x, y=alt.Y("mean:Q", title=f"mean {y_title.lower()}"), color=colour,
        tooltip=[
            alt.Tooltip("point:N", title="Stage"),
            alt.Tooltip("line:N", title=line_title),
            style.value_tooltip("mean", f"mean {y_title.lower()}"),
            style.value_tooltip("ci_low", "95% CI low"),
            style.value_tooltip("ci_high", "95% CI high"),
            alt.Tooltip("n:Q", title="examples"),
        ],
    )
    zero = alt.Chart().mark_rule(strokeDash=[4, 4], color="gray").encode(y=alt.datum(0))
    width = min(max(style.PLOT_WIDTH, 40 * len(order)), 1200)
    title = style.chart_title(f"Logit lens: {y_title.lower()} through the residual stream",
                              "mean over examples, 95% CI band")
    chart = alt.layer(band, line, zero, data=summary)
    return chart.properties(width=width, height=style.PLOT_HEIGHT, title=title)  # type: ignore[return-value]


__all__ = ["logit_lens_lines", "stage_order"]
