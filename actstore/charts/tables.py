"""What every chart builder does to a query table before charting it.

Builders receive the tidy tables of `actstore.query` (one row per example and component, or
already aggregated) and must never embed millions of rows in a chart: they check the columns,
pick one target, join labels and reduce to group means with 95% confidence intervals here.
Altair's default data transformer (inline data, MaxRowsError above 5000 rows) is kept on
purpose as a guard: every builder stays under it (cells, bars, or at most 4500 sampled points).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import polars as pl

from actstore.errors import InvalidParameterError, UnknownColumnError

Z95 = 1.959964  # two-sided 95% normal quantile


def require_columns(table: pl.DataFrame, columns: Sequence[str], what: str) -> None:
    """Raise UnknownColumnError naming the first column of `columns` that `table` lacks."""
    if not isinstance(table, pl.DataFrame):
        raise InvalidParameterError(f"{what}: expected a Polars DataFrame, got {type(table).__name__}")
    for c in columns:
        if c not in table.columns:
            raise UnknownColumnError(
                f"{what}: table has no column {c!r} (columns: {', '.join(table.columns)}); "
                f"pass the table returned by the matching actstore.query function"
            )


def pick_target(table: pl.DataFrame, target: str | None, what: str) -> pl.DataFrame:
    """Rows of one target ('correct' / 'diff'): `target`, or the only one present."""
    if "target" not in table.columns:
        return table
    present = table.get_column("target").unique(maintain_order=True).to_list()
    if target is None:
        if len(present) > 1:
            raise InvalidParameterError(f"{what}: table holds targets {present}; pass target= one of them")
        return table
    if target not in present:
        raise InvalidParameterError(f"{what}: target {target!r} not in the table (targets: {present})")
    return table.filter(pl.col("target") == target)


def join_labels(table: pl.DataFrame, examples: pl.DataFrame, labels: Sequence[str], what: str) -> pl.DataFrame:
    """`table` with the label columns of `examples` joined on example_id."""
    require_columns(table, ["example_id"], what)
    require_columns(examples, ["example_id", *labels], f"{what} (examples)")
    wanted = [c for c in labels if c not in table.columns]
    if not wanted:
        return table
    return table.join(examples.select("example_id", *wanted), on="example_id", how="left")


MAX_SPLITS = 12  # label values one chart splits by (bars side by side, panels, lines)


def check_split(table: pl.DataFrame, column: str, label: str, what: str, limit: int = MAX_SPLITS) -> None:
    """Raise InvalidParameterError if `column` (the values of label `label`) has more than `limit` values."""
    n = table.get_column(column).n_unique()
    if n > limit:
        raise InvalidParameterError(
            f"{what}: label {label!r} has {n} values, too many to split a chart by (max {limit}); "
            f"pick a label with fewer values")


def summarise(table: pl.DataFrame, keys: Sequence[str], value: str = "value") -> pl.DataFrame:
    """Group means of `value` by `keys`: keys + mean, std, n, ci_low, ci_high (95%, normal approx).

    A table that is already aggregated (has a `mean` column and no `value`) passes through,
    gaining ci_low / ci_high from its std and n when it has no interval of its own.
    """
    if value not in table.columns and "mean" in table.columns:
        out = table
        if "n" not in out.columns:
            out = out.with_columns(n=pl.lit(None, dtype=pl.Int64))
        if "ci_low" not in out.columns:
            if "std" in out.columns:  # normal 95% interval from the table's own std and n
                half = Z95 * pl.col("std").fill_null(0.0) / pl.col("n").cast(pl.Float64).sqrt()
                out = out.with_columns(ci_low=pl.col("mean") - half, ci_high=pl.col("mean") + half)
            else:
                out = out.with_columns(ci_low=pl.col("mean"), ci_high=pl.col("mean"))
        return out
    require_columns(table, [*keys, value], "summarise")
    out = table.group_by(list(keys), maintain_order=True).agg(
        mean=pl.col(value).mean(),
        std=pl.col(value).std(),
        n=pl.col(value).count(),
    )
    half = Z95 * pl.col("std").fill_null(0.0) / pl.col("n").cast(pl.Float64).sqrt()
    return out.with_columns(ci_low=pl.col("mean") - half, ci_high=pl.col("mean") + half)


_HEAD = re.compile(r"^L(\d+)H(\d+)$")
_NEURON = re.compile(r"^L(\d+)N(\d+)$")
_NUMBERED = re.compile(r"^([a-z_]+?)(\d+)$")
_KIND_RANK = {"attn_bias": 500, "mlp": 1000}


def component_key(name: str) -> tuple[float, float, str]:
    """Sort key putting components in residual-stream order: embeddings, then per layer heads,
    attention bias, MLP, neurons, and the constant bias last; paths 'A>B' sort by B then A."""
    if ">" in name:
        src, dst = name.split(">", 1)
        d, s = component_key(dst), component_key(src)
        return (d[0], d[1] + s[1] / 1e6, name)
    if name == "embed":
        return (-1.0, 0.0, name)
    if name == "pos_embed":
        return (-1.0, 1.0, name)
    if m := _HEAD.match(name):
        return (float(m[1]), float(m[2]), name)
    if m := _NEURON.match(name):
        return (float(m[1]), 2000.0 + float(m[2]), name)
    if (m := _NUMBERED.match(name)) and m[1] in _KIND_RANK:
        return (float(m[2]), float(_KIND_RANK[m[1]]), name)
    return (float("inf"), 0.0, name)


def component_order(names: Sequence[str]) -> list[str]:
    """`names`, deduplicated, in residual-stream order (see component_key)."""
    return sorted(set(names), key=component_key)


def role_label(role: str | None) -> str:
    """Axis label of a token role: tokens without a role are grouped as 'other'."""
    return role if role else "other"


def answer_label(idx: int) -> str:
    return f"answer {idx}"
