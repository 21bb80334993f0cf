"""Reading a prompt file (JSONL or CSV) into checked columns, for the `prompts` task.

One job: bytes on disk -> `PromptRows` (texts, answers, the optional counterfactual and
corrupted texts, role specs, typed label columns) and the file's sha256, or one
InvalidParameterError line naming the file, line and example. Tokenizing is the task's job
(actstore.datasets.prompts).

Columns (JSONL: the keys of each line's object; CSV: the header):
  text       required, a non-empty string: the prompt
  answer     required, a non-empty string: the token the last position should predict
  counter    optional, a string: the counterfactual token (every row or none)
  corrupted  optional, a string: the corrupted twin's text (every row or none)
  roles      optional, an object {role: substring | [substring, occurrence] | token position}
             (in CSV a JSON object in the cell; empty for none)
  anything else: a label column of strings, numbers or true/false (null / empty where unknown).
JSON lists or objects as labels, mixed kinds in one column, and names actstore's example table
uses are refused; a `split` column (the store's split of each example) must be a string in every
row. CSV labels are typed by their cells: all integers -> int, all numbers -> float, all
true/false -> bool, else strings.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from actstore.errors import InvalidParameterError

SUFFIXES = (".jsonl", ".csv")
KNOWN = ("text", "answer", "counter", "corrupted", "roles")
OPTIONAL_TEXT = ("counter", "corrupted")
# columns of the store's examples table that a label must not shadow (text and answer are KNOWN)
RESERVED = frozenset({"example_id", "tokens", "length", "answer_positions", "answer_tokens", "counter_tokens",
                      "corrupted_tokens"})
INT64 = 2**63 - 1

RoleSpec = str | int | tuple[str, int]  # substring, token position, or (substring, occurrence from 1)


@dataclass(frozen=True)
class PromptRows:
    """A prompt file's rows, checked, in file order (row i is example i).

    where:     per row, how messages name it: "<file> line L (example i)"
    text, answer: per row, as written
    counter, corrupted: per row, or None where the file has no such column
    roles:     per row, {role: RoleSpec} (empty where the row gives none)
    labels:    one row per prompt, one typed column per label column of the file
    sha256:    hex digest of the file's bytes
    """

    file: str
    sha256: str
    where: list[str]
    text: list[str]
    answer: list[str]
    counter: list[str] | None
    corrupted: list[str] | None
    roles: list[dict[str, RoleSpec]]
    labels: pl.DataFrame

    def __len__(self) -> int:
        return len(self.text)


def check_suffix(file: str) -> None:
    """InvalidParameterError unless `file` names a .jsonl or .csv file."""
    if Path(file).suffix.lower() not in SUFFIXES:
        raise InvalidParameterError(f"prompts: file {file!r} must end in .jsonl or .csv (one prompt per line or row)")


def read_bytes(file: str) -> bytes:
    try:
        return Path(file).read_bytes()
    except OSError as e:
        raise InvalidParameterError(f"prompts: cannot read file {file!r}: {e.strerror or e}") from None


def file_sha256(file: str) -> str:
    return hashlib.sha256(read_bytes(file)).hexdigest()


def read_prompt_file(file: str) -> PromptRows:
    """The checked rows of the JSONL or CSV file `file` (see the module docstring)."""
    check_suffix(file)
    raw = read_bytes(file)
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise InvalidParameterError(f"prompts: {file} line {line}: not UTF-8 text ({e.reason})") from None
    csv_file = Path(file).suffix.lower() == ".csv"
    records = _csv_records(file, content) if csv_file else _jsonl_records(file, content)
    if not records:
        raise InvalidParameterError(f"prompts: {file} holds no prompts")
    where = [f"{file} line {line} (example {i})" for i, (line, _) in enumerate(records)]
    rows = [r for _, r in records]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    for name in columns:
        if not name.strip():
            raise InvalidParameterError(f"prompts: {file}: a column has an empty name; name every column")
        if name in RESERVED:
            raise InvalidParameterError(
                f"prompts: {file}: column {name!r} is a name the store's examples table uses; rename the label")
    text = _required(rows, where, "text")
    answer = _required(rows, where, "answer")
    counter, corrupted = (_all_or_none(rows, where, c) for c in OPTIONAL_TEXT)
    roles = [_roles(r.get("roles"), w, csv_file) for r, w in zip(rows, where)]
    labels = pl.DataFrame([_label_series(name, [r.get(name) for r in rows], where, csv_file)
                           for name in columns if name not in KNOWN])
    if "split" in labels.columns:  # the store's split column (default 'all'): a string in every row
        bad = next((i for i, r in enumerate(rows) if not isinstance(r.get("split"), str) or not r["split"]), None)
        if bad is not None:
            raise InvalidParameterError(f"prompts: {where[bad]}: column 'split' (the store's split of each example) "
                                        f"must be a non-empty string in every row, got {_kind(rows[bad].get('split'))}")
    return PromptRows(file, hashlib.sha256(raw).hexdigest(), where, text, answer, counter, corrupted, roles, labels)


def _jsonl_records(file: str, content: str) -> list[tuple[int, dict[str, Any]]]:
    out: list[tuple[int, dict[str, Any]]] = []
    for line_no, line in enumerate(content.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise InvalidParameterError(f"prompts: {file} line {line_no} (example {len(out)}): not valid JSON "
                                        f"({e.msg} at column {e.colno}); each line holds one JSON object") from None
        if not isinstance(value, dict):
            raise InvalidParameterError(f"prompts: {file} line {line_no} (example {len(out)}): a JSON object per "
                                        f"line expected, got {_kind(value)}")
        out.append((line_no, value))
    return out


def _csv_records(file: str, content: str) -> list[tuple[int, dict[str, Any]]]:
    reader = csv.reader(io.StringIO(content, newline=""))
    header: list[str] | None = None
    out: list[tuple[int, dict[str, Any]]] = []
    last = 0  # the line the previous record ended on
    try:
        for cells in reader:
            start, last = last + 1, reader.line_num
            if not cells or all(not c.strip() for c in cells):
                continue
            if header is None:
                header = cells
                dup = next((h for h in header if header.count(h) > 1), None)
                if dup is not None:
                    raise InvalidParameterError(f"prompts: {file} line {start}: the header names column {dup!r} "
                                                "twice")
                continue
            if len(cells) != len(header):
                raise InvalidParameterError(f"prompts: {file} line {start} (example {len(out)}): {len(cells)} "
                                            f"fields, but the header names {len(header)} columns")
            out.append((start, {h: (c if c != "" else None) for h, c in zip(header, cells)}))
    except csv.Error as e:
        raise InvalidParameterError(f"prompts: {file} line {reader.line_num}: not valid CSV ({e})") from None
    for name in ("text", "answer"):
        if header is not None and name not in header:
            raise InvalidParameterError(f"prompts: {file}: the header (the first row) has no {name!r} column; it "
                                        f"names {', '.join(map(repr, header))}")
    return out


def _required(rows: list[dict[str, Any]], where: list[str], name: str) -> list[str]:
    out = []
    for r, w in zip(rows, where):
        v = r.get(name)
        if v is None:
            raise InvalidParameterError(f"prompts: {w}: no {name!r} (every prompt needs text and answer)")
        if not isinstance(v, str):
            raise InvalidParameterError(f"prompts: {w}: {name!r} must be a string, got {_kind(v)}")
        if not v:
            raise InvalidParameterError(f"prompts: {w}: {name!r} is empty")
        out.append(v)
    return out


def _all_or_none(rows: list[dict[str, Any]], where: list[str], name: str) -> list[str] | None:
    given = [r.get(name) for r in rows]
    if all(v is None for v in given):
        return None
    out = []
    for v, w in zip(given, where):
        if v is None:
            raise InvalidParameterError(f"prompts: {w}: no {name!r}, though other rows have one; give every row "
                                        f"a {name} or none")
        if not isinstance(v, str) or not v:
            raise InvalidParameterError(f"prompts: {w}: {name!r} must be a non-empty string, got {_kind(v)}")
        out.append(v)
    return out


def _roles(value: Any, where: str, csv_file: bool) -> dict[str, RoleSpec]:
    if value is None:
        return {}
    if csv_file:
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise InvalidParameterError(f"prompts: {where}: column 'roles' must hold a JSON object such as "
                                        f"{{\"IO\": \" Mary\"}} ({e.msg})") from None
    if not isinstance(value, dict):
        raise InvalidParameterError(f"prompts: {where}: column 'roles' must be an object {{role: substring or "
                                    f"token position}}, got {_kind(value)}")
    out: dict[str, RoleSpec] = {}
    for role, spec in value.items():
        if not role.strip():
            raise InvalidParameterError(f"prompts: {where}: a role has an empty name")
        if isinstance(spec, str) and spec:
            out[role] = spec
        elif isinstance(spec, int) and not isinstance(spec, bool):
            out[role] = spec
        elif (isinstance(spec, list) and len(spec) == 2 and isinstance(spec[0], str) and spec[0]
              and isinstance(spec[1], int) and not isinstance(spec[1], bool) and spec[1] >= 1):
            out[role] = (spec[0], spec[1])
        else:
            raise InvalidParameterError(
                f"prompts: {where}: role {role!r} must be a substring of the text, [substring, occurrence >= 1] "
                f"or a token position, got {json.dumps(spec)}")
    return out


def _label_series(name: str, values: list[Any], where: list[str], csv_file: bool) -> pl.Series:
    if csv_file:
        values = _csv_typed(values)
    kinds: dict[str, int] = {}  # kind -> first row index holding it
    for i, v in enumerate(values):
        if v is None:
            continue
        if isinstance(v, (list, dict)):
            raise InvalidParameterError(f"prompts: {where[i]}: column {name!r} holds {_kind(v)}; label columns "
                                        "take a string, a number, true/false or null")
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > INT64:
            raise InvalidParameterError(f"prompts: {where[i]}: column {name!r}: {v} does not fit in 64 bits")
        kinds.setdefault(_scalar_kind(v), i)
    if {"int", "float"} <= kinds.keys():  # integers and decimals mix as numbers
        kinds = {"float": min(kinds.pop("int"), kinds.pop("float")), **kinds}
    if len(kinds) > 1:
        (a, ia), (b, ib) = sorted(kinds.items(), key=lambda kv: kv[1])[:2]
        raise InvalidParameterError(f"prompts: {where[ib]}: column {name!r} holds {_KIND_NAMES[b]}, but "
                                    f"{where[ia]} holds {_KIND_NAMES[a]}; give one column one kind of value")
    kind = next(iter(kinds), "str")
    dtype = {"str": pl.String, "int": pl.Int64, "float": pl.Float64, "bool": pl.Boolean}[kind]
    if kind == "float":
        values = [None if v is None else float(v) for v in values]
    return pl.Series(name, values, dtype=dtype)


_KIND_NAMES = {"str": "a string", "int": "a number", "float": "a number", "bool": "true/false"}


def _scalar_kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    return "str"


def _csv_typed(cells: list[str | None]) -> list[Any]:
    """CSV cells as ints, floats or bools where every non-empty cell of the column reads as one; else as is."""
    present = [c for c in cells if c is not None]
    for parse in (_as_int, float, _as_bool):
        try:
            return [None if c is None else parse(c) for c in cells] if present else cells
        except ValueError:
            continue
    return cells


def _as_int(cell: str) -> int:
    value = int(cell)
    if abs(value) > INT64:
        raise ValueError(cell)
    return value


def _as_bool(cell: str) -> bool:
    low = cell.strip().lower()
    if low not in ("true", "false"):
        raise ValueError(cell)
    return low == "true"


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true/false"
    if isinstance(v, (int, float)):
        return f"the number {v}"
    if isinstance(v, str):
        return f"the string {v!r}" if v else "an empty string"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


__all__ = ["KNOWN", "PromptRows", "RoleSpec", "SUFFIXES", "check_suffix", "file_sha256", "read_prompt_file"]
