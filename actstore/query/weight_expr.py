"""Residual-stream directions written as small expressions over a store's weights, parsed without eval.

    W_U[:,7] - W_U[:,3]          the logit difference direction of tokens 7 and 3
    0.5 * (W_E[3] + W_E[4, :])   the mean embedding of tokens 3 and 4
    W_pos[5] / 2

Grammar (whitespace ignored):

    expr   := term (('+' | '-') term)*
    term   := unary (('*' | '/') unary)*
    unary  := ('+' | '-') unary | atom
    atom   := NUMBER | ref | '(' expr ')'
    ref    := 'W_U' '[' ':' ',' INT ']'            a column of the unembedding   [d_model]
            | ('W_E' | 'W_pos') '[' INT (',' ':')? ']'  a row of the (positional) embedding [d_model]

A value is a scalar or a d_model vector: vectors add to vectors, scalars scale them (a vector
divides only by a scalar); the whole expression must be a vector. Indices are checked against
the weight's size. Nothing else is accepted: no names, calls or attributes, so parsing cannot run
code; length and nesting are capped.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from actstore.errors import InvalidParameterError
from actstore.store.arch import Arch

MAX_LENGTH = 2000  # characters
MAX_DEPTH = 32  # nested parentheses and signs
WEIGHTS = {"W_U": Arch.W_U, "W_E": Arch.W_E, "W_pos": Arch.W_pos}
_TOKEN = re.compile(r"\s*(?:(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
                    r"|(?P<op>[-+*/()\[\],:]))")


def looks_like_expression(text: str) -> bool:
    """Whether a target string is meant as a weight expression (it names W_U, W_E or W_pos)."""
    return re.search(r"\bW_(?:U|E|pos)\b", text) is not None


def parse_expression(text: str, param: Callable[[str], np.ndarray]) -> np.ndarray:
    """The [d_model] float64 vector `text` denotes; `param(name)` reads a weight by its state-dict name
    (e.g. Weights.param). InvalidParameterError (one line, quoting the expression) if it is not one."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidParameterError(f"expression {text!r}: expected something like 'W_U[:,7] - W_U[:,3]'")
    if len(text) > MAX_LENGTH:
        raise InvalidParameterError(f"expression of {len(text)} characters: at most {MAX_LENGTH}")
    value = _Parser(text, param).parse()
    if np.ndim(value) == 0:
        raise InvalidParameterError(f"expression {text!r} is a number, not a direction: use a W_U column or a "
                                    "W_E / W_pos row")
    if not np.isfinite(value).all():
        raise InvalidParameterError(f"expression {text!r} gives NaN or infinite values")
    return np.asarray(value, dtype=np.float64)


class _Parser:
    def __init__(self, text: str, param: Callable[[str], np.ndarray]) -> None:
        self.text, self.param = text, param
        self.tokens = self._lex(text)
        self.i = 0
        self.depth = 0

    def _lex(self, text: str) -> list[tuple[str, str, int]]:
        out, pos = [], 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                bad = text[pos:].lstrip()[:1]
                raise self._error(f"unexpected character {bad!r}")
            kind = m.lastgroup or "op"
            out.append((kind, m.group(kind), m.start(kind)))
            pos = m.end()
        return out

    def _error(self, what: str) -> InvalidParameterError:
        return InvalidParameterError(f"expression {self.text!r}: {what} (expected e.g. 'W_U[:,7] - W_U[:,3]', "
                                     "'W_E[3]', numbers, + - * / and parentheses)")

    def _peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def _take(self, op: str | None = None) -> tuple[str, str, int]:
        tok = self._peek()
        if tok is None:
            raise self._error(f"it ends where {op!r} was expected" if op else "it ends too early")
        if op is not None and (tok[0] != "op" or tok[1] != op):
            raise self._error(f"expected {op!r} at {tok[1]!r}")
        self.i += 1
        return tok

    def _at(self, *ops: str) -> bool:
        tok = self._peek()
        return tok is not None and tok[0] == "op" and tok[1] in ops

    def parse(self) -> np.ndarray | float:
        value = self._expr()
        tok = self._peek()
        if tok is not None:
            raise self._error(f"unexpected {tok[1]!r}")
        return value

    def _expr(self) -> np.ndarray | float:
        value = self._term()
        while self._at("+", "-"):
            op = self._take()[1]
            right = self._term()
            if np.ndim(value) != np.ndim(right):
                raise self._error(f"cannot {'add' if op == '+' else 'subtract'} a number and a vector")
            value = value + right if op == "+" else value - right
        return value

    def _term(self) -> np.ndarray | float:
        value = self._unary()
        while self._at("*", "/"):
            op = self._take()[1]
            right = self._unary()
            if op == "*":
                if np.ndim(value) and np.ndim(right):
                    raise self._error("cannot multiply two vectors (scale a vector by a number)")
                value = value * right
            else:
                if np.ndim(right):
                    raise self._error("cannot divide by a vector")
                if right == 0:
                    raise self._error("division by zero")
                value = value / right
        return value

    def _unary(self) -> np.ndarray | float:
        if self._at("+", "-"):
            op = self._take()[1]
            value = self._nested(self._unary)
            return -value if op == "-" else value
        return self._atom()

    def _nested(self, parse: Callable[[], np.ndarray | float]) -> np.ndarray | float:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self._error(f"nested more than {MAX_DEPTH} deep")
        try:
            return parse()
        finally:
            self.depth -= 1

    def _atom(self) -> np.ndarray | float:
        tok = self._take()
        kind, text, _ = tok
        if kind == "num":
            return float(text)
        if kind == "op" and text == "(":
            value = self._nested(self._expr)
            self._take(")")
            return value
        if kind == "name":
            return self._ref(text)
        raise self._error(f"unexpected {text!r}")

    def _int(self) -> int:
        kind, text, _ = self._take()
        if kind != "num" or not text.isdigit():
            raise self._error(f"expected a non-negative integer index, got {text!r}")
        return int(text)

    def _ref(self, name: str) -> np.ndarray:
        if name not in WEIGHTS:
            raise self._error(f"unknown name {name!r} (only {', '.join(WEIGHTS)})")
        self._take("[")
        if name == "W_U":
            self._take(":")
            self._take(",")
            index = self._int()
        else:
            index = self._int()
            if self._at(","):
                self._take(",")
                self._take(":")
        self._take("]")
        weight = self.param(WEIGHTS[name])  # W_U [d_model, d_vocab_out]; W_E, W_pos [rows, d_model]
        size = weight.shape[1] if name == "W_U" else weight.shape[0]
        if index >= size:
            what = "columns (output tokens)" if name == "W_U" else "rows"
            raise self._error(f"{name} has {size} {what}; index {index} is outside")
        return np.asarray(weight[:, index] if name == "W_U" else weight[index], dtype=np.float64)
