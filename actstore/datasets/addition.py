"""4-digit addition `a0a1a2a3+b0b1b2b3=c0c1c2c3` (seed 003), digits most significant first.

Tokens: digits 0-9 are themselves, '+' is 10, '=' is 11. Operands are drawn below
`max_operand` (default 10**digits // 2, i.e. 5000) so the sum always fits in `digits` digits.
The answers are the sum digits, each read one position before it.

Corrupted twin (`TaskData.corrupted_tokens`): one digit of one operand changed so that carry_0
(the carry into the first sum digit, c0) flips. The changed digit is in column 1 (a1 or b1,
the column whose carry-out is carry_0); which operand and which new digit are drawn at random
among the changes that flip carry_0 and keep the operand below `max_operand`. Where no
in-range change flips it, one that leaves the range (but keeps the sum within `digits`) is
taken; where no change of a1 or b1 can flip it (a1 = b1 = 9 with a carry into column 1, or
a1 = b1 = 0 without one, about 1% of examples) the digit is changed anyway and
`twin_carry_flipped` is False. With one digit there is no carry: the one digit of a or b is
changed. The twin's sum digits are its own sum (the prompt is teacher-forced), so the twin
differs from the clean example in the changed digit and in the sum digits that change.
The twin's randomness comes from its own generator (seeded from (seed, 1, block); see
actstore.datasets.base): the clean examples are the same as without it.

`counter_tokens` are the twin's sum digits: the answer the twin's prompt asks for. Changing
column 1 changes c1 always, c0 exactly where carry_0 flips, and never c2.. (the lower columns
are untouched). Where a twin's digit equals the clean one (c2, c3, ...) the counterfactual
token is the correct token and the logit difference is 0 by construction; `twin_differs_{i}`
says which answers differ.

Twin labels: twin_operand ('a' or 'b'), twin_digit (the changed digit's index, role a{i}/b{i}),
twin_a, twin_b, twin_sum, twin_carry_flipped, twin_differs_0..twin_differs_{digits-1}.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import numpy as np
import polars as pl

from actstore.datasets.base import BLOCK, BlockTask, TaskData, check_int
from actstore.datasets.report_spec import LabelSplit, ReportSpec, RoleAttention

PLUS, EQUALS = 10, 11


class Addition(BlockTask):
    name: ClassVar[str] = "addition"

    def __init__(self, digits: int = 4, max_operand: int | None = None) -> None:
        self.digits = check_int("addition", "digits", digits, 1, 9)
        limit = 10**self.digits // 2
        self.max_operand = check_int("addition", "max_operand", limit if max_operand is None else max_operand,
                                     1, limit, f" so that the sum of two operands fits in {digits} digits")

    @property
    def params(self) -> dict[str, Any]:
        return {"digits": self.digits, "max_operand": self.max_operand}

    @property
    def vocab(self) -> list[str]:
        return [str(d) for d in range(10)] + ["+", "="]

    @property
    def report(self) -> ReportSpec:
        """The seed's carry analysis: each sum digit split by the carry into it, and the attention from '='
        (where the first digit is read) split by the carry into that digit."""
        return ReportSpec(
            accuracy=("carry_0", "carry_1", "carry_2", "any_carry"),
            splits=(LabelSplit("carry_{answer}", "Carry vs no carry", "Component attributions of each sum digit, "
                               "split by whether that digit receives a carry (the seed's carry analysis).",
                               legend="carry into this digit"),),
            attention=(RoleAttention("=", "Attention from '=', carry vs no carry", "Attention mass from the first "
                                     "answer position to each token role, split by carry_0.", split_by="carry_0"),),
        )

    def _block(self, rng: np.random.Generator, twin_rng: np.random.Generator, count: int, ctx: Any,
               seed: int) -> TaskData:
        """One whole block (cheap to make whole; the caller keeps the first `count`)."""
        d, n = self.digits, BLOCK
        a = rng.integers(0, self.max_operand, size=n, dtype=np.int64)
        b = rng.integers(0, self.max_operand, size=n, dtype=np.int64)
        s = a + b
        place = 10 ** np.arange(d - 1, -1, -1, dtype=np.int64)  # most significant first
        a_dig = (a[:, None] // place) % 10  # [example, digit]
        b_dig = (b[:, None] // place) % 10
        s_dig = (s[:, None] // place) % 10
        col = lambda v: np.full((n, 1), v, dtype=np.int64)  # noqa: E731
        tokens = np.concatenate([a_dig, col(PLUS), b_dig, col(EQUALS), s_dig], axis=1)
        twin = self._twin(a, b, twin_rng)
        t_dig = (twin.sum[:, None] // place) % 10
        twin_tokens = np.concatenate([(twin.a[:, None] // place) % 10, col(PLUS), (twin.b[:, None] // place) % 10,
                                      col(EQUALS), t_dig], axis=1)

        # Digit i receives a carry from digit i+1 when the lower digits of a and b overflow.
        lower = 10 ** np.arange(d - 1, 0, -1, dtype=np.int64)  # 10**(d-1-i) for i < d-1
        carries = (a[:, None] % lower + b[:, None] % lower) >= lower  # [example, d-1]

        vocab = self.vocab
        roles = np.array(
            [f"a{i}" for i in range(d)] + ["+"] + [f"b{i}" for i in range(d)] + ["="] + [f"c{i}" for i in range(d)]
        )
        labels: dict[str, np.ndarray] = {"a": a, "b": b, "sum": s}
        labels.update({f"carry_{i}": carries[:, i] for i in range(d - 1)})
        labels["any_carry"] = np.asarray(carries.any(axis=1))  # all False for one digit (no carries)
        labels.update(twin_operand=np.where(twin.operand == 0, "a", "b"), twin_digit=twin.digit, twin_a=twin.a,
                      twin_b=twin.b, twin_sum=twin.sum, twin_carry_flipped=twin.flipped)
        labels.update({f"twin_differs_{i}": t_dig[:, i] != s_dig[:, i] for i in range(d)})
        str_tokens = np.array(vocab, dtype=object)[tokens].tolist()  # [example][pos] str, the same objects as vocab's
        return TaskData(
            task=self.name,
            params=self.params,
            seed=int(seed),
            tokens=tokens,
            lengths=np.full(n, tokens.shape[1], dtype=np.int64),
            answer_pos=np.broadcast_to(np.arange(2 * d + 1, 3 * d + 1, dtype=np.int64), (n, d)).copy(),
            answer_tokens=s_dig.copy(),
            counter_tokens=t_dig,
            roles=np.broadcast_to(roles, tokens.shape).copy(),
            str_tokens=str_tokens,
            text=["".join(r) for r in str_tokens],
            labels=pl.DataFrame(labels),
            pad_id=EQUALS,
            corrupted_tokens=twin_tokens,
        )

    def _twin(self, a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> "_Twin":
        """Each example's twin operands: one digit of a or b in column TWIN_CARRY + 1 changed (see the module
        docstring for the order of preference), drawn with `rng`."""
        d, n = self.digits, len(a)
        j = min(TWIN_CARRY + 1, d - 1)  # the column whose carry-out is carry_{TWIN_CARRY} (0 for one digit)
        unit = 10 ** (d - 1 - j)
        x = np.stack([a, b], axis=1)  # [example, operand]
        x_j = (x // unit) % 10
        into = ((a % unit + b % unit) >= unit).astype(np.int64)  # [example] carry into column j
        out = x_j.sum(axis=1) + into >= 10  # [example] carry out of column j (carry_{TWIN_CARRY})
        v = np.arange(10, dtype=np.int64)  # [value] the changed digit's new value
        other_j = x_j[:, ::-1]  # the other operand's digit in column j
        flips = (v[None, None, :] + other_j[:, :, None] + into[:, None, None] >= 10) != out[:, None, None]
        if d == 1:
            flips[:] = False  # no carry to flip
        new = x[:, :, None] + (v[None, None, :] - x_j[:, :, None]) * unit  # [example, operand, value]
        fits = (v[None, None, :] != x_j[:, :, None]) & (new < 10**d // 2)  # the sum stays within d digits
        in_range = new < self.max_operand
        # preference tiers, then uniform among the candidates of the best tier that has any
        tier = np.where(fits, 1 + in_range + 2 * flips, 0).astype(np.float64)
        choice = np.argmax((tier + rng.random(tier.shape)).reshape(n, 20), axis=1)
        operand, value = choice // 10, choice % 10
        rows = np.arange(n)
        changed = new[rows, operand, value]
        ta, tb = np.where(operand == 0, changed, a), np.where(operand == 1, changed, b)
        return _Twin(ta, tb, ta + tb, operand.astype(np.int64), np.full(n, j, dtype=np.int64),
                     flips[rows, operand, value])


TWIN_CARRY = 0  # the carry the corrupted twin flips: carry_0, into the first sum digit


class _Twin(NamedTuple):
    """The corrupted twins of a batch of additions, one row per example."""

    a: np.ndarray
    b: np.ndarray
    sum: np.ndarray
    operand: np.ndarray  # 0: a changed, 1: b changed
    digit: np.ndarray  # index of the changed digit (most significant first)
    flipped: np.ndarray  # carry_{TWIN_CARRY} differs between the example and its twin
