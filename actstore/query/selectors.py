"""Choosing positions and examples for a query: by position, by token role, by label.

A position selector is an int (a position; negative counts back from each example's end, so
-1 is the last real token), a role name ('END', 'IO', '=', 'a0', 'open', ...), a list of those
(their union), or None (every real position). It resolves, per example, to a boolean mask over
the store's positions [example, pos]; padding (pos >= length) is never selected.

Roles come from the store's tokens table and are kept as small integer codes [example, pos]
(-1: no role, or padding), so a million examples cost two bytes a position, not a string each.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import polars as pl

from actstore.errors import InvalidParameterError, UnknownColumnError

Selector = Union[int, str, Sequence[Union[int, str]], None]

# examples columns that are not labels (lists or bookkeeping)
BASE_COLUMNS = ("example_id", "text", "tokens", "answer_positions", "answer_tokens", "counter_tokens")


@dataclass(frozen=True)
class Roles:
    """Token roles of a set of examples as codes.

    codes: [example, pos] int16, index into `names`, -1 where the token has no role or is padding
    names: the distinct non-empty role names, sorted
    """

    codes: np.ndarray
    names: tuple[str, ...]

    @classmethod
    def from_tokens(cls, tokens: pl.DataFrame, n_examples: int, width: int) -> "Roles":
        """From a tokens table (example_id, pos, role) of examples 0..n_examples-1."""
        role = tokens.get_column("role").fill_null("")
        names = tuple(sorted(r for r in role.unique().to_list() if r))
        code = role.replace_strict(list(names), list(range(len(names))), default=-1, return_dtype=pl.Int16)
        codes = np.full((n_examples, width), -1, dtype=np.int16)
        ex = tokens.get_column("example_id").to_numpy()
        pos = tokens.get_column("pos").to_numpy()
        keep = (ex < n_examples) & (pos < width)
        codes[ex[keep], pos[keep]] = code.to_numpy()[keep]
        return cls(codes, names)

    def code(self, name: str, what: str) -> int:
        """The code of a role name; a one-line error listing the store's roles if it has none such."""
        try:
            return self.names.index(name)
        except ValueError:
            known = ", ".join(self.names) or "none"
            raise InvalidParameterError(f"{what}: no token has role {name!r}; roles in this store: {known}") from None

    def strings(self, codes: np.ndarray) -> pl.Series:
        """Role names for an array of codes (null for -1)."""
        vocab = pl.Series([*self.names, None], dtype=pl.String)  # last entry: no role
        codes = np.asarray(codes, dtype=np.int32).ravel()
        return vocab.gather(np.where(codes < 0, len(self.names), codes))


def select_positions(spec: Selector, lengths: np.ndarray, roles: np.ndarray, role_names: Roles, width: int,
                     what: str) -> np.ndarray:
    """[example, pos] bool: the positions `spec` picks in each example (never padding).

    lengths: [example] real tokens; roles: [example, pos] role codes of these examples.
    what: the parameter's name for error messages (e.g. 'query').
    """
    real = np.arange(width)[None, :] < np.asarray(lengths)[:, None]  # [example, pos]
    if spec is None:
        return real
    items = [spec] if isinstance(spec, (int, np.integer, str)) else list(spec)
    if not items:
        raise InvalidParameterError(f"{what}: an empty list selects nothing; pass None for every position")
    mask = np.zeros_like(real)
    rows = np.arange(real.shape[0])
    for item in items:
        if isinstance(item, (bool, np.bool_)):
            raise InvalidParameterError(f"{what}: expected a position or role name, got {item!r}")
        if isinstance(item, (int, np.integer)):
            p = int(item)
            if not -width <= p < width:
                raise InvalidParameterError(f"{what}: position {p} is outside the store's {width} positions")
            at = p + np.asarray(lengths) if p < 0 else np.full(real.shape[0], p)
            ok = (at >= 0) & (at < np.asarray(lengths))
            mask[rows[ok], at[ok]] = True
        elif isinstance(item, str):
            mask |= roles == role_names.code(item, what)
        else:
            raise InvalidParameterError(f"{what}: expected a position (int) or role name (str), got {item!r}")
    return mask & real


def parse_selector(text: str | None) -> Selector:
    """A command-line selector: 'END', '3', '-1', 'a0,a1,a2' (ints where they parse)."""
    if text is None:
        return None
    parts = [t.strip() for t in text.split(",") if t.strip()]

    def one(t: str) -> int | str:
        try:
            return int(t)
        except ValueError:
            return t

    items = [one(t) for t in parts]
    return items[0] if len(items) == 1 else items


def label_columns(examples: pl.DataFrame) -> list[str]:
    """Columns of an examples table usable as labels (scalars; not ids, text or lists)."""
    return [c for c, t in examples.schema.items() if c not in BASE_COLUMNS and not isinstance(t, (pl.List, pl.Array))]


def check_labels(examples: pl.DataFrame, names: Sequence[str], what: str) -> None:
    usable = label_columns(examples)
    for name in names:
        if name not in usable:
            raise UnknownColumnError(f"{what}: {name!r} is not a label of this store's examples; "
                                     f"labels: {', '.join(usable)}")


def example_filter(examples: pl.DataFrame, where: pl.Expr | Mapping[str, Any] | None) -> np.ndarray | None:
    """[example] bool: the examples `where` keeps, or None for all.

    where: a Polars expression over the examples table (pl.col('carry_2') & pl.col('correct')...),
    or a mapping label -> value (or list of values) that every kept example matches.
    """
    if where is None:
        return None
    if isinstance(where, Mapping):
        check_labels(examples, list(where), "where")
        expr = pl.lit(True)
        for name, value in where.items():
            values = list(value) if isinstance(value, (list, tuple, set)) else [value]
            expr = expr & pl.col(name).is_in(pl.Series(values, dtype=examples.schema[name], strict=False).implode())
        where = expr
    if not isinstance(where, pl.Expr):
        raise InvalidParameterError(f"where: expected a Polars expression or a mapping label -> value, got "
                                    f"{type(where).__name__}")
    try:
        keep = examples.select(where.fill_null(False).alias("keep")).to_series()
    except pl.exceptions.ColumnNotFoundError as e:
        raise UnknownColumnError(f"where: {str(e).splitlines()[0]}; labels: "
                                 f"{', '.join(label_columns(examples))}") from None
    except pl.exceptions.PolarsError as e:
        raise InvalidParameterError(f"where: cannot evaluate the filter on the examples: "
                                    f"{str(e).splitlines()[0]}") from None
    if keep.dtype != pl.Boolean or keep.len() != examples.height:
        raise InvalidParameterError(f"where: the filter must give one boolean per example, got {keep.dtype}")
    return keep.to_numpy()
