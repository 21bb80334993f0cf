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
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import polars as pl

from actstore.datasets.base import TaskData, check_choice, check_n_seed
from actstore.datasets.templated import PromptTokenizer, Segment, prompt_tokenizer, slot_name, split_template
from actstore.errors import InvalidParameterError

# [A] and [B] are the first two name slots, [S] the third (always the subject).
TEMPLATES = [
    "When [A] and [B] went to the [PLACE], [S] gave the [OBJECT] to",
    "When [A] and [B] got the [OBJECT] at the [PLACE], [S] decided to give it to",
    "After [A] and [B] went to the [PLACE], [S] gave the [OBJECT] to",
    "While [A] and [B] were working at the [PLACE], [S] gave the [OBJECT] to",
    "Then, [A] and [B] went to the [PLACE]. [S] gave the [OBJECT] to",
    "After the lunch, [A] and [B] went to the [PLACE]. [S] gave the [OBJECT] to",
    "Friends [A] and [B] found the [OBJECT] at the [PLACE]. [S] gave it to",
    "When [A] and [B] arrived at the [PLACE], [S] handed the [OBJECT] to",
    "Yesterday, [A] and [B] visited the [PLACE], and [S] passed the [OBJECT] to",
    "At the [PLACE], [A] and [B] found the [OBJECT]. [S] gave it to",
    "Once [A] and [B] reached the [PLACE], [S] threw the [OBJECT] to",
    "Later, [A] and [B] walked to the [PLACE], where [S] showed the [OBJECT] to",
    "After [A] and [B] left the [PLACE], [S] sent the [OBJECT] to",
    "Since [A] and [B] were at the [PLACE], [S] brought the [OBJECT] to",
    "When [A] and [B] met at the [PLACE], [S] offered the [OBJECT] to",
    "The day [A] and [B] spent at the [PLACE] ended when [S] gave the [OBJECT] to",
    "Because [A] and [B] were hungry at the [PLACE], [S] gave the [OBJECT] to",
    "As [A] and [B] left the [PLACE], [S] returned the [OBJECT] to",
]

NAMES = [
    "Aaron", "Adam", "Alan", "Alex", "Alice", "Amy", "Andrew", "Anna", "Anthony", "Arthur",
    "Austin", "Ben", "Brian", "Carl", "Charlie", "Chris", "Claire", "Daniel", "David", "Dean",
    "Edward", "Emily", "Eric", "Frank", "George", "Grace", "Henry", "Jack", "Jacob", "James",
    "Jane", "Jason", "John", "Joseph", "Kate", "Kelly", "Kevin", "Kyle", "Laura", "Lisa",
    "Louis", "Luke", "Maria", "Mark", "Martin", "Mary", "Matthew", "Max", "Michael", "Paul",
    "Peter", "Rachel", "Richard", "Robert", "Rose", "Ryan", "Sam", "Sarah", "Scott", "Sean",
    "Simon", "Steven", "Thomas", "Tom", "Tyler", "William",
]  # fmt: skip

PLACES = [
    "store", "garden", "restaurant", "school", "hospital", "office", "house", "station", "park",
    "market", "library", "beach", "museum", "church", "cafe", "bank", "airport", "hotel", "farm",
    "lake", "river", "zoo", "gym", "theater", "mall", "shop", "bakery", "pharmacy", "stadium",
    "cinema", "bar", "club", "castle", "harbor", "island", "village", "forest", "mountain",
    "field", "factory", "bridge", "palace", "party", "concert", "shops",
]  # fmt: skip

OBJECTS = [
    "ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack", "apple",
    "bag", "ball", "book", "box", "cake", "camera", "card", "chair", "coat", "cookie", "cup",
    "flower", "gift", "guitar", "hat", "jacket", "key", "knife", "lamp", "letter", "map",
    "milk", "note", "orange", "pen", "phone", "photo", "pizza", "plate", "radio", "sandwich",
    "scarf", "shirt", "ticket", "toy", "watch",
]  # fmt: skip

ORDERS = ("both", "ABBA", "BABA")
CORRUPTIONS = ("none", "abc")
MIN_NAMES = 10  # fewer one-token names than this gives too little variety to learn or test on


def vocabulary_texts() -> list[str]:
    """Texts whose pieces cover every word this task can write (for the word tokenizer)."""
    filled = [
        t.replace("[A]", NAMES[0]).replace("[B]", NAMES[1]).replace("[S]", NAMES[1])
        .replace("[PLACE]", PLACES[0]).replace("[OBJECT]", OBJECTS[0])
        for t in TEMPLATES
    ]  # fmt: skip
    return filled + [" " + w for w in NAMES + PLACES + OBJECTS]


class IOI:
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

    def usable_names(self, tokenizer: Any = None) -> list[str]:
        """The names that are one token (with their leading space) for `tokenizer`."""
        ptok = tokenizer if isinstance(tokenizer, PromptTokenizer) else prompt_tokenizer(tokenizer, "ioi")
        return [nm for nm in NAMES if ptok.single(" " + nm) is not None]

    def generate(self, n: int, seed: int, tokenizer: Any = None) -> TaskData:
        check_n_seed(n, seed)
        ptok = prompt_tokenizer(tokenizer, "ioi")
        names = self.usable_names(ptok)
        if len(names) < MIN_NAMES:
            raise InvalidParameterError(
                f"ioi: only {len(names)} of the {len(NAMES)} names are one token for this tokenizer "
                f"(need {MIN_NAMES}); use a tokenizer with whole-word name tokens"
            )
        # Every draw happens whatever the params, so the same seed gives the same clean
        # examples for any `order`/`corrupt`: the corrupted set lines up with the clean one.
        rng = np.random.default_rng(seed)
        template = rng.integers(0, len(TEMPLATES), size=n)
        abba = rng.random(n) < 0.5
        if self.order != "both":
            abba[:] = self.order == "ABBA"
        picks = rng.random((n, len(names))).argsort(axis=1)[:, :5]  # [example, 5] distinct names
        place = rng.integers(0, len(PLACES), size=n)
        obj = rng.integers(0, len(OBJECTS), size=n)

        io = [names[k] for k in picks[:, 0]]
        s = [names[k] for k in picks[:, 1]]
        if self.corrupt == "abc":
            written = [[names[k] for k in row] for row in picks[:, 2:5]]
        else:
            written = [[a, b, b] if ab else [b, a, b] for a, b, ab in zip(io, s, abba)]

        prompts = []
        for i in range(n):
            first, second = ("IO", "S1") if abba[i] else ("S1", "IO")
            fill = {
                "A": (written[i][0], first),
                "B": (written[i][1], second),
                "S": (written[i][2], "S2"),
                "PLACE": (PLACES[place[i]], ""),
                "OBJECT": (OBJECTS[obj[i]], ""),
            }
            prompts.append([_segment(part, fill) for part in _TEMPLATE_PARTS[template[i]]])
        enc = ptok.encode(prompts)

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
        )


_TEMPLATE_PARTS = [split_template(t) for t in TEMPLATES]


def _segment(part: str, fill: dict[str, tuple[str, str]]) -> Segment:
    slot = slot_name(part)
    if slot is None:
        return Segment(part)
    word, role = fill[slot]
    return Segment(part.replace(f"[{slot}]", word), role)

