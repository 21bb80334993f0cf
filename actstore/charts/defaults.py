"""A store's chart defaults, from its task's `ReportSpec` and the store's own tables.

The charts know no task: the store's manifest names the task, `actstore.datasets.get_task`
builds it with the recorded parameters, and its `report` declares the label splits and roles
of interest. A task this installation does not know (a store made with a task registered in
another process) gets the empty spec: the common charts only.
"""

from __future__ import annotations

import polars as pl

from actstore.charts.accuracy import BASE_COLUMNS, label_columns
from actstore.datasets import get_task
from actstore.datasets.report_spec import ReportSpec
from actstore.errors import InvalidParameterError, UnknownTaskError
from actstore.store import Store
from actstore.query.options import Target


def task_spec(store: Store) -> ReportSpec:
    """The `ReportSpec` of the store's task (empty where the task or its recorded parameters are unknown here)."""
    m = store.manifest
    try:
        return get_task(m.task, **(m.task_params or {})).report
    except (UnknownTaskError, InvalidParameterError):
        return ReportSpec()


def default_target(store: Store) -> Target:
    """'diff' (correct minus counterfactual logit) where the store has counterfactual tokens, else 'correct'."""
    out = store.outputs
    if "counter_token" in out.columns and out.get_column("counter_token").null_count() < out.height:
        return "diff"
    return "correct"


def default_split(store: Store) -> tuple[str | dict[int, str], str]:
    """(label column, legend title) of the task's first label split the store has; InvalidParameterError
    asking for group_by where it has none."""
    ex = store.examples
    for split in task_spec(store).splits:
        by = split.columns(ex.columns, store.n_answers)
        if by is not None:
            return by, split.legend or split.label
    raise InvalidParameterError(f"no default label to split {store.manifest.task} by; "
                                f"pass group_by, one of: {', '.join(label_columns(ex))}")


def present_roles(store: Store) -> set[str]:
    """The token roles of the store's examples."""
    return {str(r) for r in store.tokens.get_column("role").drop_nulls().unique().to_list() if r}


def default_query_role(store: Store) -> str:
    """The query role of the task's first role attention, else the role at the first answer position."""
    roles = present_roles(store)
    declared = [a.query_role for a in task_spec(store).attention if a.query_role in roles]
    if declared:
        return declared[0]
    first = store.examples.select("example_id", pos=pl.col("answer_positions").list.first())
    joined = store.tokens.join(first, on=["example_id", "pos"], how="semi").get_column("role").drop_nulls()
    joined = joined.filter(joined != "")
    if joined.len() == 0:
        raise InvalidParameterError("the answer positions have no token role; pass query_role")
    return str(joined.mode().sort()[0])


def default_key_roles(store: Store, query_role: str) -> list[str] | None:
    """The key roles the task declares for `query_role` that the store has (None: every role)."""
    roles = present_roles(store)
    for att in task_spec(store).attention:
        if att.query_role == query_role and att.key_roles is not None:
            return [r for r in att.key_roles if r in roles] or None
    return None


def default_x(store: Store) -> str:
    """Numeric label for the neuron scatter: the task's choice, else the first numeric label."""
    ex = store.examples
    spec = task_spec(store).neurons
    if spec is not None and spec.x in ex.columns:
        return spec.x
    numeric = [c for c, t in ex.schema.items() if c not in BASE_COLUMNS and t.is_numeric()
               and t != pl.Boolean and ex.get_column(c).n_unique() > 2]
    if not numeric:
        raise InvalidParameterError(
            "this store has no numeric label to plot neurons against; pass x (a numeric label column)")
    return numeric[0]


def default_color(store: Store) -> str | None:
    """The label colouring the neuron scatter: the task's choice where the store has it, else none."""
    spec = task_spec(store).neurons
    return spec.color if spec is not None and spec.color in store.examples.columns else None


__all__ = ["default_color", "default_key_roles", "default_query_role", "default_split", "default_target", "default_x",
           "present_roles", "task_spec"]
