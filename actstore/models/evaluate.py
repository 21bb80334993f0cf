"""Accuracy of a model on fresh task examples, overall and split by label.

Accuracy is per answer token: an answer counts as correct when the correct token has the
highest logit among all output tokens. Where the task has a counterfactual token (IOI's S,
days' subject, the other bracket class) the logit difference correct - counterfactual is
reported too. Evaluation seeds must lie below zoo.TRAIN_SEED_BASE (the training seeds).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import polars as pl
import torch

from actstore.datasets import get_task
from actstore.datasets.base import Task, TaskData
from actstore.errors import InvalidParameterError
from actstore.models.forward import iter_answer_logits
from actstore.models.zoo import EVAL_SEED, TRAIN_SEED_BASE, Target

METRICS = ("examples", "answers", "accuracy", "loss", "logit_diff", "diff_accuracy")


def evaluate(model: Any, task: str | Task, n: int = 2000, seed: int = EVAL_SEED, params: dict[str, Any] | None = None,
             group_by: list[str] | None = None, batch_size: int = 512) -> pl.DataFrame:
    """Accuracy of `model` on `n` fresh examples of `task` (generated with `seed`).

    Returns one row per group: split ('all', 'answer' for the answer index, or a label column),
    value, examples, answers, accuracy, loss (mean cross-entropy), logit_diff (mean correct -
    counterfactual logit, null without a counterfactual) and diff_accuracy (share with diff > 0).
    """
    if isinstance(seed, int) and seed >= TRAIN_SEED_BASE:
        raise InvalidParameterError(
            f"evaluation seed {seed} is a training seed (>= {TRAIN_SEED_BASE}); use a seed below {TRAIN_SEED_BASE}"
        )
    task_obj = get_task(task, **(params or {})) if isinstance(task, str) else task
    data = task_obj.generate(n, seed, tokenizer=getattr(model, "tokenizer", None))
    _check_vocab(model, data)
    _check_width(model, data)
    splits = group_by if group_by is not None else _default_splits(data, task_obj.report.accuracy)
    missing = [c for c in splits if c not in data.labels.columns]
    if missing:
        raise InvalidParameterError(
            f"{data.task}: no label column {missing[0]!r} to split by; labels: {', '.join(data.labels.columns)}"
        )
    table = answer_table(model, data, batch_size)
    labels = data.labels.with_row_index("example_id").with_columns(pl.col("example_id").cast(pl.Int64))
    table = table.join(labels, on="example_id", how="left")
    groups = [_summary(table, None)]
    if data.n_answers > 1:
        groups.append(_summary(table, "answer"))
    groups += [_summary(table, col) for col in splits]
    return pl.concat(groups, how="vertical").with_columns(pl.lit(data.task).alias("task")).select(
        "task", "split", "value", *METRICS
    )


def _check_width(model: Any, data: TaskData) -> None:
    """InvalidParameterError if the examples are longer than the model's context."""
    n_ctx = int(getattr(model.cfg, "n_ctx", 0) or 0)
    width = int(data.tokens.shape[1])
    if n_ctx and width > n_ctx:
        raise InvalidParameterError(f"{data.task}: examples are {width} tokens long but the model's n_ctx is {n_ctx}; "
                                    "use task parameters the model was trained on")


def answer_table(model: Any, data: TaskData, batch_size: int = 512) -> pl.DataFrame:
    """One row per (example, answer): example_id, answer, correct, loss, logit_diff."""
    correct, loss, diff = [], [], []
    for start, logits in iter_answer_logits(model, data, batch_size):  # logits: [example, answer, vocab]
        stop = start + logits.shape[0]
        target = torch.from_numpy(data.answer_tokens[start:stop]).to(logits.device)  # [example, answer]
        correct.append((logits.argmax(-1) == target).cpu().numpy())
        logp = logits.log_softmax(-1)
        loss.append(-logp.gather(-1, target[..., None])[..., 0].cpu().numpy())
        if data.counter_tokens is not None:
            counter = torch.from_numpy(data.counter_tokens[start:stop]).to(logits.device)
            d = logits.gather(-1, target[..., None]) - logits.gather(-1, counter[..., None])
            diff.append(d[..., 0].cpu().numpy())
    n, k = data.answer_pos.shape
    return pl.DataFrame({
        "example_id": np.repeat(np.arange(n, dtype=np.int64), k),
        "answer": np.tile(np.arange(k, dtype=np.int64), n),
        "correct": np.concatenate(correct).reshape(-1),
        "loss": np.concatenate(loss).reshape(-1).astype(np.float64),
        "logit_diff": np.concatenate(diff).reshape(-1).astype(np.float64) if diff else np.full(n * k, np.nan),
    })


def _summary(table: pl.DataFrame, col: str | None) -> pl.DataFrame:
    has_diff = not table["logit_diff"].is_nan().all()
    diff = pl.col("logit_diff")
    aggs = [
        pl.col("example_id").n_unique().alias("examples"),
        pl.len().alias("answers"),
        pl.col("correct").mean().alias("accuracy"),
        pl.col("loss").mean().alias("loss"),
        (diff.mean() if has_diff else pl.lit(None, dtype=pl.Float64)).alias("logit_diff"),
        ((diff > 0).mean() if has_diff else pl.lit(None, dtype=pl.Float64)).alias("diff_accuracy"),
    ]
    if col is None:
        out = table.select(aggs).with_columns(pl.lit("all").alias("split"), pl.lit("all").alias("value"))
    else:
        out = (
            table.group_by(col).agg(aggs).sort(col)
            .with_columns(pl.lit(col).alias("split"), pl.col(col).cast(pl.String).alias("value"))
            .drop(col)
        )  # fmt: skip
    return out.select("split", "value", *METRICS).with_columns(
        pl.col("examples").cast(pl.Int64), pl.col("answers").cast(pl.Int64)
    )


def _default_splits(data: TaskData, declared: tuple[str, ...]) -> list[str]:
    """The task's declared accuracy splits, else every boolean and short string label."""
    if declared:
        return [c for c in declared if c in data.labels.columns]
    out = []
    for col, dtype in data.labels.schema.items():
        if dtype == pl.Boolean or (dtype == pl.String and data.labels[col].n_unique() <= 20):
            out.append(col)
    return out


def _check_vocab(model: Any, data: TaskData) -> None:
    top = int(data.tokens.max()) if data.tokens.size else 0
    if top >= model.cfg.d_vocab:
        raise InvalidParameterError(
            f"{data.task}: token id {top} is outside the model's input vocabulary ({model.cfg.d_vocab}); "
            "is this the model for this task?"
        )
    answers = int(data.answer_tokens.max())
    if answers >= model.cfg.d_vocab_out:
        raise InvalidParameterError(
            f"{data.task}: answer token {answers} is outside the model's output vocabulary ({model.cfg.d_vocab_out})"
        )


def overall(table: pl.DataFrame) -> dict[str, Any]:
    """The 'all' row of an `evaluate` table as a dict."""
    return table.filter(pl.col("split") == "all").row(0, named=True)


def check_target(model: Any, target: Target, params: dict[str, Any] | None = None, n: int = 2000,
                 seed: int = EVAL_SEED) -> dict[str, Any]:
    """Evaluate `model` against one zoo accuracy target; returns the measured numbers and 'ok'."""
    table = evaluate(model, target.task, n=n, seed=seed, params=params)
    row = overall(table)
    result: dict[str, Any] = {
        "task": target.task, "n": n, "seed": seed, "accuracy": row["accuracy"], "loss": row["loss"],
        "logit_diff": row["logit_diff"], "diff_accuracy": row["diff_accuracy"],
    }  # fmt: skip
    ok = row["accuracy"] >= target.accuracy
    if target.by is not None:
        rows = table.filter(pl.col("split") == target.by)
        result["by"] = {target.by: dict(zip(rows["value"].to_list(), rows["accuracy"].to_list()))}
        ok = ok and min(rows["accuracy"].to_list()) >= (target.by_accuracy or 0.0)
    if target.logit_diff is not None:
        ok = ok and row["logit_diff"] is not None and row["logit_diff"] > target.logit_diff
    result["target"] = asdict(target)
    result["ok"] = bool(ok)
    return result
