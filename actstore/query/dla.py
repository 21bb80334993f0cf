"""`dla(store, level, target)`: direct logit attribution of every answer, streamed from a store.

Reads only the hooks the granularity needs (hook_z and MLP hook_post at the answer positions,
the final LayerNorm scale; for paths also earlier layers at every position, the ln1 scales and
the later layers' patterns), one committed chunk at a time, and returns the tidy table:

    example_id, answer_idx, answer_pos, target, component, layer, head, value
    (+ neuron for level='neuron', + source for level='path')

The components of an answer sum to its stored logit minus b_U (or logit difference minus the
b_U difference); see attribution.py for the component names.
"""

from __future__ import annotations


import numpy as np
import polars as pl

from actstore.errors import InvalidParameterError
from actstore.query.attribution import COMPUTE, Component, check_level, direct_attribution, required_hooks
from actstore.query.chunks import ExampleArrays, check_hooks, stream
from actstore.query.readout import Readout, Target, Weights
from actstore.query.tables import ColumnType, empty_frame, item_frame, long_frame
from actstore.store.reader import Store
from actstore.query.options import Level
from actstore.query.options import Target as TargetKind

ITEM_SCHEMA: dict[str, ColumnType] = {"component": pl.String, "layer": pl.Int64, "head": pl.Int64}


def dla(store: Store, level: Level = "head", target: TargetKind = "correct") -> pl.DataFrame:
    """Direct logit attribution at `level` ('layer' | 'head' | 'neuron' | 'path') toward `target`
    ('correct': the answer's logit; 'diff': correct minus counterfactual), one row per
    (example, answer, component), float64."""
    check_level(level)
    if target not in Target.KINDS:
        raise InvalidParameterError(f"target must be one of {', '.join(Target.KINDS)}, got {target!r}")
    weights = Weights.from_store(store)
    at_answer, full = required_hooks(weights, level)
    check_hooks(store, at_answer, full, f"dla level={level!r}")
    ex = ExampleArrays.from_examples(store.examples, store.n_answers)
    if target == "diff" and ex.counter_tokens is None:
        raise InvalidParameterError(f"target 'diff' needs counterfactual tokens, and the {store.manifest.task!r} "
                                    f"examples of store {store.path} have none; use target='correct'")
    readout = Readout.of(weights, answer_token_ids(ex, target))
    frames: list[pl.DataFrame] = []
    items: pl.DataFrame | None = None
    for chunk in stream(store, at_answer, full, tokens=level == "path", examples=ex, answer_dtype=COMPUTE):
        values, comps = direct_attribution(weights, readout, chunk, level=level, target=target)
        if items is None:
            items = component_items(comps, level)
        frames.append(long_frame(chunk.example_id, chunk.answer_pos, items, values, {"target": target}))
    if not frames:
        return empty_frame(component_items([], level), {"target": pl.String})
    return pl.concat(frames, rechunk=False)


def answer_token_ids(ex: ExampleArrays, target: str) -> np.ndarray:
    """Every token id whose direction a query toward `target` reads."""
    ids = [ex.answer_tokens.ravel()]
    if target == "diff" and ex.counter_tokens is not None:
        ids.append(ex.counter_tokens[ex.counter_tokens >= 0])
    return np.concatenate(ids) if ids[0].size or len(ids) > 1 else np.zeros(0, dtype=np.int64)


def component_items(comps: list[Component], level: str) -> pl.DataFrame:
    """The item columns of a dla table: component, layer, head (+ neuron / source)."""
    schema = dict(ITEM_SCHEMA)
    cols: dict[str, list[object]] = {"component": [c.name for c in comps], "layer": [c.layer for c in comps],
                                     "head": [c.head for c in comps]}
    if level == "neuron":
        schema["neuron"] = pl.Int64
        cols["neuron"] = [c.neuron for c in comps]
    if level == "path":
        schema["source"] = pl.String
        cols["source"] = [c.source for c in comps]
    return item_frame(cols, schema)
