"""Indirect object identification (seed 004): "When John and Mary went to the shops, John gave
the bag to" -> " Mary".

Each prompt names two people: the indirect object IO (the answer) and the subject S (the
counterfactual), S twice. In ABBA order IO comes first ("When Mary and John ..., John ..."),
in BABA order S comes first ("When John and Mary ..., John ..."). Every template has both.
Names are kept only when " Name" is one token for the tokenizer in use; places and objects
may be several tokens (so prompt lengths vary and positions are given by roles).

Roles (token positions): S1, IO (the first two name slots, by order), S2 (the third name
slot), END (the last token, where the answer is read).

Corrupted variant, `IOI(corrupt="abc")`: the same examples (the same seed draws the same
templates, orders, places and objects) with the three name slots filled by three distinct
names that are neither IO nor S ("When Alice and Bob ..., Carol gave ..."). Answer and
counterfactual tokens stay the clean IO and S, so a patching metric compares like with like;
roles keep their slot positions. Labels `io`/`s` are the clean names, `name1..name3` the
names actually written in the three slots.

Corrupted twin (`TaskData.corrupted_tokens`): every example carries its ABC twin, the prompt
`corrupt="abc"` writes for it (same template, order, place, object; the three name slots
filled with three distinct names that are neither IO nor S), token for token the same length
with the roles at the same positions. The answer and counterfactual tokens stay the clean IO
and S. For a `corrupt="abc"` dataset the roles swap: its twin is the clean prompt. Labels
`twin_name1..twin_name3` are the names the twin writes in the three slots.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import numpy as np
import polars as pl

from actstore.datasets.base import BLOCK, BlockTask, TaskData, check_choice
from actstore.datasets.ioi_words import NAMES, OBJECTS, PLACES, TEMPLATES
from actstore.datasets.report_spec import LabelSplit, ReportSpec, RoleAttention
from actstore.datasets.templated import (PromptTokenizer, Segment, prompt_tokenizer, same_shape_twin, slot_name,
                                         split_template)
from actstore.errors import InvalidParameterError

ORDERS = ("both", "ABBA", "BABA")
CORRUPTIONS = ("none", "abc")
MIN_NAMES = 10  # fewer one-token names than this gives too little variety to learn or test on


class IOI(BlockTask):
    """IOI prompts in both name orders; `corrupt='abc'` gives the same prompts with other names."""

    name: ClassVar[str] = "ioi"

    def __init__(self, order: str = "both", corrupt: str = "none") -> None:
        self.order = check_choice("ioi", "order", order, tuple(ORDERS))
        self.corrupt = check_choice("ioi", "corrupt", corrupt, tuple(CORRUPTIONS))

    @property
    def params(self) -> dict[str, Any]:
        return {"order": self.order, "corrupt": self.corrupt}

    @property
    def vocab(self) -> None:
        return None

    @property
    def report(self) -> ReportSpec:
        """The seed's END -> IO / S attention and the attributions split by name order."""
        return ReportSpec(
            accuracy=("order", "template"),
            splits=(LabelSplit("order", "Attribution by order", "Component attributions split by order."),),
            attention=(RoleAttention("END", "END -> IO / S attention", "Attention mass from the END token to the "
                                     "indirect object and subject names, for the heads with the largest attribution.",
                                     key_roles=("IO", "S1", "S2")),),
        )

    def usable_names(self, tokenizer: Any = None) -> list[str]:
        """The names that are one token (with their leading space) for `tokenizer`."""
        ptok = tokenizer if isinstance(tokenizer, PromptTokenizer) else prompt_tokenizer(tokenizer, "ioi", shared=True)
        return [nm for nm in NAMES if ptok.single(" " + nm) is not None]

    def width(self, tokenizer: Any = None) -> int:
        """The longest prompt (BOS included) any seed makes with `tokenizer`: every example is padded to it."""
        return self._context(tokenizer).width

    def _context(self, tokenizer: Any) -> "_Context":
        ptok = prompt_tokenizer(tokenizer, "ioi", shared=True)
        names = self.usable_names(ptok)
        if len(names) < MIN_NAMES:
            raise InvalidParameterError(
                f"ioi: only {len(names)} of the {len(NAMES)} names are one token for this tokenizer "
                f"(need {MIN_NAMES}); use a tokenizer with whole-word name tokens"
            )
        # segments are tokenized one by one, so a prompt is at most the sum of its segments' longest fills
        longest = {"A": 1, "B": 1, "S": 1,
                   "PLACE": max(len(ptok.ids(" " + w)) for w in PLACES),
                   "OBJECT": max(len(ptok.ids(" " + w)) for w in OBJECTS)}
        width = 1 + max(sum(longest[slot] if (slot := slot_name(part)) else len(ptok.ids(part)) for part in parts)
                        for parts in _TEMPLATE_PARTS)
        return _Context(ptok, names, width)

    def _block(self, rng: np.random.Generator, twin_rng: np.random.Generator, count: int, ctx: "_Context",
               seed: int) -> TaskData:
        """The first `count` prompts of a block (every draw made for the whole block)."""
        ptok, names, n = ctx.ptok, ctx.names, count
        # Every draw happens whatever the params, so the same seed gives the same clean
        # examples for any `order`/`corrupt`: the corrupted set lines up with the clean one.
        template = rng.integers(0, len(TEMPLATES), size=BLOCK)[:n]
        abba = rng.random(BLOCK)[:n] < 0.5
        if self.order != "both":
            abba[:] = self.order == "ABBA"
        picks = rng.random((BLOCK, len(names)))[:n].argsort(axis=1)[:, :5]  # [example, 5] distinct names
        place = rng.integers(0, len(PLACES), size=BLOCK)[:n]
        obj = rng.integers(0, len(OBJECTS), size=BLOCK)[:n]

        io = [names[k] for k in picks[:, 0]]
        s = [names[k] for k in picks[:, 1]]
        clean = [[a, b, b] if ab else [b, a, b] for a, b, ab in zip(io, s, abba)]
        abc = [[names[k] for k in row] for row in picks[:, 2:5]]
        written, twin = (abc, clean) if self.corrupt == "abc" else (clean, abc)

        def prompts(names_in_slots: list[list[str]]) -> list[list[Segment]]:
            out = []
            for i in range(n):
                first, second = ("IO", "S1") if abba[i] else ("S1", "IO")
                fill = {
                    "A": (names_in_slots[i][0], first),
                    "B": (names_in_slots[i][1], second),
                    "S": (names_in_slots[i][2], "S2"),
                    "PLACE": (PLACES[place[i]], ""),
                    "OBJECT": (OBJECTS[obj[i]], ""),
                }
                out.append([_segment(part, fill) for part in _TEMPLATE_PARTS[template[i]]])
            return out

        enc = ptok.encode(prompts(written), ctx.width)
        twin_enc = ptok.encode(prompts(twin), ctx.width)  # names are one token each: the same lengths and roles

        answer = np.array([[ptok.single(" " + nm)] for nm in io], dtype=np.int64)  # [example, 1]
        counter = np.array([[ptok.single(" " + nm)] for nm in s], dtype=np.int64)
        labels = pl.DataFrame(
            {
                "io": io,
                "s": s,
                "template": template.astype(np.int64),
                "order": np.where(abba, "ABBA", "BABA"),
                "place": [PLACES[k] for k in place],
                "object": [OBJECTS[k] for k in obj],
                "name1": [w[0] for w in written],
                "name2": [w[1] for w in written],
                "name3": [w[2] for w in written],
                "corrupted": np.full(n, self.corrupt != "none"),
            }
            | {f"{role.lower()}_pos": enc.role_pos[role] for role in ("S1", "IO", "S2", "END")}
            | {f"twin_name{k + 1}": [w[k] for w in twin] for k in range(3)}
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
            corrupted_tokens=same_shape_twin("ioi", enc, twin_enc),
        )


_TEMPLATE_PARTS = [split_template(t) for t in TEMPLATES]


class _Context(NamedTuple):
    """What every block of one generate call shares."""

    ptok: PromptTokenizer
    names: list[str]  # the names that are one token
    width: int  # the longest possible prompt


def _segment(part: str, fill: dict[str, tuple[str, str]]) -> Segment:
    slot = slot_name(part)
    if slot is None:
        return Segment(part)
    word, role = fill[slot]
    return Segment(part.replace(f"[{slot}]", word), role)


__all__ = ["IOI", "NAMES", "OBJECTS", "PLACES", "TEMPLATES"]
