"""`breakdown(table, by, examples)`: any query result split by example labels.

Joins the table's rows with the label columns of `examples` by example_id, groups by the labels
plus the table's own key columns (component, layer, head, answer_idx, stage, ...) and returns
per group: mean, std (sample, ddof 1), n and a 95% confidence interval for the mean from
Student's t with n - 1 degrees of freedom (mean +- t * std / sqrt(n); null when n < 2).
The carry split of the addition seed is `breakdown(dla(store), group_by='carry_2', examples=store)`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import polars as pl

from actstore.errors import InvalidParameterError, UnknownColumnError

# columns of the query tables that identify an item (not an example): kept as group keys
KEY_COLUMNS = ("target", "token", "answer_idx", "component", "layer", "head", "neuron", "source", "stage", "q_role",
               "k_role")
Z975 = 1.959963984540054  # standard normal 97.5% quantile


def breakdown(table: pl.DataFrame, group_by: str | Sequence[str], examples: Any = None, value: str = "value",
              keys: Sequence[str] | None = None) -> pl.DataFrame:
    """Group `table` by label columns `group_by` (+ `keys`) and summarise `value`.

    examples: the examples table (or a store, whose `.examples` is used) holding the labels; not
              needed when the `group_by` columns are already in `table`
    keys:     item columns to keep apart (default: those of KEY_COLUMNS present in the table)
    returns:  group_by..., keys..., mean, std, n, ci_low, ci_high (95%, Student t), in label order
              and, within a label, in the table's item order
    """
    by = [group_by] if isinstance(group_by, str) else list(group_by)  # [] summarises each item over all examples
    if value not in table.columns:
        raise UnknownColumnError(
            f"breakdown: no value column {value!r} in the table (columns: {', '.join(table.columns)})")
    if not table.schema[value].is_numeric():
        raise InvalidParameterError(f"breakdown: value column {value!r} is {table.schema[value]}, not numeric")
    table = _with_labels(table, by, examples)
    keys = [k for k in KEY_COLUMNS if k in table.columns and k not in by] if keys is None else list(keys)
    for k in keys:
        if k not in table.columns:
            raise UnknownColumnError(
                f"breakdown: no key column {k!r} in the table (columns: {', '.join(table.columns)})")
    groups = [*by, *keys]
    v = pl.col(value).cast(pl.Float64)
    stats = dict(mean=v.mean(), std=v.std(ddof=1), n=v.count().cast(pl.Int64))
    out = table.group_by(groups, maintain_order=True).agg(**stats) if groups else table.select(**stats)
    out = with_interval(out)
    return out.sort(by, maintain_order=True, nulls_last=True) if by else out


def with_interval(stats: pl.DataFrame) -> pl.DataFrame:
    """`stats` (mean, std, n per row) plus ci_low, ci_high: the 95% Student t interval of the mean
    (null where n < 2). Every aggregate a query returns has this shape."""
    ns = stats.get_column("n").unique().to_list()
    t = pl.DataFrame({"n": ns, "_t": [t975(int(n) - 1) if n and n > 1 else None for n in ns]},
                     schema={"n": stats.schema["n"], "_t": pl.Float64})
    half = pl.col("_t") * pl.col("std") / pl.col("n").cast(pl.Float64).sqrt()
    return stats.join(t, on="n", how="left", maintain_order="left").with_columns(
        ci_low=pl.col("mean") - half, ci_high=pl.col("mean") + half).drop("_t")


def _with_labels(table: pl.DataFrame, by: list[str], examples: Any) -> pl.DataFrame:
    missing = [c for c in by if c not in table.columns]
    if not missing:
        return table
    if examples is None:
        raise UnknownColumnError(f"breakdown: {', '.join(map(repr, missing))} not in the table; pass examples= "
                                 f"(store.examples) to join labels by example_id")
    labels = examples.examples if hasattr(examples, "examples") else examples
    if not isinstance(labels, pl.DataFrame):
        raise InvalidParameterError(
            f"breakdown: examples must be a store or a Polars DataFrame, got {type(labels).__name__}")
    check_label_columns(labels, missing)
    if "example_id" not in table.columns or "example_id" not in labels.columns:
        raise UnknownColumnError("breakdown: joining labels needs an example_id column in both tables")
    return table.join(labels.select("example_id", *missing), on="example_id", how="left", maintain_order="left")


@lru_cache(maxsize=4096)
def t975(df: int) -> float:
    """97.5% quantile of Student's t with `df` degrees of freedom (two-sided 95% interval)."""
    if df < 1:
        raise InvalidParameterError(f"degrees of freedom must be >= 1, got {df}")
    if df > 200:  # Cornish-Fisher expansion about the normal quantile (Abramowitz & Stegun 26.7.5)
        z = Z975
        g = [(z**3 + z) / 4, (5 * z**5 + 16 * z**3 + 3 * z) / 96,
             (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
             (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160]
        return z + sum(gi / df ** (i + 1) for i, gi in enumerate(g))
    lo, hi = 0.0, 100.0
    for _ in range(80):  # bisection on P(|T| <= t) = 0.95
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _central_prob(mid, df) < 0.95 else (lo, mid)
    return (lo + hi) / 2


def _central_prob(t: float, df: int) -> float:
    """P(|T| <= t) for integer df, by the finite series in cos(theta) (Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 0:
        term, total = 1.0, 1.0
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        return s * total
    if df == 1:
        return 2 * theta / math.pi
    term = math.cos(theta)
    total = term
    for k in range(1, (df - 1) // 2):
        term *= c2 * (2 * k) / (2 * k + 1)
        total += term
    return 2 / math.pi * (theta + s * total)


def check_label_columns(examples: pl.DataFrame, columns: Sequence[str]) -> None:
    """UnknownColumnError naming the first of `columns` that `examples` lacks, and the labels it has."""
    absent = [c for c in columns if c not in examples.columns]
    if absent:
        base = {"example_id", "split", "text", "tokens", "length", "answer_positions", "answer_tokens",
                "counter_tokens", "corrupted_tokens"}
        label_cols = [c for c in examples.columns if c not in base] or examples.columns
        raise UnknownColumnError(f"breakdown: no label column {absent[0]!r} (labels of these examples: "
                                 f"{', '.join(label_cols)})")
