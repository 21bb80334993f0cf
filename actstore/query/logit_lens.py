"""Logit lens: the accumulated residual stream after each stage, read on the answer direction.

Stages in residual order: (layer l, 'resid_pre') for every layer, (l, 'resid_mid') where the
model has MLPs, and (last layer, 'resid_post'), the final stream (TransformerLens's
`accumulated_resid(incl_mid=True)` labels 0_pre, 0_mid, ..., final_post).

ln='cached' (default, as the seeds do with `apply_ln_to_stack`): every stage is normalised with
the final LayerNorm scale of the full stream, so stages are running sums of `dla(level='layer')`
and the last one equals the logit minus b_U exactly. ln='recompute': every stage goes through
the final LayerNorm with its own statistics (TransformerLens `accumulated_resid(apply_ln=True)`),
what the model would read if the stream stopped there.

target and pos as dla takes them (targets.py, read_at.py): any token or token list (one row per
token, a `token` column), an expression such as 'W_U[:,7] - W_U[:,3]', a vector, read at the answer
positions or at any stored position. A vector read as it is (final_ln=False) has no LayerNorm in
the way: each stage is the accumulated stream . v, the same under both ln modes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import polars as pl

from actstore.errors import InvalidParameterError
from actstore.query.attribution import direct_attribution, make_target, required_hooks
from actstore.query.chunks import Chunk, stream
from actstore.query.dla import answer_readout, check_counter, chunk_target
from actstore.query.executor import Job, run
from actstore.query.memo import memo
from actstore.query.read_at import ReadAt
from actstore.query.readout import Readout, Target, Weights
from actstore.query.tables import item_frame
from actstore.query.targets import ANSWER_KINDS, parse_target
from actstore.store.arch import Arch
from actstore.store.reader import Store
from actstore.query.options import LN_MODES, LensNorm



def stages(weights: Weights) -> list[tuple[int, str]]:
    """(layer, stage) of every accumulated state, in residual order."""
    out: list[tuple[int, str]] = []
    for layer in range(weights.arch.n_layers):
        out.append((layer, "resid_pre"))
        if weights.arch.has_mlp:
            out.append((layer, "resid_mid"))
    return out + [(weights.arch.n_layers - 1, "resid_post")]


def lens_values(weights: Weights, readout: Readout, chunk: Chunk, target: str | Target = "correct",
                ln: str = "cached") -> np.ndarray:
    """[example, answer, stage] accumulated-residual read-outs (see `stages` for the order); target:
    'correct' | 'diff' or a readout.Target (e.g. Target.fixed for a token or vector of the readout)."""
    if ln not in LN_MODES:
        raise InvalidParameterError(f"ln must be one of {', '.join(LN_MODES)}, got {ln!r}")
    if ln == "cached":
        return _cached(weights, readout, chunk, target)
    return _recomputed(weights, readout, chunk, target)


def _cached(weights: Weights, readout: Readout, chunk: Chunk, target: str | Target) -> np.ndarray:
    values, comps = direct_attribution(weights, readout, chunk, level="layer", target=target)
    constant = np.zeros(values.shape[:2])
    if comps[-1].name == "ln_final_bias":  # read-out constant: part of every stage
        constant, values, comps = values[..., -1], values[..., :-1], comps[:-1]
    n_embed = sum(c.layer is None for c in comps)  # embed (+ pos_embed) come first, then attn0, (mlp0,) ...
    start = values[..., :n_embed].sum(-1) + constant  # [e, a]
    running = np.cumsum(values[..., n_embed:], axis=-1)
    return start[..., None] + np.concatenate([np.zeros(start.shape + (1,)), running], axis=-1)


def _recomputed(weights: Weights, readout: Readout, chunk: Chunk, target: str | Target) -> np.ndarray:
    tgt = target if isinstance(target, Target) else make_target(readout, chunk, target)
    u = tgt.take(readout.u)  # [e, a, d_model], includes ln_final.w and centring
    resid = weights.param(Arch.W_E)[chunk.input_tokens].astype(np.float64)  # [e, a, d_model]
    if weights.arch.pos_in_resid:
        resid = resid + weights.param(Arch.W_pos)[chunk.answer_pos]
    states = [resid]
    for layer in range(weights.arch.n_layers):
        z = chunk.at_answer[Arch.z(layer)].astype(np.float64)
        resid = resid + np.einsum("eahd,hdm->eam", z, weights.f64(Arch.attn_weight(layer, "W_O")))
        b_o = weights.maybe(Arch.attn_weight(layer, "b_O"))
        resid = resid if b_o is None else resid + b_o
        if weights.arch.has_mlp:
            states.append(resid)
            post = chunk.at_answer[Arch.mlp_post(layer)].astype(np.float64)
            resid = resid + post @ weights.f64(Arch.mlp_weight(layer, "W_out"))
            b_out = weights.maybe(Arch.mlp_weight(layer, "b_out"))
            resid = resid if b_out is None else resid + b_out
        states.append(resid)
    x = np.stack(states, axis=-2)  # [e, a, stage, d_model]
    eps = weights.arch.eps
    if not readout.final_ln:  # a vector read as it is: no LayerNorm in the way
        return np.einsum("easm,eam->eas", x, u)
    if weights.arch.layer_norm:
        x = x - x.mean(-1, keepdims=True)
        x = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    elif weights.arch.norm is not None:  # RMS
        x = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    values = np.einsum("easm,eam->eas", x, u)
    final_bias = readout.final_bias()
    if final_bias is not None:
        values = values + tgt.take(final_bias)[..., None]
    return values


def logit_lens(store: Store, target: Any = "correct", ln: LensNorm = "cached", *, pos: Any = None,
               answer: int = 0, final_ln: bool | None = None, client: Any = None) -> pl.DataFrame:
    """Accumulated residual read on the target's direction after each stage, one row per
    (example, position, [token,] stage): example_id, answer_idx, answer_pos (at pos=: example_id, pos,
    role), target, [token,] layer, stage, value. target, pos, answer, final_ln: as dla takes them;
    client: a dask.distributed Client to run the chunks on (the same table, row for row)."""
    plan = LensPlan(store, target, ln, pos, answer, final_ln)
    frames = list(run(Job(lens_plan, plan.params), store, client, plan))
    return pl.concat(frames, rechunk=False) if frames else plan.empty()


def logit_lens_frames(store: Store, target: Any = "correct", ln: LensNorm = "cached", *, pos: Any = None,
                      answer: int = 0, final_ln: bool | None = None, client: Any = None) -> Iterator[pl.DataFrame]:
    """The rows of `logit_lens(...)` one chunk at a time; parameters as logit_lens's."""
    plan = LensPlan(store, target, ln, pos, answer, final_ln)
    return run(Job(lens_plan, plan.params), store, client, plan)


def lens_plan(store: Store, target: Any = "correct", ln: LensNorm = "cached", pos: Any = None, answer: int = 0,
              final_ln: bool | None = None) -> "LensPlan":
    """The executor's entry point (executor.Job): logit_lens's plan on `store`."""
    return LensPlan(store, target, ln, pos, answer, final_ln)


class LensPlan:
    """logit_lens resolved against a store; one table per chunk."""

    def __init__(self, store: Store, target: Any, ln: LensNorm, pos: Any, answer: int,
                 final_ln: bool | None) -> None:
        if ln not in LN_MODES:
            raise InvalidParameterError(f"ln must be one of {', '.join(LN_MODES)}, got {ln!r}")
        self.params = dict(target=target, ln=ln, pos=pos, answer=answer, final_ln=final_ln)
        self.store, self.ln = store, ln
        self.weights = Weights.from_store(store)
        self.tgt = parse_target(target, self.weights, store, final_ln)
        self.at = ReadAt.build(store, pos, answer)
        self.at_answer, _ = required_hooks(self.weights, "layer")
        self.at.check_hooks(store, self.at_answer, [], "logit_lens")
        check_counter(store, self.at.arrays, self.tgt)
        self.readout = answer_readout(store, self.weights, self.at.arrays, self.tgt)
        order = stages(self.weights)
        self.items = memo(store).get(("lens items", tuple(order)), (), lambda: item_frame(
            {"layer": [s[0] for s in order], "stage": [s[1] for s in order]}, {"layer": pl.Int64, "stage": pl.String}))

    def ranges(self) -> list[tuple[int, int]]:
        return self.at.ranges(self.store)

    def partials(self, ranges: Sequence[tuple[int, int]]) -> Iterator[pl.DataFrame]:
        tgt = self.tgt
        for chunk in stream(self.store, self.at_answer, examples=self.at.arrays, ranges=ranges):
            rows = ([chunk_target(self.store, self.readout, self.at.arrays, chunk, tgt.kind)]
                    if tgt.kind in ANSWER_KINDS else tgt.rows(self.readout, chunk.answer_pos.shape))
            values = np.stack([lens_values(self.weights, self.readout, chunk, row, self.ln) for row in rows], axis=2)
            yield self.at.frame(chunk.start, chunk.stop, self.items, values, {"target": tgt.label},
                                tgt.tokens if tgt.per_token else None)

    def empty(self) -> pl.DataFrame:
        return self.at.empty(self.items, {"target": pl.String}, self.tgt.per_token)
