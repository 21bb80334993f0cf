"""Days and months successor (seed 001): "Today it is Sunday, tomorrow it is" -> " Monday".

Each template names one day (or month), the subject, and asks for the one `offset` steps from
it (+1 for "tomorrow"/"next month", -1 for "yesterday"), wrapping around the week or year.
The counterfactual token is the subject itself (the seed's "wrong answer" is today).
Day and month words must be one token (with their leading space) for the tokenizer.

Roles: SUBJECT (the named day/month), END (the last token, where the answer is read).

Corrupted variant, `Days(corrupt="previous")`, as in seed 001's activation patching: the same
examples (same seed draws) with the subject replaced by answer + offset, so the clean answer
stands in the opposite relation to what the prompt names ("Today it is Tuesday, tomorrow it
is" keeps the answer " Monday", the day before Tuesday). The answer token is kept and the
counterfactual becomes the corrupted subject, as the seed does (its `new_wrong_tokens`).
Labels `today`/`answer`/`index` stay the clean ones; `subject` is the word the prompt names.

Corrupted twin (`TaskData.corrupted_tokens`): every example carries the prompt
`corrupt="previous"` writes for it (only the SUBJECT token differs; same length and roles), so
a clean dataset holds its own patching source. Answer and counterfactual tokens are the
dataset's own (the clean answer and the named subject). For a `corrupt="previous"` dataset the
twin is the clean prompt. Label `twin_subject` is the word the twin names.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import polars as pl

from actstore.datasets.base import BLOCK, BlockTask, TaskData, check_choice
from actstore.datasets.days_words import DAYS, ITEMS, MONTHS, TEMPLATES
from actstore.datasets.report_spec import ReportSpec
from actstore.datasets.templated import (PromptTokenizer, Segment, prompt_tokenizer, same_shape_twin, slot_name,
                                         split_template)
from actstore.errors import InvalidParameterError

KINDS = ("both", "day", "month")
CORRUPTIONS = ("none", "previous")


class Days(BlockTask):
    """Successor prompts over days and/or months; `corrupt='previous'` names another day."""

    name: ClassVar[str] = "days"

    def __init__(self, kind: str = "both", corrupt: str = "none") -> None:
        self.kind = check_choice("days", "kind", kind, tuple(KINDS))
        self.corrupt = check_choice("days", "corrupt", corrupt, tuple(CORRUPTIONS))

    @property
    def params(self) -> dict[str, Any]:
        return {"kind": self.kind, "corrupt": self.corrupt}

    @property
    def vocab(self) -> None:
        return None

    @property
    def report(self) -> ReportSpec:
        """The common sections only."""
        return ReportSpec(accuracy=("kind", "template", "offset"))

    def width(self, tokenizer: Any = None) -> int:
        """The longest prompt (BOS included) any seed makes with `tokenizer`: every example is padded to it."""
        return self._context(tokenizer)[1]

    def _context(self, tokenizer: Any) -> tuple[PromptTokenizer, int]:
        """The prompt tokenizer and the padded width (every subject is one token)."""
        ptok = prompt_tokenizer(tokenizer, "days", shared=True)
        kinds = ["day", "month"] if self.kind == "both" else [self.kind]
        for kind in kinds:
            multi = [w for w in ITEMS[kind] if ptok.single(" " + w) is None]
            if multi:
                raise InvalidParameterError(
                    f"days: {', '.join(multi)} are not one token (with a leading space) for this tokenizer; "
                    f"use kind={'month' if kind == 'day' else 'day'!r} or another tokenizer"
                )
        width = 1 + max(sum(1 if slot_name(part) else len(ptok.ids(part)) for part in parts)
                        for (kind, _, _), parts in zip(TEMPLATES, _TEMPLATE_PARTS) if kind in kinds)
        return ptok, width

    def _block(self, rng: np.random.Generator, twin_rng: np.random.Generator, count: int,
               ctx: tuple[PromptTokenizer, int], seed: int) -> TaskData:
        """The first `count` prompts of a block (every draw made for the whole block)."""
        (ptok, width), n = ctx, count
        # The same draws whatever the params, so corrupt='previous' lines up with the clean set.
        is_day = rng.random(BLOCK)[:n] < 0.5
        if self.kind != "both":
            is_day[:] = self.kind == "day"
        pick, item = rng.random(BLOCK)[:n], rng.random(BLOCK)[:n]  # uniform in [0, 1): template and subject
        day_t, month_t = (np.array([i for i, t in enumerate(TEMPLATES) if t[0] == k]) for k in ("day", "month"))
        template = np.where(
            is_day, day_t[(pick * len(day_t)).astype(np.int64)], month_t[(pick * len(month_t)).astype(np.int64)]
        )
        size = np.where(is_day, len(DAYS), len(MONTHS))
        index = (item * size).astype(np.int64)  # today's index in its list
        offset = np.array([TEMPLATES[t][2] for t in template], dtype=np.int64)
        answer_idx = (index + offset) % size
        previous = (answer_idx + offset) % size  # the subject of the corrupted prompt
        subject_idx, twin_idx = (previous, index) if self.corrupt == "previous" else (index, previous)

        words = [ITEMS["day" if d else "month"] for d in is_day]

        def prompts(subjects: np.ndarray) -> list[list[Segment]]:
            return [
                [
                    Segment(part.replace("[X]", w[k]), "SUBJECT") if slot_name(part) else Segment(part)
                    for part in _TEMPLATE_PARTS[t]
                ]
                for w, t, k in zip(words, template, subjects)
            ]

        enc = ptok.encode(prompts(subject_idx), width)
        twin_enc = ptok.encode(prompts(twin_idx), width)  # one-token subjects: the same lengths and roles
        answer = np.array([[ptok.single(" " + w[k])] for w, k in zip(words, answer_idx)], dtype=np.int64)
        counter = np.array([[ptok.single(" " + w[k])] for w, k in zip(words, subject_idx)], dtype=np.int64)
        labels = pl.DataFrame(
            {
                "kind": np.where(is_day, "day", "month"),
                "today": [w[k] for w, k in zip(words, index)],
                "answer": [w[k] for w, k in zip(words, answer_idx)],
                "template": template,
                "index": index,
                "offset": offset,
                "subject": [w[k] for w, k in zip(words, subject_idx)],
                "corrupted": np.full(n, self.corrupt != "none"),
                "subject_pos": enc.role_pos["SUBJECT"],
                "end_pos": enc.role_pos["END"],
                "twin_subject": [w[k] for w, k in zip(words, twin_idx)],
            }
        )
        return TaskData(
            task=self.name,
            params=self.params,
            seed=int(seed),
            tokens=enc.tokens,
            lengths=enc.lengths,
            answer_pos=(enc.lengths - 1)[:, None],
            answer_tokens=answer,
            counter_tokens=counter,
            roles=enc.roles,
            str_tokens=enc.str_tokens,
            text=enc.text,
            labels=labels,
            pad_id=enc.pad_id,
            corrupted_tokens=same_shape_twin("days", enc, twin_enc),
        )


_TEMPLATE_PARTS = [split_template(t) for _, t, _ in TEMPLATES]


__all__ = ["DAYS", "MONTHS", "TEMPLATES", "Days"]
