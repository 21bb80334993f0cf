"""`Marked`, a task defined here: digit strings of different lengths where only some examples
carry a marker token (role 'M'), every example ends in role 'END', and there is no counterfactual
token (counter_tokens None), so metric logit_diff is undefined. Its twin changes the first digit.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import polars as pl

from actstore.datasets import TaskData
from actstore.datasets.base import check_n_seed

MARK, PAD = 10, 11


class Marked:
    name: ClassVar[str] = "iv_marked_test"

    @property
    def params(self) -> dict[str, Any]:
        return {}

    @property
    def vocab(self) -> list[str]:
        return [str(d) for d in range(10)] + ["M", "_"]

    def generate(self, n: int, seed: int, tokenizer: Any = None) -> TaskData:
        check_n_seed(n, seed)
        rng = np.random.default_rng(seed)
        lengths = rng.integers(4, 9, size=n)
        width = int(lengths.max())
        tokens = np.full((n, width), PAD, dtype=np.int64)
        roles = np.full((n, width), "", dtype=object)
        marked = np.zeros(n, dtype=bool)
        for i, length in enumerate(lengths):
            tokens[i, :length] = rng.integers(0, 10, size=length)
            roles[i, length - 1] = "END"
            if i % 2 == 0:  # every other example has the marker, somewhere in its middle
                p = int(rng.integers(1, length - 1))
                tokens[i, p] = MARK
                roles[i, p] = "M"
                marked[i] = True
        corrupted = tokens.copy()
        corrupted[:, 0] = (tokens[:, 0] + 1) % 10
        answer_pos = (lengths - 1)[:, None]
        answer = tokens[:, :1] % 10  # "repeat the first digit"
        str_tokens = [[self.vocab[t] for t in row[:length]] for row, length in zip(tokens.tolist(), lengths)]
        return TaskData(
            task=self.name, params=self.params, seed=seed, tokens=tokens, lengths=lengths.astype(np.int64),
            answer_pos=answer_pos.astype(np.int64), answer_tokens=answer.astype(np.int64), counter_tokens=None,
            roles=roles, str_tokens=str_tokens, text=["".join(r) for r in str_tokens],
            labels=pl.DataFrame({"marked": marked}), pad_id=PAD, corrupted_tokens=corrupted,
        )
