"""Queries over a store: tidy Polars tables keyed by example_id, and DuckDB SQL over them.

Every analysis is pure math over arrays (tested against TransformerLens) plus a thin function
that streams a store chunk by chunk. No model, no GPU, no transformer_lens.

    dla(store, by='head'|'layer'|'neuron'|'path', target='correct'|'diff')
    logit_lens(store, target=..., ln='cached'|'recompute')
    breakdown(table, by, examples)            mean, std, n, 95% t interval per group
    ov_circuit, qk_circuit, virtual_ov, composition_scores    (weights only)
    attention(store, ...), neurons(store, ...)                 (attention.py, neurons.py)
    sql(store, "SELECT ...")                  DuckDB over examples, tokens, outputs and derived tables
"""

from __future__ import annotations

from actstore.query.breakdown import breakdown
from actstore.query.circuits import composition_scores, ov_circuit, qk_circuit, virtual_ov
from actstore.query.dla import dla
from actstore.query.logit_lens import logit_lens
from actstore.query.sql import sql

__all__ = ["breakdown", "composition_scores", "dla", "logit_lens", "ov_circuit", "qk_circuit", "sql",
           "virtual_ov"]

# attention / neurons are another module's; imported eagerly (so that the function, not the
# submodule, is the package attribute) but only once they exist.
try:
    from actstore.query.attention import attention  # noqa: F401

    __all__.append("attention")
except ModuleNotFoundError as e:  # pragma: no cover - until attention.py lands
    if e.name != "actstore.query.attention":
        raise
try:
    from actstore.query.neurons import neurons  # noqa: F401

    __all__.append("neurons")
except ModuleNotFoundError as e:  # pragma: no cover - until neurons.py lands
    if e.name != "actstore.query.neurons":
        raise
