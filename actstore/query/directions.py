"""Residual-stream directions a neuron query reads: answer, logit difference, a user vector,
optionally pulled back through one attention head's OV circuit.

What is computed, exactly (LN: normalization 'LN'/'LNPre'; the stored LayerNorm scales make
each step linear per example):

- 'answer':  u_t = centre(w_f * W_U[:, t]), so that  logit_t - b_U[t] = sum_c centre(c) . W_U[:, t] / s_f
             over the components c of the final residual stream (w_f: ln_final.w if it was not
             folded, else 1; centre: subtract the mean over d_model, LN models only);
             read with 1 / s_f (ln_final.hook_scale) at the position where the direction is read.
- 'diff':    u_correct - u_counter (the same for the logit difference).
- a vector v [d_model] (a .npy file or an array): read as is, no final LayerNorm scale, unless
             final_ln=True, when it is treated like an unembedding column: centre(w_f * v) / s_f.
- a direction saved in the store ('name:NAME', or plain NAME when no file of that name exists;
             see store/directions.py): a vector, read as it was saved (as is, or with final_ln).
- through head (l, h): the direction d at the head's query position is pulled back to the
             head's input at a key position: d' = centre(w1 * (W_V[l, h] @ (W_O[l, h] @ d))), read
             with 1 / s1 (blocks.l.ln1.hook_scale) at the key position (w1: ln1.w if unfolded).
             A vector x added to the residual stream at key position p moves the head's output at
             query q by pattern[q, p] * centre(x) / s1[p] @ W_V W_O (value bias aside); the
             brackets seed treats pattern[q, p] as a constant, and so do we unless asked to
             weight by it. The seed fits the LayerNorms by linear regression over a dataset;
             here each example's own scale is used, which is exact for that example.

A neuron n of layer L writes post[n] * W_out[L, n], so its projection is
post[n] * (W_out[L, n] . d) times the scale factors above: `neuron_readout` folds W_out once
per direction.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from actstore.errors import InvalidParameterError
from actstore.query.readout import Weights
from actstore.store.arch import Arch
from actstore.store.directions import direction_names, load_direction

DirectionSpec = Union[str, os.PathLike, np.ndarray]
NAMED = ("answer", "diff")
SAVED_PREFIX = "name:"


@dataclass(frozen=True)
class Direction:
    """A parsed direction: kind 'answer' | 'diff' | 'vector', the vector for 'vector', whether
    the final LayerNorm scale applies (always for named directions), and the saved direction's
    name where it came from the store."""

    kind: str
    vector: np.ndarray | None
    final_ln: bool
    name: str | None = None

    @property
    def label(self) -> str:
        return self.kind if self.kind in NAMED else "vector"


def parse_direction(spec: DirectionSpec, d_model: int, final_ln: bool | None = None, store: Any = None) -> Direction:
    """'answer', 'diff', a path to a .npy file of shape [d_model], an array of that shape, or (with
    `store`) a direction saved in it: 'name:NAME', or plain NAME when no such file exists."""
    if isinstance(spec, str) and spec in NAMED:
        if final_ln is False:
            raise InvalidParameterError(f"direction {spec!r} is a logit direction and always reads the final "
                                        f"LayerNorm scale; final_ln=False applies to vectors only")
        return Direction(spec, None, True)
    saved = saved_direction(spec, store)
    if saved is not None:
        vector = np.asarray(saved.vector)
        if vector.shape != (d_model,):
            raise InvalidParameterError(f"saved direction {saved.name!r} has {vector.size} entries; this model's "
                                        f"d_model is {d_model}")
        return Direction("vector", vector, saved.final_ln if final_ln is None else bool(final_ln), saved.name)
    if isinstance(spec, (str, os.PathLike)):
        path = Path(spec)
        if not path.is_file():
            known = ""
            if store is not None:
                names = ", ".join(direction_names(store.path)) or "none"
                known = f", nor a direction saved in the store (saved: {names})"
            raise InvalidParameterError(f"direction {str(spec)!r} is neither 'answer', 'diff' nor an existing "
                                        f".npy file{known}")
        try:
            vector = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:  # EOFError: an empty file
            raise InvalidParameterError(f"direction file {str(path)!r} is not a readable .npy array: {e}") from None
        where = f"direction file {str(path)!r}"
    elif isinstance(spec, np.ndarray) or hasattr(spec, "__array__"):
        vector, where = np.asarray(spec), "direction array"
    else:
        raise InvalidParameterError(f"direction must be 'answer', 'diff', a .npy path or an array, got "
                                    f"{type(spec).__name__}")
    vector = np.squeeze(vector)
    if vector.shape != (d_model,) or not np.issubdtype(vector.dtype, np.number):
        raise InvalidParameterError(f"{where} has shape {tuple(vector.shape)} ({vector.dtype}); expected a numeric "
                                    f"vector of shape ({d_model},) (the model's d_model)")
    if not np.isfinite(vector).all():
        raise InvalidParameterError(f"{where} holds NaN or infinite values")
    return Direction("vector", vector.astype(np.float64), bool(final_ln))


def saved_direction(spec: Any, store: Any) -> Any:
    """The SavedDirection `spec` names in `store` ('name:NAME', or a plain NAME saved there that is
    not also a file), else None. 'name:NAME' without a store is an error."""
    if not isinstance(spec, str):
        return None
    if spec.startswith(SAVED_PREFIX):
        if store is None:
            raise InvalidParameterError(f"direction {spec!r} names a saved direction, which needs a store to read "
                                        "it from")
        return load_direction(store.path, spec[len(SAVED_PREFIX):])
    if store is None or Path(spec).is_file() or spec not in direction_names(store.path):
        return None
    return load_direction(store.path, spec)


def parse_head(spec: Any, n_layers: int, n_heads: int, what: str = "through_head") -> tuple[int, int]:
    """(layer, head) from (2, 0), '2.0', 'L2H0' or '2,0'; `what` names the parameter in errors."""
    if isinstance(spec, str):
        m = re.fullmatch(r"\s*(?:L(\d+)H(\d+)|(\d+)\s*[.,:]\s*(\d+))\s*", spec, flags=re.IGNORECASE)
        if not m:
            raise InvalidParameterError(f"{what} {spec!r}: expected LAYER.HEAD such as '2.0' or 'L2H0'")
        layer, head = (int(g) for g in (m.group(1, 2) if m.group(1) is not None else m.group(3, 4)))
    else:
        try:
            layer, head = (int(v) for v in spec)
        except (TypeError, ValueError):
            raise InvalidParameterError(f"{what} {spec!r}: expected (layer, head) or 'LAYER.HEAD'") from None
    if not (0 <= layer < n_layers and 0 <= head < n_heads):
        raise InvalidParameterError(f"{what} {layer}.{head} does not exist: the model has {n_layers} layers "
                                    f"of {n_heads} heads")
    return layer, head


def target_directions(weights: Weights, direction: Direction, correct: np.ndarray,
                      counter: np.ndarray | None) -> np.ndarray:
    """[target, d_model] float64: the direction read for each target.

    correct, counter: [target] token ids (named directions; counter for 'diff'). A vector has
    one target whatever the tokens.
    """
    if direction.kind == "vector":
        v = direction.vector[None, :]  # type: ignore[index]
        if direction.final_ln:
            w, _ = weights.ln_weight(None, "ln_final")
            v = weights.center(v * w if w is not None else v)
        return v
    u = weights.unembed_directions(correct)
    if direction.kind == "diff":
        if counter is None:
            raise InvalidParameterError("direction 'diff' needs counterfactual tokens")
        u = u - weights.unembed_directions(counter)
    return u


def through_head(weights: Weights, dirs: np.ndarray, layer: int, head: int) -> np.ndarray:
    """[target, d_model]: directions at head (layer, head)'s output pulled back to its input
    (before its ln1 scale): centre(w1 * (W_V[h] @ (W_O[h] @ d)))."""
    w_v = weights.param(Arch.attn_weight(layer, "W_V"))[head].astype(np.float64)  # [d_model, d_head]
    w_o = weights.param(Arch.attn_weight(layer, "W_O"))[head].astype(np.float64)  # [d_head, d_model]
    pulled = (dirs @ w_o.T) @ w_v.T  # [target, d_model]
    w1, _ = weights.ln_weight(layer, "ln1")
    if w1 is not None:
        pulled = pulled * w1
    return weights.center(pulled)


def neuron_readout(weights: Weights, layer: int, dirs: np.ndarray) -> np.ndarray:
    """[target, d_mlp]: W_out[layer, n] . d for every neuron n and target direction d."""
    w_out = weights.param(Arch.mlp_weight(layer, "W_out")).astype(np.float64)  # [d_mlp, d_model]
    return dirs @ w_out.T
