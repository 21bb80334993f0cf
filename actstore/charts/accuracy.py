"""Accuracy by label: a table from the store's outputs joined with its examples, and its bar chart.

`accuracy_table` is a pure function of `store.outputs` (one row per example and answer, with a
boolean `correct`) and `store.examples` (labels); it is what the report prints and charts.
"""

from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import polars as pl

from actstore.charts import style
from actstore.charts.tables import check_split, require_columns

# columns of meta/examples that are not labels
BASE_COLUMNS = frozenset({
    "example_id", "split", "text", "tokens", "length", "answer_positions", "answer_tokens", "counter_tokens",
})
MAX_GROUPS = 12  # labels with more distinct values (operands, sums) are not grouped by by default
MAX_BARS = 60    # bars of one label in the chart (an explicit group_by may ask for more than MAX_GROUPS)


def label_columns(examples: pl.DataFrame, max_groups: int = MAX_GROUPS) -> list[str]:
    """Label columns of `examples` worth grouping by: scalar, with 2..max_groups distinct values
    (role positions such as `end_pos` and what the corrupted twin changed, `twin_*`, are not labels
    of the clean example)."""
    out = []
    for name, dtype in examples.schema.items():
        if name in BASE_COLUMNS or name.endswith("_pos") or name.startswith("twin_") \
                or isinstance(dtype, (pl.List, pl.Array, pl.Struct)):
            continue
        if 2 <= examples.get_column(name).n_unique() <= max_groups:
            out.append(name)
    return out


def accuracy_table(outputs: pl.DataFrame, examples: pl.DataFrame,
                   group_by: Sequence[str] | None = None) -> pl.DataFrame:
    """Accuracy overall, per answer position and per value of each label in `group_by`.

    Returns label, value, examples (count), accuracy (fraction of answers correct), exact
    (fraction of examples with every answer correct), mean_loss, mean_logit_diff; the first
    row is label '(all)'. The mean columns are left out when outputs lack loss / logit_diff.
    """
    require_columns(outputs, ["example_id", "answer_idx", "correct"], "accuracy_table (outputs)")
    require_columns(examples, ["example_id"], "accuracy_table (examples)")
    labels = list(group_by) if group_by is not None else label_columns(examples)
    require_columns(examples, labels, "accuracy_table (examples)")
    extra = [c for c in ("loss", "logit_diff") if c in outputs.columns]
    rows = outputs.select("example_id", "answer_idx", "correct", *extra).join(
        examples.select("example_id", *labels), on="example_id", how="inner")

    def group(label: str, value: pl.Expr) -> pl.DataFrame:
        t = rows.with_columns(value=value)
        per_example = t.group_by("value", "example_id").agg(pl.col("correct").all().alias("all_correct"))
        stats = t.group_by("value").agg(
            accuracy=pl.col("correct").cast(pl.Float64).mean(),
            mean_loss=pl.col("loss").mean() if "loss" in extra else pl.lit(None, dtype=pl.Float64),
            mean_logit_diff=pl.col("logit_diff").mean() if "logit_diff" in extra else pl.lit(None, dtype=pl.Float64),
        )
        exact = per_example.group_by("value").agg(
            examples=pl.len().cast(pl.Int64), exact=pl.col("all_correct").cast(pl.Float64).mean())
        return (stats.join(exact, on="value").with_columns(label=pl.lit(label))
                .sort("value")
                .select("label", "value", "examples", "accuracy", "exact", "mean_loss", "mean_logit_diff"))

    parts = [group("(all)", pl.lit("all"))]
    if rows.get_column("answer_idx").n_unique() > 1:
        parts.append(group("answer", pl.format("answer {}", pl.col("answer_idx"))))
    for label in labels:
        parts.append(group(label, pl.col(label).cast(pl.String).fill_null("none")))
    out = pl.concat([p.with_columns(pl.col("mean_logit_diff").cast(pl.Float64)) for p in parts])
    return out.drop([c for c in ("mean_loss", "mean_logit_diff") if out.get_column(c).null_count() == out.height])


def accuracy_bars(table: pl.DataFrame) -> alt.FacetChart:
    """Accuracy per value of each label (one panel per label), from `accuracy_table`."""
    require_columns(table, ["label", "value", "accuracy", "examples"], "accuracy_bars")
    for label, part in table.group_by("label"):
        check_split(part, "value", str(label[0]), "accuracy_bars", limit=MAX_BARS)
    order = table.get_column("label").unique(maintain_order=True).to_list()
    base = alt.Chart(table).mark_bar().encode(
        x=alt.X("value:N", title=None, sort=None, axis=alt.Axis(labelAngle=-30)),
        y=alt.Y("accuracy:Q", title="Accuracy", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("accuracy:Q", title="Accuracy", scale=alt.Scale(scheme="redyellowgreen", domain=[0, 1]),
                        legend=None),
        tooltip=[alt.Tooltip("label:N", title="Label"), alt.Tooltip("value:N", title="Value"),
                 alt.Tooltip("accuracy:Q", title="accuracy", format=".2%"),
                 alt.Tooltip("exact:Q", title="all answers correct", format=".2%"),
                 alt.Tooltip("examples:Q", title="examples")],
    ).properties(width=alt.Step(28), height=160)
    return base.facet(facet=alt.Facet("label:N", sort=order, title=None), columns=4).resolve_scale(
        x="independent").properties(title=style.chart_title("Accuracy by label", "fraction of answers correct"))


__all__ = ["accuracy_bars", "accuracy_table", "label_columns"]
