"""What a task's report needs, declared by the task: its label splits, roles of interest and neuron scatter.

Plain frozen dataclasses (no numpy, no torch), so the charts can read a task's spec without
loading a model. Every label and role named here is optional in a given store: a section whose
label column or roles the store lacks is left out of the report.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

ANSWER = "{answer}"  # in a LabelSplit label: the answer index (one label column per answer)


@dataclass(frozen=True)
class LabelSplit:
    """Component attributions split by a label.

    label:   a label column ('failure'), or a pattern with '{answer}' naming one column per answer
             index ('carry_{answer}': answer i is split by carry_i)
    title:   the report section's title
    caption: the report section's one-sentence caption
    legend:  the legend title of the split (default: the label)
    """

    label: str
    title: str
    caption: str
    legend: str | None = None

    def columns(self, columns: Collection[str], n_answers: int) -> str | dict[int, str] | None:
        """The label column, or {answer index: column} for a pattern, among `columns`; None if absent."""
        if ANSWER not in self.label:
            return self.label if self.label in columns else None
        found = {i: self.label.replace(ANSWER, str(i)) for i in range(n_answers)}
        found = {i: c for i, c in found.items() if c in columns}
        return found or None


@dataclass(frozen=True)
class RoleAttention:
    """Attention from one query role to the key roles of interest, per head.

    query_role: the role of the query token ('END')
    key_roles:  the key roles to show (None: every role); roles a store lacks are dropped
    split_by:   a label column splitting the attention mass (None: no split)
    title, caption: the report section's title and caption
    """

    query_role: str
    title: str
    caption: str
    key_roles: tuple[str, ...] | None = None
    split_by: str | None = None


@dataclass(frozen=True)
class NeuronScatter:
    """MLP neuron projections onto the answer direction, per example, against a numeric label.

    x:     the numeric label on the x axis
    color: the label colouring the points (None: uncoloured)
    """

    x: str
    color: str | None = None


@dataclass(frozen=True)
class ReportSpec:
    """A task's report: the sections beyond the ones every store gets, and the chart defaults.

    splits:    label splits of the attributions; the first is the default of `chart dla-split`
    attention: query -> key role attention; the first gives `chart attention-roles` its query and
               key roles (default otherwise: the role of the first answer position, every key role)
    neurons:   the neuron scatter of each MLP layer (None: no neuron sections)
    accuracy:  label columns `actstore eval` splits accuracy by (empty: every boolean and short
               string label)
    """

    splits: tuple[LabelSplit, ...] = ()
    attention: tuple[RoleAttention, ...] = ()
    neurons: NeuronScatter | None = None
    accuracy: tuple[str, ...] = ()


__all__ = ["ANSWER", "LabelSplit", "NeuronScatter", "ReportSpec", "RoleAttention"]
