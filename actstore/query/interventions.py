"""Stored intervention sweeps as tables: the rows, the sweeps, normalised scores, summaries and
how well attribution patching ranks targets as exact patching does. No model needed.

    interventions(store)            every complete sweep's rows (the SQL view `interventions`)
    sweeps(store)                   one row per sweep: its spec (the SQL view `sweeps`)
    normalised(rows)                + score = (value - corrupted) / (clean - corrupted)
    effects(rows, group_by=...)     mean, std, n, 95% interval per target (and label)
    agreement(atp_rows, exact_rows) Spearman rank correlation of per-target mean effects
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import polars as pl

from actstore.errors import InvalidParameterError
from actstore.query.breakdown import breakdown
from actstore.store.reader import Store
from actstore.store.sweeps import ROW_SCHEMA, list_sweeps, read_sweep

TARGET_KEYS = ("sweep", "kind", "hook", "layer", "head", "pos", "role", "answer_idx", "metric")
SWEEP_SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = {
    "sweep": pl.String, "kind": pl.String, "hook": pl.String, "grain": pl.String, "mode": pl.String,
    "method": pl.String, "mean_over": pl.String, "pos": pl.String, "metrics": pl.String, "receivers": pl.String,
    "receiver_input": pl.String, "start": pl.Int64, "stop": pl.Int64, "parts": pl.Int64, "committed": pl.Int64,
    "complete": pl.Boolean, "spec": pl.String,
}


def interventions(store: Store, sweep: str | Sequence[str] | None = None) -> pl.DataFrame:
    """Rows of every complete sweep (or of `sweep`: ids), each part checked against its record."""
    ids = [s.sweep for s in list_sweeps(store.path) if s.complete]
    if sweep is not None:
        want = [sweep] if isinstance(sweep, str) else list(sweep)
        missing = [w for w in want if w not in ids]
        if missing:
            raise InvalidParameterError(f"no complete sweep {missing[0]!r} in store {store.path}; sweeps: "
                                        f"{', '.join(ids) or '(none)'}")
        ids = want
    frames = [read_sweep(store.path, s, store.ledger.store_sha256) for s in ids]
    return pl.concat(frames) if frames else pl.DataFrame(schema=ROW_SCHEMA)


def sweeps(store: Store) -> pl.DataFrame:
    """One row per sweep in the store (complete or not), with its spec's fields."""
    rows = []
    for s in list_sweeps(store.path):
        d = s.spec
        rows.append({
            "sweep": s.sweep, "kind": d.get("kind"), "hook": d.get("hook"), "grain": d.get("grain"),
            "mode": None if d.get("kind") == "ablate" else d.get("mode"), "method": d.get("method"),
            "mean_over": d.get("mean_over"), "pos": _joined(d.get("pos")), "metrics": _joined(d.get("metrics")),
            "receivers": _joined(d.get("receivers")), "receiver_input": d.get("receiver_input"),
            "start": d.get("start"), "stop": d.get("stop"), "parts": s.n_parts, "committed": s.committed,
            "complete": s.complete, "spec": json.dumps(d, sort_keys=True),
        })
    return pl.DataFrame(rows, schema=SWEEP_SCHEMA)


def _joined(v: Any) -> str | None:
    return None if v is None else ",".join(str(x) for x in v)


def normalised(rows: pl.DataFrame) -> pl.DataFrame:
    """`rows` plus `score` = (value - corrupted) / (clean - corrupted): 1 where the intervention
    restores the clean run, 0 where it leaves the corrupted one (null where clean == corrupted)."""
    gap = pl.col("clean").cast(pl.Float64) - pl.col("corrupted").cast(pl.Float64)
    return rows.with_columns(
        pl.when(gap != 0).then((pl.col("value").cast(pl.Float64) - pl.col("corrupted")) / gap).alias("score"))


def effects(rows: pl.DataFrame, group_by: str | Sequence[str] = (), examples: Any = None,
            value: str = "value") -> pl.DataFrame:
    """Per target (and per label of `group_by`, joined from `examples`): mean, std, n, 95% interval of
    `value` ('value', 'score' after `normalised`, or 'effect' = value - clean, added here). A label
    named like a column of the rows (days' `kind`) is joined and grouped as `<name>_label`."""
    if value == "effect":
        rows = rows.with_columns((pl.col("value").cast(pl.Float64) - pl.col("clean")).alias("effect"))
    elif value == "score" and "score" not in rows.columns:
        rows = normalised(rows)
    by = [group_by] if isinstance(group_by, str) else list(group_by)
    labels = getattr(examples, "examples", examples)
    clash = [c for c in by if c in rows.columns and isinstance(labels, pl.DataFrame) and c in labels.columns]
    if clash:  # a label named like a sweep column (days' 'kind'): joined as '<name>_label'
        rows = rows.join(labels.select("example_id", *[pl.col(c).alias(f"{c}_label") for c in clash]),
                         on="example_id", how="left", maintain_order="left")
        by = [f"{c}_label" if c in clash else c for c in by]
    keys = [k for k in TARGET_KEYS if k in rows.columns and k not in by]
    if "pos" in keys and "role" in keys and rows["role"].null_count() == 0 and rows.height:
        keys.remove("pos")  # positions addressed by role aggregate by role across templates
    return breakdown(rows, group_by=by, examples=examples, value=value, keys=keys)


def agreement(atp: pl.DataFrame, exact: pl.DataFrame, metric: str | None = None) -> dict[str, Any]:
    """How attribution patching ranks targets against exact patching of the same hook and grain:
    Spearman's rank correlation of the per-target mean (over examples and answers) of `metric`
    (default: the first both have); targets addressed by role are keyed by role, not position.
    Returns {'spearman', 'pearson', 'n_targets', 'metric'}."""
    shared = [m for m in exact["metric"].unique(maintain_order=True).to_list() if m in set(atp["metric"].to_list())]
    if metric is None:
        if not shared:
            raise InvalidParameterError("the two sweeps share no metric")
        metric = shared[0]
    keys = ["layer", "head", "pos"]
    if exact.height and exact["role"].null_count() == 0 and atp["role"].null_count() == 0:
        keys = ["layer", "head", "role"]  # positions addressed by role: one target per role across templates

    def per_target(t: pl.DataFrame, name: str) -> pl.DataFrame:
        return (t.filter(pl.col("metric") == metric).group_by(keys).agg(pl.col("value").cast(pl.Float64).mean()
                                                                        .alias(name)))

    both = per_target(atp, "atp").join(per_target(exact, "exact"), on=keys, nulls_equal=True)
    if both.height < 2:
        return {"spearman": None, "pearson": None, "n_targets": both.height, "metric": metric}
    ranked = both.select(pl.col("atp").rank(), pl.col("exact").rank())
    spearman = ranked.select(pl.corr("atp", "exact")).item()
    pearson = both.select(pl.corr("atp", "exact")).item()
    return {"spearman": spearman, "pearson": pearson, "n_targets": both.height, "metric": metric}


def summary(rows: pl.DataFrame) -> pl.DataFrame:
    """One row per target, answer and metric: the mean of value, clean and corrupted over examples,
    the normalised score of those means, (value - corrupted) / (clean - corrupted), n and the 95%
    interval of the mean value. Targets addressed by role are keyed by role, not by position."""
    keys = [k for k in TARGET_KEYS if k in rows.columns]
    if "role" in keys and rows.height and rows["role"].null_count() == 0 and rows["pos"].null_count() == 0:
        keys.remove("pos")
    stats = effects(rows, value="value").rename({"mean": "value"})
    base = rows.group_by(keys, maintain_order=True).agg(pl.col("clean").cast(pl.Float64).mean(),
                                                        pl.col("corrupted").cast(pl.Float64).mean())
    out = stats.join(base, on=keys, how="left", nulls_equal=True, maintain_order="left")
    gap = pl.col("clean") - pl.col("corrupted")
    out = out.with_columns(pl.when(gap != 0).then((pl.col("value") - pl.col("corrupted")) / gap).alias("score"))
    return out.select(*keys, "value", "clean", "corrupted", "score", "n", "ci_low", "ci_high")
