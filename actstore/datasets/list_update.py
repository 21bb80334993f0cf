"""List-index update `BOS a1 a2 a3 NL idx elt NL b1 b2 b3` (seed 000).

Numbers 0..max_num-1 are their own tokens, BOS is max_num, NL is max_num+1. `b` is `a` with
position `idx` set to `elt`; the answers are b1..b3, each read one position before it.
Unlike the seed's generator (one idx and elt per batch), idx and elt are drawn per example.

Corrupted twin (`TaskData.corrupted_tokens`): the same list and idx with another element
(`twin_elt`, uniform over the other max_num - 1 numbers, from a generator seeded with (seed, 1, block)
so the clean examples are the same as without it), and the twin's own correct update as its
b-list. `counter_tokens` are the twin's b-list: they differ from the answers at position idx
only; at the other positions the counterfactual is the correct token and the logit
difference is 0 by construction.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import polars as pl

from actstore.datasets.base import BLOCK, BlockTask, TaskData, check_int
from actstore.datasets.report_spec import ReportSpec


class ListUpdate(BlockTask):
    name: ClassVar[str] = "list_update"

    def __init__(self, list_len: int = 3, max_num: int = 50) -> None:
        self.list_len = check_int("list_update", "list_len", list_len, 1, 32)
        self.max_num = check_int("list_update", "max_num", max_num, max(2, self.list_len), 100_000,
                                 " (indices 0..list_len-1 are number tokens)")

    @property
    def params(self) -> dict[str, Any]:
        return {"list_len": self.list_len, "max_num": self.max_num}

    @property
    def bos(self) -> int:
        return self.max_num

    @property
    def newline(self) -> int:
        return self.max_num + 1

    @property
    def vocab(self) -> list[str]:
        return [str(i) for i in range(self.max_num)] + ["BOS", "NL"]

    @property
    def report(self) -> ReportSpec:
        """The common sections only."""
        return ReportSpec(accuracy=("idx", "changed"))

    def _block(self, rng: np.random.Generator, twin_rng: np.random.Generator, count: int, ctx: Any,
               seed: int) -> TaskData:
        """One whole block (cheap to make whole; the caller keeps the first `count`)."""
        k, n = self.list_len, BLOCK
        a = rng.integers(0, self.max_num, size=(n, k), dtype=np.int64)
        idx = rng.integers(0, k, size=n, dtype=np.int64)
        elt = rng.integers(0, self.max_num, size=n, dtype=np.int64)
        b = a.copy()
        b[np.arange(n), idx] = elt
        col = lambda v: np.asarray(v, dtype=np.int64).reshape(n, 1) if np.ndim(v) else np.full((n, 1), v)  # noqa: E731

        def prompt(elt: np.ndarray, b: np.ndarray) -> np.ndarray:
            return np.concatenate(
                [col(self.bos), a, col(self.newline), col(idx), col(elt), col(self.newline), b], axis=1
            ).astype(np.int64)

        tokens = prompt(elt, b)
        twin_elt = (elt + twin_rng.integers(1, self.max_num, size=n, dtype=np.int64)) % self.max_num  # != elt
        twin_b = a.copy()
        twin_b[np.arange(n), idx] = twin_elt
        roles = np.array(
            ["BOS"] + [f"a{i}" for i in range(k)] + ["NL", "idx", "elt", "NL"] + [f"b{i}" for i in range(k)]
        )
        first_b = k + 5
        vocab = self.vocab
        str_tokens = np.array(vocab, dtype=object)[tokens].tolist()  # [example][pos] str
        labels = pl.DataFrame(
            {"idx": idx, "elt": elt, "changed": a[np.arange(n), idx] != elt}
            | {f"a{i}": a[:, i] for i in range(k)}
            | {"twin_elt": twin_elt}
        )
        return TaskData(
            task=self.name,
            params=self.params,
            seed=int(seed),
            tokens=tokens,
            lengths=np.full(n, tokens.shape[1], dtype=np.int64),
            answer_pos=np.broadcast_to(np.arange(first_b - 1, first_b - 1 + k, dtype=np.int64), (n, k)).copy(),
            answer_tokens=b,
            counter_tokens=twin_b,
            roles=np.broadcast_to(roles, tokens.shape).copy(),
            str_tokens=str_tokens,
            text=[" ".join(r) for r in str_tokens],
            labels=labels,
            pad_id=self.newline,
            corrupted_tokens=prompt(twin_elt, twin_b),
        )
