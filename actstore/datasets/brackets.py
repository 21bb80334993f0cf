"""Balanced-brackets classification (seed 002, the ARENA bracket classifier).

Tokens: `[start]`=0, `[pad]`=1, `[end]`=2, `(`=3, `)`=4. A sequence is `[start] brackets [end]`,
right-padded with `[pad]` to `max_len + 2`. The model is bidirectional and reads its answer
at position 0, from a 2-class head: class 0 = unbalanced, 1 = balanced. The counterfactual
token is the other class, so the logit difference is balanced-minus-unbalanced when the
string is balanced (and the reverse when not).

About `balanced_fraction` of the examples are balanced (exactly round(1024 * fraction) of each
whole block of 1024, shuffled within the block, so any prefix is close to it); the
unbalanced ones mix random strings with near misses of balanced strings, so that every
failure type is common:
- total_elevation:    more opens than closes or the reverse (final count != 0), never negative
- negative_elevation: equal counts, but the running count dips below zero
- both:               both of the above
Labels are computed from the finished strings (`bracket_labels`), never from how they were made.

Corrupted twin (`TaskData.corrupted_tokens`): the same string with one bracket flipped ('(' to
')' or back), so the same length. The flipped bracket is drawn at random among those whose flip
changes the balanced label (every bracket of a balanced string; of an unbalanced string, the
brackets whose flip balances it, where there are any, else any bracket), from a generator
seeded with (seed, 1, block) so the clean examples are the same as without it. `roles` are the clean
string's, so the flipped position's role names the clean bracket. Labels: twin_pos (the token
position flipped, 1..n_brackets), twin_balanced (the twin's own label, from `bracket_labels`).
Answer and counterfactual tokens stay the clean example's.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import polars as pl

from actstore.datasets.base import BLOCK, BlockTask, TaskData
from actstore.datasets.report_spec import LabelSplit, NeuronScatter, ReportSpec
from actstore.errors import InvalidParameterError

START, PAD, END, OPEN, CLOSE = 0, 1, 2, 3, 4
VOCAB = ["[start]", "[pad]", "[end]", "(", ")"]
UNBALANCED, BALANCED = 0, 1
FAILURES = ["none", "total_elevation", "negative_elevation", "both"]

# how unbalanced strings are made: (method, probability). Tuned so each failure type is
# >= 20% of the unbalanced examples at the default max_len (see tests/datasets/test_brackets.py).
_UNBALANCED_METHODS = (
    ("random", 0.25),  # uniform random string of random length: mostly 'both' / 'total'
    ("flip_open", 0.15),  # balanced string with one '(' turned to ')': 'both' or 'total'
    ("flip_close", 0.15),  # balanced string with one ')' turned to '(': 'total' only
    ("invert_component", 0.3),  # a top-level '(w)' turned to ')w(': 'negative' only
    ("drop_one", 0.15),  # balanced string with one bracket removed: odd length, 'total'/'both'
)


class Brackets(BlockTask):
    """Balanced-brackets strings of up to `max_len` brackets (an even integer, default 40)."""

    name: ClassVar[str] = "brackets"

    def __init__(self, max_len: int = 40, balanced_fraction: float = 0.5) -> None:
        if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) or not (
            2 <= max_len <= 200 and max_len % 2 == 0
        ):
            raise InvalidParameterError(f"brackets: max_len must be an even integer in 2..200, got {max_len!r}")
        if isinstance(balanced_fraction, bool) or not isinstance(balanced_fraction, (int, float)) or not (
            0.0 <= balanced_fraction <= 1.0
        ):
            raise InvalidParameterError(
                f"brackets: balanced_fraction must be a number in 0..1, got {balanced_fraction!r}"
            )
        self.max_len = int(max_len)
        self.balanced_fraction = float(balanced_fraction)

    @property
    def params(self) -> dict[str, Any]:
        return {"max_len": self.max_len, "balanced_fraction": self.balanced_fraction}

    @property
    def vocab(self) -> list[str]:
        return list(VOCAB)

    @property
    def report(self) -> ReportSpec:
        """The seed's failure-type split, and each MLP layer's neurons against the open proportion."""
        return ReportSpec(
            accuracy=("failure", "balanced", "starts_open"),
            splits=(LabelSplit("failure", "Attribution by failure type", "Component attributions split by why a "
                               "string is unbalanced (or 'balanced')."),),
            neurons=NeuronScatter("open_proportion", color="failure"),
        )

    @property
    def n_classes(self) -> int:
        """Size of the classifier's output vocabulary (d_vocab_out)."""
        return 2

    def _block(self, rng: np.random.Generator, twin_rng: np.random.Generator, count: int, ctx: Any,
               seed: int) -> TaskData:
        """The first `count` strings of a block: which are balanced is drawn for the whole block, then the
        strings one after another (each from the same generator), so a prefix never depends on `count`."""
        want_balanced = np.zeros(BLOCK, dtype=bool)
        want_balanced[: int(round(BLOCK * self.balanced_fraction))] = True
        rng.shuffle(want_balanced)
        strings = [
            _balanced(rng, self.max_len) if bal else _unbalanced(rng, self.max_len) for bal in want_balanced[:count]
        ]
        return _task_data(strings, self.params, seed, twin_rng)


def bracket_labels(strings: list[str]) -> pl.DataFrame:
    """Labels of bracket strings: balanced, failure, open_proportion, starts_open, n_brackets.

    Uses the running count of opens minus closes; `failure` names which of the two balance
    conditions fail (final count zero; count never below zero).
    """
    step = _steps(strings, max(1, max(len(s) for s in strings)))  # [example, bracket] +1 / -1 / 0 (past end)
    height = np.cumsum(step, axis=1)  # [example, bracket]
    total_bad = height[:, -1] != 0
    negative_bad = (height < 0).any(axis=1)
    failure_idx = total_bad.astype(np.int64) + 2 * negative_bad.astype(np.int64)
    n_open = (step == 1).sum(axis=1)
    n_brackets = (step != 0).sum(axis=1)
    return pl.DataFrame(
        {
            "balanced": ~(total_bad | negative_bad),
            "failure": np.array(FAILURES)[failure_idx],
            "open_proportion": np.where(n_brackets > 0, n_open / np.maximum(n_brackets, 1), 0.0),
            "starts_open": step[:, 0] == 1,
            "n_brackets": n_brackets,
        }
    )


def _task_data(strings: list[str], params: dict[str, Any], seed: int, twin_rng: np.random.Generator) -> TaskData:
    """Tokens, roles and answers of bracket strings (labels from `bracket_labels`)."""
    n, width = len(strings), int(params["max_len"]) + 2
    lengths = np.array([len(s) + 2 for s in strings], dtype=np.int64)
    step = _steps(strings, width)  # [example, pos] +1 '(' / -1 ')' / 0, shifted below by [start]
    pos = np.arange(width)[None, :]
    tokens = np.full((n, width), PAD, dtype=np.int64)  # [example, pos]
    tokens[:, 1:] = np.where(step[:, :-1] == 1, OPEN, np.where(step[:, :-1] == -1, CLOSE, PAD))
    tokens[:, 0] = START
    tokens[pos == (lengths - 1)[:, None]] = END
    # role codes into ROLES: 0 '' (padding), 1 start, 2 open, 3 close, 4 end
    codes = np.where(tokens == OPEN, 2, np.where(tokens == CLOSE, 3, 0))
    codes[:, 0] = 1
    codes[pos == (lengths - 1)[:, None]] = 4
    roles = _ROLES[codes]
    labels = bracket_labels(strings)
    balanced = labels["balanced"].to_numpy()
    labels = labels.insert_column(4, pl.Series("length", lengths))
    flip = _twin_flips(strings, twin_rng, int(params["max_len"]))  # [example] bracket index flipped in the twin
    rows = np.arange(n)
    twin = tokens.copy()
    twin[rows, flip + 1] = OPEN + CLOSE - tokens[rows, flip + 1]
    twin_strings = [t[:i] + (")" if t[i] == "(" else "(") + t[i + 1:] for t, i in zip(strings, flip.tolist())]
    labels = labels.with_columns(pl.Series("twin_pos", flip + 1),
                                 bracket_labels(twin_strings)["balanced"].alias("twin_balanced"))
    answer = np.where(balanced, BALANCED, UNBALANCED).astype(np.int64)[:, None]  # [example, 1]
    return TaskData(
        task=Brackets.name,
        params=params,
        seed=seed,
        tokens=tokens,
        lengths=lengths,
        answer_pos=np.zeros((n, 1), dtype=np.int64),
        answer_tokens=answer,
        counter_tokens=1 - answer,
        roles=roles,
        str_tokens=[["[start]", *s, "[end]"] for s in strings],
        text=strings,
        labels=labels,
        pad_id=PAD,
        extra={"n_classes": 2, "classes": ["unbalanced", "balanced"]},
        corrupted_tokens=twin,
    )


def _twin_flips(strings: list[str], rng: np.random.Generator, max_len: int) -> np.ndarray:
    """[example] the index of the bracket each twin flips: uniform among the flips that change the balanced
    label where there are any, else among all brackets (every string has at least one). The draw is one
    [BLOCK, max_len] array, so a string's flip does not depend on how many strings are made."""
    n, width = len(strings), max(len(s) for s in strings)
    lengths = np.array([len(s) for s in strings], dtype=np.int64)
    step = _steps(strings, width)  # [example, bracket] +1 '(' / -1 ')' / 0 past the end
    height = np.cumsum(step, axis=1)  # after each bracket; flipping bracket p shifts heights p.. by -2 * step[p]
    before = np.concatenate([np.zeros((n, 1), dtype=np.int64), np.minimum.accumulate(height, axis=1)[:, :-1]],
                            axis=1)  # lowest height before bracket p (0 = the empty prefix)
    after = np.minimum.accumulate(height[:, ::-1], axis=1)[:, ::-1]  # lowest height from bracket p on
    balanced_now = (height[:, -1] == 0) & (after[:, 0] >= 0)
    balanced_flipped = (height[:, -1:] - 2 * step == 0) & (before >= 0) & (after - 2 * step >= 0)
    real = np.arange(width)[None, :] < lengths[:, None]
    changes = real & (balanced_flipped != balanced_now[:, None])
    score = np.where(real, 2.0 * changes + rng.random((BLOCK, max_len))[:n, :width], -np.inf)
    return np.argmax(score, axis=1).astype(np.int64)


def _balanced(rng: np.random.Generator, max_len: int, min_len: int = 2) -> str:
    """A random balanced string of even length in [min_len, max_len].

    A random arrangement of equal opens and closes, with every excursion below zero
    mirrored (its brackets swapped) so the running count never goes negative.
    """
    half = int(rng.integers(max(1, min_len // 2), max_len // 2 + 1))
    steps = np.repeat(np.array([1, -1], dtype=np.int64), half)
    rng.shuffle(steps)
    height = np.concatenate([[0], np.cumsum(steps)])
    # step i lies below zero when the walk's segment from height[i] to height[i+1] is negative
    below = (height[:-1] < 0) | (height[1:] < 0)
    return _string(np.where(below, -steps, steps) == 1)


def _unbalanced(rng: np.random.Generator, max_len: int) -> str:
    """A random unbalanced string of 1..max_len brackets (re-drawn until unbalanced)."""
    while True:
        # the draw rng.choice(len(_METHOD_NAMES), p=...) makes (one rng.random() against the cdf), without
        # its per-call checks of p: the same method for the same generator state
        method = _METHOD_NAMES[int(_METHOD_CDF.searchsorted(rng.random(), side="right"))]
        s = _UNBALANCED_MAKERS[method](rng, max_len)
        if s and not _is_balanced(s):
            return s


def _random_string(rng: np.random.Generator, max_len: int) -> str:
    length = int(rng.integers(1, max_len + 1))
    return _string(rng.random(length) < 0.5)


def _flip(rng: np.random.Generator, max_len: int, which: str) -> str:
    s = list(_balanced(rng, max_len))
    idx = [i for i, c in enumerate(s) if c == which]
    i = idx[int(rng.integers(len(idx)))]
    s[i] = ")" if which == "(" else "("
    return "".join(s)


def _invert_component(rng: np.random.Generator, max_len: int) -> str:
    """Turn one top-level component '(w)' of a balanced string into ')w(': dips to -1, ends at 0."""
    s = list(_balanced(rng, max_len))
    starts, h = [], 0
    for i, c in enumerate(s):
        if h == 0:
            starts.append(i)
        h += 1 if c == "(" else -1
    start = starts[int(rng.integers(len(starts)))]
    h, end = 0, start
    for end in range(start, len(s)):
        h += 1 if s[end] == "(" else -1
        if h == 0:
            break
    s[start], s[end] = ")", "("
    return "".join(s)


def _drop_one(rng: np.random.Generator, max_len: int) -> str:
    s = _balanced(rng, max_len)
    i = int(rng.integers(len(s)))
    return s[:i] + s[i + 1 :]


_UNBALANCED_MAKERS = {
    "random": _random_string,
    "flip_open": lambda rng, m: _flip(rng, m, "("),
    "flip_close": lambda rng, m: _flip(rng, m, ")"),
    "invert_component": _invert_component,
    "drop_one": _drop_one,
}


_METHOD_NAMES = [m for m, _ in _UNBALANCED_METHODS]
_METHOD_P = np.array([p for _, p in _UNBALANCED_METHODS])
_METHOD_CDF = (_METHOD_P / _METHOD_P.sum()).cumsum()
_METHOD_CDF /= _METHOD_CDF[-1]  # as Generator.choice normalises its cdf
_ROLES = np.array(["", "start", "open", "close", "end"])  # dtype <U5, as the roles of any block


def _steps(strings: list[str], width: int) -> np.ndarray:
    """[example, width] +1 for '(', -1 for ')', 0 past each string's end (no string is longer than width)."""
    lengths = np.array([len(s) for s in strings], dtype=np.int64)
    flat = np.frombuffer("".join(strings).encode(), dtype=np.uint8)
    step = np.zeros((len(strings), width), dtype=np.int64)
    step[np.arange(width)[None, :] < lengths[:, None]] = np.where(flat == ord("("), 1, -1)  # row-major = joined
    return step


def _string(opens: np.ndarray) -> str:
    """The bracket string with '(' where `opens` [bracket] is True, ')' elsewhere."""
    return np.where(opens, ord("("), ord(")")).astype(np.uint8).tobytes().decode()


def _is_balanced(s: str) -> bool:
    h = 0
    for c in s:
        h += 1 if c == "(" else -1
        if h < 0:
            return False
    return h == 0
