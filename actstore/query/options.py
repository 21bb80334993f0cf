"""The string options of the query API, as types a checker sees and as the tuples queries validate against.

One name per meaning across every query: `level` is dla's granularity, `target` what is read out,
`group_by` (plain column names) the grouping keys; see each query's docstring.
"""

from __future__ import annotations

from typing import Literal, get_args

Level = Literal["layer", "head", "neuron", "path"]
Target = Literal["correct", "diff"]
LensNorm = Literal["cached", "recompute"]
Aggregate = Literal["mean"]
CircuitOver = Literal["tokens", "positions"]
CompositionKind = Literal["Q", "K", "V"]
NeuronValue = Literal["activation", "projection"]
RankBy = Literal["projection", "activation", "-projection", "-activation"]

LEVELS: tuple[str, ...] = get_args(Level)
TARGETS: tuple[str, ...] = get_args(Target)
LN_MODES: tuple[str, ...] = get_args(LensNorm)
AGGREGATES: tuple[str, ...] = get_args(Aggregate)
COMPOSITION_KINDS: tuple[str, ...] = get_args(CompositionKind)
NEURON_VALUES: tuple[str, ...] = get_args(NeuronValue)
RANK_BY: tuple[str, ...] = get_args(RankBy)
