"""The meta tables of one chunk: examples and tokens from the task data, outputs from the logits.

Columns (see DESIGN.md):
- examples: example_id, split, text, tokens, length, answer_positions, answer_tokens,
  counter_tokens, corrupted_tokens (the corrupted twin's tokens; null for a task without twins),
  then the task's label columns
- tokens:   example_id, pos, token_id, str_token, role (null where the token has none);
  real tokens only (no padding)
- outputs:  example_id, answer_idx, answer_pos, correct_token, counter_token, correct_logit,
  counter_logit, logit_diff, prob, rank, loss, correct, then the twin's baseline:
  corrupted_correct_logit, corrupted_counter_logit, corrupted_logit_diff, corrupted_loss (the
  clean correct and counter tokens read on the corrupted twin's run; null for a task without
  twins, and the counter columns null for a task without counter tokens)
- topk:     example_id, answer_idx, rank (0 = most likely), token_id, str_token (null where neither the
  task's vocabulary nor the model's tokenizer names the token), logit, prob; the manifest's top_k rows
  per answer (stores with top_k 0 have no such table)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import chain
from typing import Any

import numpy as np
import polars as pl

from actstore.datasets.base import TaskData

DEFAULT_SPLIT = "all"  # tasks that define splits put a 'split' label column in their labels
TWIN_OUTPUTS = ("correct_logit", "counter_logit", "logit_diff", "loss")  # read on the twin's run, as corrupted_*


def examples_frame(data: TaskData, start: int) -> pl.DataFrame:
    """Rows of `data` (a chunk's slice starting at example `start`)."""
    df = data.to_frame().with_columns(pl.col("example_id") + start)
    if "split" not in df.columns:
        df = df.with_columns(pl.lit(DEFAULT_SPLIT).alias("split"))
    return df.select("example_id", "split", pl.all().exclude("example_id", "split"))


def tokens_frame(data: TaskData, start: int) -> pl.DataFrame:
    """One row per real token of each example of the slice."""
    n, width = data.tokens.shape
    real = np.arange(width)[None, :] < data.lengths[:, None]  # [example, pos]
    ex, pos = np.nonzero(real)
    # '' (no role) becomes null; a list of str builds a Series several times faster than a numpy str array
    roles = [r or None for r in np.asarray(data.roles)[ex, pos].astype(str).tolist()]
    return pl.DataFrame([
        pl.Series("example_id", (ex + start).astype(np.int64)),
        pl.Series("pos", pos.astype(np.int64)),
        pl.Series("token_id", data.tokens[ex, pos].astype(np.int64)),
        # real tokens are each example's first `length`: one flat list in the row-major order of np.nonzero
        pl.Series("str_token", list(chain.from_iterable(s[:k] for s, k in zip(data.str_tokens, data.lengths.tolist()))),
                  dtype=pl.String),
        pl.Series("role", roles, dtype=pl.String),
    ])


def outputs_frame(data: TaskData, start: int, out: dict[str, np.ndarray]) -> pl.DataFrame:
    """One row per (example, answer) from `forward.answer_outputs` values ([example, answer] each)."""
    n, n_ans = data.answer_pos.shape

    def flat(a: np.ndarray) -> np.ndarray:
        return np.asarray(a).reshape(n * n_ans)

    def nullable(key: str, dtype: type[pl.DataType]) -> pl.Series:
        if key in out:
            return pl.Series(key, flat(out[key]), dtype=dtype)
        return pl.Series(key, [None] * (n * n_ans), dtype=dtype)

    counter = data.counter_tokens
    return pl.DataFrame([
        pl.Series("example_id", np.repeat(np.arange(start, start + n, dtype=np.int64), n_ans)),
        pl.Series("answer_idx", np.tile(np.arange(n_ans, dtype=np.int64), n)),
        pl.Series("answer_pos", flat(data.answer_pos).astype(np.int64)),
        pl.Series("correct_token", flat(data.answer_tokens).astype(np.int64)),
        pl.Series("counter_token", [None] * (n * n_ans) if counter is None else flat(counter).astype(np.int64),
                  dtype=pl.Int64),
        pl.Series("correct_logit", flat(out["correct_logit"]), dtype=pl.Float32),
        nullable("counter_logit", pl.Float32),
        nullable("logit_diff", pl.Float32),
        pl.Series("prob", flat(out["prob"]), dtype=pl.Float32),
        pl.Series("rank", flat(out["rank"]).astype(np.int64)),
        pl.Series("loss", flat(out["loss"]), dtype=pl.Float32),
        pl.Series("correct", flat(out["correct"]).astype(bool)),
        *(nullable(f"corrupted_{key}", pl.Float32) for key in TWIN_OUTPUTS),
    ])


TokenNames = Callable[[np.ndarray], list[str | None]]  # distinct token ids -> their strings (None: unknown)


def token_names(vocab: Sequence[str] | None, tokenizer: Any, classes: Sequence[str] | None, d_vocab: int,
                d_vocab_out: int) -> TokenNames:
    """How topk names the model's output tokens: the task's class names where its outputs are classes
    (brackets), else the task's own vocabulary (zoo tasks: answers are token ids of the inputs' vocabulary,
    as addition's digits), else the model's tokenizer where outputs share the input vocabulary (decoded
    one token at a time, as the text tasks do); else nothing."""
    if classes is not None and len(classes) == d_vocab_out:
        words: list[str] | None = [str(c) for c in classes]
    elif vocab is not None:
        words = list(vocab)
    else:
        words = None
    if words is not None:
        return lambda ids: [words[i] if 0 <= i < len(words) else None for i in ids.tolist()]
    if tokenizer is not None and d_vocab_out == d_vocab:
        seen: dict[int, str] = {}  # each token decoded once per ingest

        def decode(ids: np.ndarray) -> list[str | None]:
            for i in ids.tolist():
                if i not in seen:
                    seen[i] = tokenizer.decode([i], clean_up_tokenization_spaces=False)
            return [seen[i] for i in ids.tolist()]

        return decode
    return lambda ids: [None] * len(ids)


def topk_frame(data: TaskData, start: int, out: dict[str, np.ndarray], names: TokenNames) -> pl.DataFrame:
    """One row per (example, answer, rank) from `forward.answer_topk` values ([example, answer, k] each)."""
    ids = np.asarray(out["topk_token"], dtype=np.int64)
    n, n_ans, k = ids.shape
    flat = ids.reshape(-1)
    distinct, inverse = np.unique(flat, return_inverse=True)
    strings = pl.Series("str_token", names(distinct), dtype=pl.String)
    return pl.DataFrame([
        pl.Series("example_id", np.repeat(np.arange(start, start + n, dtype=np.int64), n_ans * k)),
        pl.Series("answer_idx", np.tile(np.repeat(np.arange(n_ans, dtype=np.int64), k), n)),
        pl.Series("rank", np.tile(np.arange(k, dtype=np.int64), n * n_ans)),
        pl.Series("token_id", flat),
        strings.gather(inverse.reshape(-1)) if flat.size else strings.clear(),
        pl.Series("logit", np.asarray(out["topk_logit"]).reshape(-1), dtype=pl.Float32),
        pl.Series("prob", np.asarray(out["topk_prob"]).reshape(-1), dtype=pl.Float32),
    ])

