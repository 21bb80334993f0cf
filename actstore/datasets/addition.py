"""4-digit addition `a0a1a2a3+b0b1b2b3=c0c1c2c3` (seed 003), digits most significant first.

Tokens: digits 0-9 are themselves, '+' is 10, '=' is 11. Operands are drawn below
`max_operand` (default 10**digits // 2, i.e. 5000) so the sum always fits in `digits` digits.
The answers are the sum digits, each read one position before it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import polars as pl

from actstore.datasets.base import TaskData, check_int, check_n_seed
from actstore.datasets.report_spec import LabelSplit, ReportSpec, RoleAttention

PLUS, EQUALS = 10, 11


class Addition:
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

    def generate(self, n: int, seed: int, tokenizer: Any = None) -> TaskData:
        check_n_seed(n, seed)
        d = self.digits
        rng = np.random.default_rng(seed)
        a = rng.integers(0, self.max_operand, size=n, dtype=np.int64)
        b = rng.integers(0, self.max_operand, size=n, dtype=np.int64)
        s = a + b
        place = 10 ** np.arange(d - 1, -1, -1, dtype=np.int64)  # most significant first
        a_dig = (a[:, None] // place) % 10  # [example, digit]
        b_dig = (b[:, None] // place) % 10
        s_dig = (s[:, None] // place) % 10
        col = lambda v: np.full((n, 1), v, dtype=np.int64)  # noqa: E731
        tokens = np.concatenate([a_dig, col(PLUS), b_dig, col(EQUALS), s_dig], axis=1)

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
        str_tokens = [[vocab[t] for t in row] for row in tokens.tolist()]
        return TaskData(
            task=self.name,
            params=self.params,
            seed=int(seed),
            tokens=tokens,
            lengths=np.full(n, tokens.shape[1], dtype=np.int64),
            answer_pos=np.broadcast_to(np.arange(2 * d + 1, 3 * d + 1, dtype=np.int64), (n, d)).copy(),
            answer_tokens=s_dig.copy(),
            counter_tokens=None,
            roles=np.broadcast_to(roles, tokens.shape).copy(),
            str_tokens=str_tokens,
            text=["".join(r) for r in str_tokens],
            labels=pl.DataFrame(labels),
            pad_id=EQUALS,
        )
