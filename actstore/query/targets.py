"""What a read-out query (dla, logit_lens) reads: its `target=` parsed once into a ReadTarget.

    'correct' | 'diff'            the answer token's logit (minus the counterfactual's), as before
    7 or '7'                      output token 7's logit at every read position
    [0, 1, ..., 9] or '0,1,...,9' several tokens: one row per token (the table gains a `token` column)
    'W_U[:,7] - W_U[:,3]'         a direction written over the weights (weight_expr.py), read like an
                                  unembedding column: centred, divided by the final LayerNorm scale,
                                  so this one gives logit 7 minus logit 3 (b_U aside)
    an array [d_model], a path to a .npy file, or a direction saved in the store ('name:NAME', or a
    plain NAME): read as it is (component . v, no final LayerNorm scale) unless final_ln=True, or as
    the saved direction says (actstore.query.directions.parse_direction, which owns these forms)

Token and expression targets always read the final LayerNorm (final_ln=False is refused for them);
final_ln=False on an expression reads it as a plain vector. The table's `target` column holds
'correct', 'diff', 'token' or the direction's label (the expression, the file path, the saved name,
or 'vector' for an array).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from actstore.errors import InvalidParameterError
from actstore.query.directions import parse_direction, saved_direction
from actstore.store.directions import direction_names
from actstore.query.readout import Readout, Target, Weights
from actstore.query.weight_expr import looks_like_expression, parse_expression
from actstore.store.arch import Arch

TargetSpec = Union[str, int, Sequence[int], np.ndarray, "os.PathLike[str]"]
ANSWER_KINDS = ("correct", "diff")


@dataclass(frozen=True, eq=False)
class ReadTarget:
    """A parsed target.

    kind:     'correct' | 'diff' | 'tokens' | 'vector'
    label:    the value of the table's `target` column
    tokens:   [t] output token ids ('tokens'), one table row per token
    vector:   [d_model] float64 ('vector'), before any LayerNorm folding
    final_ln: whether the direction is read after the final LayerNorm (always for tokens)
    """

    kind: str
    label: str
    tokens: np.ndarray | None = None
    vector: np.ndarray | None = None
    final_ln: bool = True

    @property
    def per_token(self) -> bool:
        """Whether the table has one row per token (a `token` column)."""
        return self.kind == "tokens"

    @property
    def n_rows(self) -> int:
        """Directions read at each position: one per token, else one."""
        return int(self.tokens.size) if self.tokens is not None else 1

    def key(self) -> Any:
        """What a cached table of this target is keyed by: the kind, the tokens, or the label with a
        digest of the vector as read (so a re-saved direction or an edited file is another table)."""
        if self.kind in ANSWER_KINDS:
            return self.kind
        if self.tokens is not None:
            return [int(t) for t in self.tokens]
        assert self.vector is not None
        digest = hashlib.sha256(np.ascontiguousarray(self.vector, dtype=np.float64).tobytes()
                                + bytes([self.final_ln])).hexdigest()[:16]
        return f"{self.label}#{digest}"

    def readout(self, weights: Weights, answer_ids: np.ndarray) -> Readout:
        """The Readout this target reads from; answer_ids: every answer (and counter) token id, for
        'correct' / 'diff' (see dla.answer_token_ids)."""
        if self.kind in ANSWER_KINDS:
            return Readout.of(weights, answer_ids)
        if self.tokens is not None:
            return Readout.of(weights, self.tokens)
        assert self.vector is not None
        return Readout.of_vectors(weights, self.vector[None, :], self.final_ln)

    def rows(self, readout: Readout, shape: tuple[int, ...]) -> list[Target]:
        """One Target per table row at each position ([example, position] `shape`); 'correct' / 'diff'
        come back as their kind (attribution.make_target builds them from the chunk's tokens)."""
        if self.tokens is not None:
            return [Target.fixed(int(r), shape) for r in readout.rows(self.tokens)]
        return [Target.fixed(0, shape)]


def parse_target(spec: Any, weights: Weights, store: Any = None, final_ln: bool | None = None) -> ReadTarget:
    """A ReadTarget from any of the forms in the module docstring; one-line InvalidParameterError else."""
    if final_ln is not None and not isinstance(final_ln, (bool, np.bool_)):
        raise InvalidParameterError(f"final_ln must be True, False or None, got {final_ln!r}")
    if isinstance(spec, str) and spec in ANSWER_KINDS:
        _logit_direction(spec, final_ln)
        return ReadTarget(spec, spec)
    tokens = _token_ids(spec)
    if tokens is not None:
        _logit_direction(f"token {spec!r}", final_ln)
        return ReadTarget("tokens", "token", tokens=_check_tokens(tokens, weights, spec))
    if isinstance(spec, str) and looks_like_expression(spec) and not os.path.isfile(spec):
        vector = parse_expression(spec, weights.param)
        return ReadTarget("vector", spec.strip(), vector=vector, final_ln=True if final_ln is None else bool(final_ln))
    if isinstance(spec, (str, os.PathLike)) and not os.path.isfile(spec) and saved_direction(spec, store) is None:
        saved = ", ".join(direction_names(store.path)) if store is not None else ""
        raise InvalidParameterError(f"target {os.fspath(spec)!r} is not 'correct', 'diff', a token id or list such as "
                                    f"'0,1,2', an expression such as 'W_U[:,7] - W_U[:,3]', an existing .npy file or "
                                    f"a direction saved in the store (saved: {saved or 'none'})")
    if isinstance(spec, (str, os.PathLike, np.ndarray)) or hasattr(spec, "__array__"):
        direction = parse_direction(spec, weights.arch.d_model, final_ln, store=store)
        if direction.vector is None:  # parse_direction's own 'answer' / 'diff' names
            raise InvalidParameterError(f"target {spec!r}: use 'correct' or 'diff' for the answer's direction")
        label = "vector" if not isinstance(spec, (str, os.PathLike)) else os.fspath(spec)
        return ReadTarget("vector", label, vector=np.asarray(direction.vector, dtype=np.float64),
                          final_ln=bool(direction.final_ln))
    raise InvalidParameterError(f"target must be 'correct', 'diff', a token id, a list of token ids, an expression "
                                f"such as 'W_U[:,7] - W_U[:,3]', a vector or a direction name, got "
                                f"{type(spec).__name__} {spec!r}")


def _logit_direction(what: str, final_ln: bool | None) -> None:
    if final_ln is False:
        raise InvalidParameterError(f"target {what} is a logit direction and always reads the final LayerNorm; "
                                    "final_ln=False applies to vectors and expressions only")


def _token_ids(spec: Any) -> list[int] | None:
    """Token ids if `spec` names tokens (an int, a list of ints, '7' or '0,1,2'), else None."""
    if isinstance(spec, (bool, np.bool_)):
        raise InvalidParameterError(f"target must be a token id, a list or a direction, got {spec!r}")
    if isinstance(spec, (int, np.integer)):
        return [int(spec)]
    if isinstance(spec, str):
        parts = [p.strip() for p in spec.split(",")]
        if all(p.lstrip("-").isdigit() for p in parts):
            return [int(p) for p in parts]
        if "," in spec and not looks_like_expression(spec):
            raise InvalidParameterError(f"target {spec!r}: a list of tokens is integer ids separated by commas, "
                                        "such as '0,1,2'")
        return None
    if isinstance(spec, (list, tuple, range)):
        if not spec:
            raise InvalidParameterError("target: an empty list of tokens selects nothing")
        if not all(isinstance(t, (int, np.integer)) and not isinstance(t, (bool, np.bool_)) for t in spec):
            raise InvalidParameterError(f"target: a list target holds token ids (ints), got {list(spec)!r}")
        return [int(t) for t in spec]
    if isinstance(spec, np.ndarray) and spec.ndim == 1 and np.issubdtype(spec.dtype, np.integer):
        return [int(t) for t in spec]
    return None


def _check_tokens(tokens: list[int], weights: Weights, spec: Any) -> np.ndarray:
    size = int(weights.param(Arch.W_U).shape[1])
    bad = [t for t in tokens if not 0 <= t < size]
    if bad:
        raise InvalidParameterError(f"target {spec!r}: token id {bad[0]} is outside the model's {size} output "
                                    "tokens")
    seen: set[int] = set()
    for t in tokens:
        if t in seen:
            raise InvalidParameterError(f"target {spec!r}: token {t} is listed twice")
        seen.add(t)
    return np.asarray(tokens, dtype=np.int64)
