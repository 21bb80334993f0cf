"""Queries over a store: tidy Polars tables keyed by example_id, and DuckDB SQL over them.

Every analysis is pure math over arrays (tested against TransformerLens) plus a thin function
that streams a store chunk by chunk. No model, no GPU, no transformer_lens.

    dla(store, level='head'|'layer'|'neuron'|'path', target='correct'|'diff')
    logit_lens(store, target=..., ln='cached'|'recompute')
    breakdown(table, group_by, examples)      mean, std, n, 95% t interval per group
    ov_circuit, qk_circuit, virtual_ov, composition_scores    (weights only; tidy tables, circuit_matrix)
    attention(store, ...), neurons(store, ...)                 grouped statistics or raw rows
    attention_frames, neuron_frames           the raw rows, one chunk's DataFrame at a time
    neuron_correlation(store, layer, label)   per-neuron Pearson r against a numeric label
    sql(store, "SELECT ...")                  DuckDB over examples, tokens, outputs and derived tables
"""

from __future__ import annotations

from actstore.query.attention import attention, attention_frames
from actstore.query.breakdown import breakdown
from actstore.query.circuits import circuit_matrix, composition_scores, ov_circuit, qk_circuit, virtual_ov
from actstore.query.dla import dla
from actstore.query.logit_lens import logit_lens
from actstore.query.neuron_stats import neuron_correlation
from actstore.query.neurons import neuron_frames, neurons
from actstore.query.sql import sql

__all__ = ["attention", "attention_frames", "breakdown", "circuit_matrix", "composition_scores", "dla", "logit_lens",
           "neuron_correlation", "neuron_frames", "neurons", "ov_circuit", "qk_circuit", "sql", "virtual_ov"]
