"""Your own prompts: a JSONL or CSV file of hand-written prompts, tokenized with the model's tokenizer.

`Prompts(file="my.jsonl")` reads the file (columns: actstore.datasets.prompt_file) and makes one
example per row, in file order: example i is the file's i-th prompt (0-based, blank lines
skipped). Each prompt is BOS + the tokenizer's tokens of `text`; the answer position is its last
token, where `answer` (exactly one token as written, leading space included) is read, and
`counter`, when given, is the counterfactual token. `n` takes the first n prompts (n may not
exceed the file's prompts; `generate_range(start, stop, ...)` takes prompts [start, stop)); the
seed is recorded but does not reorder them. Every prompt is padded to the file's longest.

Roles: `roles` maps a role to a substring of the text (the one token it overlaps; its first
occurrence), to [substring, k] (the k-th occurrence) or to a token position as the store counts
them (0 is BOS, 1 the text's first token, -1 the last). The last token gets role END unless a
given role sits there or a role is called END.

Labels: every other column, as typed by the file, then `answer` and `counter` (the strings as
written; `counter` only where the file has that column).

Corrupted twin: a `corrupted` column gives each prompt's twin text, which must tokenize to as
many tokens (roles and the answer position are shared). `corrupt="corrupted"` writes the
corrupted texts as the examples and the clean ones as their twins (answers unchanged), so
`actstore compare A B --corrupted` pairs the two stores.

Parameters recorded in a store's manifest: file (as given), sha256 (of the file's bytes: a changed
file is another run, and regenerating from the manifest checks it) and corrupt. Nothing reads
the file before `generate`, so a store's task parameters rebuild the task (for its report) without it.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import numpy as np
import polars as pl

from actstore.datasets.base import TaskData, check_choice, check_n_seed, check_range, is_int, pad_ragged
from actstore.datasets.prompt_file import PromptRows, RoleSpec, check_suffix, file_sha256, read_prompt_file
from actstore.datasets.report_spec import ReportSpec, RoleAttention
from actstore.datasets.templated import PromptTokenizer, prompt_tokenizer
from actstore.errors import InvalidParameterError

CORRUPTIONS = ("none", "corrupted")
END = "END"
_SHA256 = re.compile(r"[0-9a-f]{64}")


class Prompts:
    """Hand-written prompts from a JSONL or CSV file (see the module docstring)."""

    name: ClassVar[str] = "prompts"

    def __init__(self, file: Any = None, sha256: Any = None, corrupt: str = "none") -> None:
        if not isinstance(file, str) or not file:
            raise InvalidParameterError("prompts: pass the prompt file, --param file=PATH (a .jsonl or .csv file), "
                                        f"got {file!r}")
        check_suffix(file)
        if is_int(sha256) and 0 <= sha256 < 10**64:  # `--param sha256=...` of digits only arrives as an int
            sha256 = f"{sha256:064d}"
        if sha256 is not None and not (isinstance(sha256, str) and _SHA256.fullmatch(sha256)):
            raise InvalidParameterError(f"prompts: sha256 must be 64 lowercase hex digits, got {sha256!r}")
        self.file = file
        self.sha256: str | None = sha256
        self.corrupt = check_choice("prompts", "corrupt", corrupt, CORRUPTIONS)

    @property
    def params(self) -> dict[str, Any]:
        """file, sha256 (the file is hashed here if it was not given and has not been read) and corrupt."""
        if self.sha256 is None:
            self.sha256 = file_sha256(self.file)
        return {"file": self.file, "sha256": self.sha256, "corrupt": self.corrupt}

    @property
    def vocab(self) -> None:
        return None

    @property
    def report(self) -> ReportSpec:
        """Attention from the END token to every role; accuracy split by every short label."""
        return ReportSpec(attention=(RoleAttention(END, "END -> role attention", "Attention mass from the last "
                                                   "token to each role's token, for the heads with the largest "
                                                   "attribution."),))

    def generate(self, n: int, seed: int, tokenizer: Any = None) -> TaskData:
        """The file's first n prompts."""
        check_n_seed(n, seed)
        return self.generate_range(0, n, seed, tokenizer)

    def generate_range(self, start: int, stop: int, seed: int, tokenizer: Any = None) -> TaskData:
        """The file's prompts [start, stop) (every row is read and checked, whatever the range)."""
        check_range(start, stop, seed)
        if tokenizer is None:
            raise InvalidParameterError(
                "prompts: no tokenizer to read the text with: this model reads token ids only (as the numeric zoo "
                "models zoo:addition, zoo:brackets, zoo:list_update do); use a model with a tokenizer (zoo:lm, a "
                "pretrained name, a checkpoint saved with its tokenizer), or pass --model to `actstore dataset`")
        rows = read_prompt_file(self.file)
        if self.sha256 is not None and rows.sha256 != self.sha256:
            raise InvalidParameterError(
                f"prompts: {self.file} has sha256 {rows.sha256[:12]}..., not the {self.sha256[:12]}... asked for "
                "(the file changed since the store was made)")
        self.sha256 = rows.sha256
        if stop > len(rows):
            raise InvalidParameterError(f"prompts: {self.file} holds {len(rows)} prompts; n={stop} asks for more "
                                        f"(pass n <= {len(rows)})")
        if self.corrupt == "corrupted" and rows.corrupted is None:
            raise InvalidParameterError(f"prompts: corrupt=corrupted needs a 'corrupted' column; {self.file} has "
                                        "none")
        return _encode(rows, prompt_tokenizer(tokenizer, "prompts"), self.params, int(seed), slice(start, stop),
                       self.corrupt)


def _encode(rows: PromptRows, ptok: PromptTokenizer, params: dict[str, Any], seed: int, keep: slice,
            corrupt: str) -> TaskData:
    """Tokenize and check every row in file order (so the first bad row fails, whatever the range is), keep the
    rows `keep`, padded to the file's longest prompt."""
    tok = _Tokens(ptok)
    clean, twin, role_rows, answer, counter = [], [], [], [], []
    for i, (text, w) in enumerate(zip(rows.text, rows.where)):
        answer.append(tok.single(rows.answer[i], "answer", w))
        if rows.counter is not None:
            counter.append(tok.single(rows.counter[i], "counter", w))
        ids, spans = tok.text(text, w)
        clean.append(ids)
        role_rows.append(_place_roles(rows.roles[i], text, spans, len(ids), w))
        if rows.corrupted is not None:
            other, _ = tok.text(rows.corrupted[i], w, "corrupted text")
            if len(other) != len(ids):
                raise InvalidParameterError(
                    f"prompts: {w}: the corrupted text is {len(other) - 1} tokens, the text {len(ids) - 1}; a twin "
                    "must line up with its prompt token for token")
            twin.append(other)
    written, other_rows = (twin, clean) if corrupt == "corrupted" else (clean, twin)
    texts = rows.text if corrupt == "none" else (rows.corrupted or [])
    width = max(len(r) for r in written)
    tokens, lengths = pad_ragged(written[keep], ptok.pad_id, width)
    roles = np.full(tokens.shape, "", dtype=object)
    for i, where in enumerate(role_rows[keep]):
        for p, role in where.items():
            roles[i, p] = role
    written_as = [pl.Series("answer", rows.answer[keep], dtype=pl.String)]
    if rows.counter is not None:
        written_as.append(pl.Series("counter", rows.counter[keep], dtype=pl.String))
    labels = pl.concat([rows.labels[keep], pl.DataFrame(written_as)], how="horizontal")
    return TaskData(
        task="prompts",
        params=params,
        seed=seed,
        tokens=tokens,
        lengths=lengths,
        answer_pos=(lengths - 1)[:, None],
        answer_tokens=np.array(answer[keep], dtype=np.int64)[:, None],
        counter_tokens=None if rows.counter is None else np.array(counter[keep], dtype=np.int64)[:, None],
        roles=roles.astype(str),
        str_tokens=[[ptok.str_token(t) for t in row] for row in written[keep]],
        text=list(texts[keep]),
        labels=labels,
        pad_id=ptok.pad_id,
        corrupted_tokens=pad_ragged(other_rows[keep], ptok.pad_id, width)[0] if other_rows else None,
    )


class _Tokens:
    """The tokenizer's view of one file: token ids with character spans, one-token checks, unknown pieces."""

    def __init__(self, ptok: PromptTokenizer) -> None:
        self.ptok = ptok
        tk = ptok.tokenizer
        unk = getattr(tk, "unk_token_id", None)
        # a tokenizer whose unknown token is also BOS/EOS/pad (GPT-2's <|endoftext|>) has no unknown pieces
        specials = {getattr(tk, a, None) for a in ("bos_token_id", "eos_token_id", "pad_token_id")}
        self.unk = None if unk is None or unk in specials else int(unk)

    def single(self, piece: str, column: str, where: str) -> int:
        ids = self.ptok.ids(piece)
        if len(ids) != 1:
            shown = ", ".join(repr(self.ptok.str_token(t)) for t in ids)
            raise InvalidParameterError(
                f"prompts: {where}: {column} {piece!r} is {len(ids)} tokens for this tokenizer ({shown}), not one; "
                "mind the leading space (' Mary' and 'Mary' are different tokens)")
        if ids[0] == self.unk:
            raise InvalidParameterError(f"prompts: {where}: {column} {piece!r} is not in the tokenizer's vocabulary "
                                        "(it reads as the unknown token)")
        return int(ids[0])

    def text(self, text: str, where: str, column: str = "text") -> tuple[list[int], list[tuple[int, int]]]:
        """BOS + the text's token ids, and each token's [start, end) in the text (BOS: (0, 0))."""
        ids, spans = _tokenize(self.ptok.tokenizer, text)
        if not ids:
            raise InvalidParameterError(f"prompts: {where}: the {column} {text!r} is no tokens for this tokenizer")
        if self.unk is not None and self.unk in ids:
            a, b = spans[ids.index(self.unk)]
            raise InvalidParameterError(f"prompts: {where}: {text[a:b]!r} in the {column} is not in the tokenizer's "
                                        "vocabulary (it reads as the unknown token)")
        return [self.ptok.bos_id, *ids], [(0, 0), *spans]


def _tokenize(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of `text` (no special tokens) and their character spans: the fast tokenizer's offsets, else the
    lengths of the decoded prefixes."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [(int(a), int(b)) for a, b in enc["offset_mapping"]]
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    ends = [len(tokenizer.decode(ids[: k + 1], clean_up_tokenization_spaces=False)) for k in range(len(ids))]
    return ids, list(zip([0, *ends[:-1]], ends))


def _place_roles(specs: dict[str, RoleSpec], text: str, spans: list[tuple[int, int]], length: int,
                 where: str) -> dict[int, str]:
    """{position: role} of one prompt (positions count BOS as 0), END on the last token unless taken."""
    placed: dict[int, str] = {}
    for role, spec in specs.items():
        p = _position(role, spec, text, spans, length, where)
        if p in placed:
            raise InvalidParameterError(f"prompts: {where}: roles {placed[p]!r} and {role!r} both fall on token {p}; "
                                        "a token has one role")
        placed[p] = role
    if length - 1 not in placed and END not in specs:
        placed[length - 1] = END
    return placed


def _position(role: str, spec: RoleSpec, text: str, spans: list[tuple[int, int]], length: int, where: str) -> int:
    if isinstance(spec, int):
        if not -length <= spec < length:
            raise InvalidParameterError(f"prompts: {where}: role {role!r} at token {spec}, but the prompt has "
                                        f"{length} tokens (0 is BOS, -1 the last)")
        return spec % length
    piece, occurrence = (spec, 1) if isinstance(spec, str) else spec
    start = -1
    for _ in range(occurrence):
        start = text.find(piece, start + 1)
        if start < 0:
            times = "" if occurrence == 1 else f" {occurrence} times"
            raise InvalidParameterError(f"prompts: {where}: role {role!r}: {piece!r} is not in the text{times}")
    end = start + len(piece)
    hit = [p for p, (a, b) in enumerate(spans) if a < end and b > start and b > a]
    if len(hit) != 1:
        shown = ", ".join(repr(text[spans[p][0]:spans[p][1]]) for p in hit)
        raise InvalidParameterError(f"prompts: {where}: role {role!r}: {piece!r} covers {len(hit)} tokens ({shown}); "
                                    "a role marks one token (give a shorter substring or a token position)")
    return hit[0]


__all__ = ["CORRUPTIONS", "Prompts"]
