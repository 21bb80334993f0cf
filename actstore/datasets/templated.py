"""Tokenizing slotted text templates ("When [A] and [B] went to the [PLACE], ...") into TaskData.

The text tasks (ioi, days) fill a template's slots with words and need to know which token
each slot became. Each prompt is a list of segments (literal text or a filled slot, the slot
carrying its leading space), tokenized one segment at a time (cached), so a slot's token
position is the number of tokens before it. The concatenation is then checked against the
tokenizer's own tokenization of the whole text, so a tokenizer that merges across word
boundaries gives a clear error instead of wrong positions.
"""

from __future__ import annotations

import re
import weakref
from typing import Any, NamedTuple

import numpy as np

from actstore.datasets.base import pad_ragged
from actstore.errors import InvalidParameterError

_SLOT = re.compile(r"( ?\[[A-Z_]+\])")


def split_template(template: str) -> list[str]:
    """'When [A] and [B] went' -> ['When', ' [A]', ' and', ' [B]', ' went'] (empty parts dropped)."""
    return [part for part in _SLOT.split(template) if part]


def slot_name(segment: str) -> str | None:
    """' [A]' -> 'A'; literal text -> None."""
    m = _SLOT.fullmatch(segment)
    return m.group(1).strip(" []") if m else None


class Segment(NamedTuple):
    """One piece of a prompt: its text and the role of its (single) token, or '' for none."""

    text: str
    role: str = ""


class Encoded(NamedTuple):
    """Prompts as padded arrays.

    tokens:    [example, pos] int64, BOS first, right-padded with pad_id
    lengths:   [example] int64, real tokens including BOS
    roles:     [example, pos] str
    role_pos:  role -> [example] int64 position of that role's token
    str_tokens, text: per example
    """

    tokens: np.ndarray
    lengths: np.ndarray
    roles: np.ndarray
    role_pos: dict[str, np.ndarray]
    str_tokens: list[list[str]]
    text: list[str]
    pad_id: int


class PromptTokenizer:
    """A Hugging Face tokenizer with per-segment caching and the single-token checks tasks need."""

    def __init__(self, tokenizer: Any, task: str) -> None:
        self.tokenizer = tokenizer
        self.task = task
        bos = getattr(tokenizer, "bos_token_id", None)
        if bos is None:
            bos = getattr(tokenizer, "eos_token_id", None)
        if bos is None:
            raise InvalidParameterError(
                f"{task}: the tokenizer has no BOS (or EOS) token to start prompts with; set tokenizer.bos_token"
            )
        self.bos_id = int(bos)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = self.bos_id if pad is None else int(pad)
        self._ids: dict[str, list[int]] = {}
        self._str: dict[int, str] = {}

    def ids(self, text: str) -> list[int]:
        """Token ids of `text` alone, without special tokens (cached)."""
        if text not in self._ids:
            self._ids[text] = list(self.tokenizer.encode(text, add_special_tokens=False))
        return self._ids[text]

    def single(self, text: str) -> int | None:
        """The id of `text` if it is exactly one token, else None."""
        ids = self.ids(text)
        return ids[0] if len(ids) == 1 else None

    def str_token(self, token_id: int) -> str:
        if token_id not in self._str:
            self._str[token_id] = self.tokenizer.decode([token_id], clean_up_tokenization_spaces=False)
        return self._str[token_id]

    def encode(self, prompts: list[list[Segment]], width: int | None = None) -> Encoded:
        """Tokenize prompts segment by segment; BOS first; roles at their slots' tokens; padded to `width`
        (default: the longest prompt)."""
        rows: list[list[int]] = []
        role_rows: list[dict[str, int]] = []
        for segments in prompts:
            row, where = [self.bos_id], {}
            for seg in segments:
                seg_ids = self.ids(seg.text)
                if seg.role:
                    if len(seg_ids) != 1:
                        raise InvalidParameterError(
                            f"{self.task}: {seg.text!r} ({seg.role}) is {len(seg_ids)} tokens for this "
                            "tokenizer, not one; it should have been filtered out"
                        )
                    where[seg.role] = len(row)
                row.extend(seg_ids)
            where["END"] = len(row) - 1
            rows.append(row)
            role_rows.append(where)
        text = ["".join(seg.text for seg in segments) for segments in prompts]
        self._check_whole(rows, text)
        tokens, lengths = pad_ragged(rows, self.pad_id, width)
        roles = np.full(tokens.shape, "", dtype=object)
        role_names = list(dict.fromkeys(r for where in role_rows for r in where))
        role_pos = {r: np.full(len(rows), -1, dtype=np.int64) for r in role_names}
        for i, where in enumerate(role_rows):
            for r, p in where.items():
                roles[i, p] = r
                role_pos[r][i] = p
        str_tokens = [[self.str_token(t) for t in row] for row in rows]
        return Encoded(tokens, lengths, roles.astype(str), role_pos, str_tokens, text, self.pad_id)

    def _check_whole(self, rows: list[list[int]], text: list[str]) -> None:
        whole = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        for row, ids, t in zip(rows, whole, text):
            if list(ids) != row[1:]:
                raise InvalidParameterError(
                    f"{self.task}: this tokenizer splits {t!r} differently as a whole than word by word; "
                    "use a tokenizer that splits at spaces (GPT-2 style) or the word tokenizer"
                )


def prompt_tokenizer(tokenizer: Any, task: str, shared: bool = False) -> PromptTokenizer:
    """`tokenizer` (any Hugging Face tokenizer) for `task`'s prompts; None means the word tokenizer.

    shared: the same PromptTokenizer (and its segment ids) on every call with this tokenizer, for tasks whose
    segments are a fixed set (ioi's ~300 names, places and objects were tokenized again on every generate call:
    ~60 ms before an ingest's first forward pass, and again on its examples thread); a new one when the
    tokenizer's size or BOS/EOS/pad ids changed since. Never for user prompts, whose segments are unbounded."""
    if tokenizer is None:
        # imported here: the word tokenizer needs the model extra (tokenizers, transformers), while a reader
        # install still imports the text tasks for their labels and report specs
        from actstore.datasets.wordtok import word_tokenizer  # noqa: PLC0415

        tokenizer = word_tokenizer()
    if not shared:
        return PromptTokenizer(tokenizer, task)
    state = _state(tokenizer)
    try:
        per_task = _SHARED.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable: never kept
        return PromptTokenizer(tokenizer, task)
    kept = per_task.get(task)
    if kept is None or kept[0] != state:
        kept = per_task[task] = (state, PromptTokenizer(tokenizer, task))
    return kept[1]


# tokenizer -> {task: (its state when made, PromptTokenizer)}: see prompt_tokenizer's `shared`
_SHARED: "weakref.WeakKeyDictionary[Any, dict[str, tuple[tuple[Any, ...], PromptTokenizer]]]" = \
    weakref.WeakKeyDictionary()


def _state(tokenizer: Any) -> tuple[Any, ...]:
    """What a PromptTokenizer took from `tokenizer` or depends on: its size (added tokens) and special ids."""
    try:
        size = len(tokenizer)
    except TypeError:
        size = None
    return (size, *(getattr(tokenizer, f"{k}_token_id", None) for k in ("bos", "eos", "pad")))


def same_shape_twin(task: str, clean: Encoded, twin: Encoded) -> np.ndarray:
    """`twin.tokens`, after checking that the twin lines up with `clean` token for token (same lengths,
    same roles at the same positions): what `TaskData.corrupted_tokens` promises."""
    if not (np.array_equal(clean.lengths, twin.lengths) and np.array_equal(clean.roles, twin.roles)):
        bad = int(np.flatnonzero((clean.lengths != twin.lengths) | (clean.roles != twin.roles).any(axis=1))[0])
        raise InvalidParameterError(
            f"{task}: the corrupted twin of {clean.text[bad]!r} ({twin.text[bad]!r}) does not line up with it "
            "token for token for this tokenizer; use a tokenizer that splits at spaces (GPT-2 style)")
    return twin.tokens
