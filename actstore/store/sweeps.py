"""Intervention sweeps stored inside a store: one directory per sweep, written like ingest chunks.

```
<store>/interventions/<sweep>/spec.json            what was run (canonical JSON; the sweep id is its digest)
<store>/interventions/<sweep>/part-<k>.parquet     rows of examples [start, stop) of part k
<store>/interventions/<sweep>/_commits/<k>.json    [size, sha256] of part k, sha256 of spec.json and of
                                                   the store record the sweep was run against
<store>/interventions/<sweep>/complete.json        written after the last part: sha256 of every commit record
```

A part counts only once its commit record exists, so a killed sweep resumes after its last
committed part and, computing the same batches, writes the same bytes. Only complete sweeps are
read (`sweep_tables`), each part checked against its record before it is decoded; a sweep whose
records disagree is StoreCorruptError naming the file. This module needs no model: the query
layer reads sweeps through it, `actstore.interventions` writes them.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from typing import Any

import polars as pl

from actstore.errors import StoreCorruptError
from actstore.store.commits import atomic_write_bytes, file_digest, read_file
from actstore.store.fs import StorePath, children
from actstore.store.integrity import bytes_digest, store_records
from actstore.store.parts import write_part

SWEEPS = "interventions"
SPEC, COMPLETE, COMMITS_DIR = "spec.json", "complete.json", "_commits"
SWEEP_ID = re.compile(r"^[0-9a-f]{16}$")

# one row per (target, example, answer, metric); `clean` / `corrupted` are the unpatched runs' metric
ROW_SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = {
    "sweep": pl.String, "kind": pl.String, "hook": pl.String, "layer": pl.Int64, "head": pl.Int64,
    "pos": pl.Int64, "role": pl.String, "example_id": pl.Int64, "answer_idx": pl.Int64, "metric": pl.String,
    "value": pl.Float32, "clean": pl.Float32, "corrupted": pl.Float32,
}


def canonical(spec: dict[str, Any]) -> bytes:
    return (json.dumps(spec, sort_keys=True, indent=1) + "\n").encode()


def sweep_id(spec: dict[str, Any]) -> str:
    """The id of a sweep: the first 16 hex digits of its spec's digest (same spec, same id: a cache hit)."""
    return bytes_digest(canonical(spec))[:16]


def sweep_dir(root: StorePath, sweep: str) -> StorePath:
    return root / SWEEPS / sweep


def part_file(root: StorePath, sweep: str, k: int) -> StorePath:
    return sweep_dir(root, sweep) / f"part-{k:05d}.parquet"


def commit_file(root: StorePath, sweep: str, k: int) -> StorePath:
    return sweep_dir(root, sweep) / COMMITS_DIR / f"{k:05d}.json"


@dataclass(frozen=True)
class SweepInfo:
    """A sweep found in a store: its id, spec, parts planned and committed, and whether it is complete."""

    sweep: str
    spec: dict[str, Any]
    n_parts: int
    committed: int
    complete: bool


class SweepWriter:
    """Writes one sweep's parts and commit records; `committed` is where a resumed sweep starts.

    ranges: the example range [start, stop) of each part, fixed by the spec (so a rerun lines up).
    store_sha256: the digest of the store record (`Ledger.store_sha256`) the sweep runs against.
    """

    def __init__(self, root: StorePath, spec: dict[str, Any], ranges: list[tuple[int, int]], store_sha256: str) -> None:
        self.root, self.spec, self.ranges, self.store_sha256 = root, spec, ranges, store_sha256
        self.sweep = sweep_id(spec)
        self.dir = sweep_dir(root, self.sweep)
        raw = canonical(spec)
        self.spec_sha256 = bytes_digest(raw)
        (self.dir / COMMITS_DIR).mkdir(parents=True, exist_ok=True)
        have = read_file(self.dir / SPEC)
        if have != raw:  # absent, or left damaged by a crash: the spec is a pure function of the request
            atomic_write_bytes(self.dir / SPEC, raw)
        self.committed = self._committed_prefix()

    def _committed_prefix(self) -> int:
        k = 0
        while k < len(self.ranges) and self._record_ok(k):
            k += 1
        for j in range(k, len(self.ranges)):  # anything after the prefix is redone
            commit_file(self.root, self.sweep, j).unlink(missing_ok=True)
        if k < len(self.ranges):
            (self.dir / COMPLETE).unlink(missing_ok=True)
        return k

    def _record_ok(self, k: int) -> bool:
        raw = read_file(commit_file(self.root, self.sweep, k))
        if raw is None:
            return False
        try:
            rec = json.loads(raw)
            ok = (rec["spec"] == self.spec_sha256 and rec["store"] in store_records(self.root, self.store_sha256)
                  and [rec["start"], rec["stop"]] == list(self.ranges[k]))
            return bool(ok) and file_digest(part_file(self.root, self.sweep, k)) == rec["file"]
        except (ValueError, KeyError, TypeError, FileNotFoundError, StoreCorruptError):
            return False

    @property
    def complete(self) -> bool:
        return self.committed == len(self.ranges) and (self.dir / COMPLETE).is_file()

    def write_part(self, k: int, rows: pl.DataFrame) -> None:
        """Write part k (rows of its example range), then its commit record; the completion record after the last."""
        if k != self.committed:
            raise RuntimeError(f"part {k} written out of order (next is {self.committed})")
        path = part_file(self.root, self.sweep, k)
        write_part(rows.select(list(ROW_SCHEMA)).cast(ROW_SCHEMA), path)  # type: ignore[arg-type]
        start, stop = self.ranges[k]
        record = {"part": k, "start": start, "stop": stop, "file": file_digest(path, fsync=True),
                  "spec": self.spec_sha256, "store": self.store_sha256}
        atomic_write_bytes(commit_file(self.root, self.sweep, k), canonical(record))
        self.committed = k + 1
        if self.committed == len(self.ranges):
            records = {f"{j:05d}": file_digest(commit_file(self.root, self.sweep, j))[1] for j in range(self.committed)}
            atomic_write_bytes(self.dir / COMPLETE, canonical({"n_parts": self.committed, "records": records}))


def list_sweeps(root: StorePath) -> list[SweepInfo]:
    """Every sweep directory of the store with a readable spec (complete or not), in id order."""
    base = root / SWEEPS
    if not base.is_dir():
        return []
    out = []
    for d in children(base):
        if not SWEEP_ID.match(d.name) or not d.is_dir():
            continue
        spec = _read_spec(root, d.name)
        if spec is None:
            continue
        n_parts = int(spec.get("n_parts", 0))
        committed = 0
        while committed < n_parts and commit_file(root, d.name, committed).is_file():
            committed += 1
        out.append(SweepInfo(d.name, spec, n_parts, committed, (d / COMPLETE).is_file()))
    return out


def _read_spec(root: StorePath, sweep: str) -> dict[str, Any] | None:
    raw = read_file(sweep_dir(root, sweep) / SPEC)
    if raw is None:
        return None
    try:
        spec = json.loads(raw)
    except ValueError:
        raise StoreCorruptError(f"sweep {sweep}: {SPEC} is not JSON; run `actstore verify {root}`") from None
    if not isinstance(spec, dict) or sweep_id(spec) != sweep:
        raise StoreCorruptError(f"sweep {sweep}: {SPEC} does not match the sweep's id; run `actstore verify {root}`")
    return spec


def read_sweep(root: StorePath, sweep: str, store_sha256: str) -> pl.DataFrame:
    """The rows of a complete sweep, every part checked against its commit record (and every
    record against the completion record, the spec and the store record) before it is decoded."""
    frames = [pl.read_parquet(io.BytesIO(b)) for b in checked_parts(root, sweep, store_sha256)]
    if not frames:
        return pl.DataFrame(schema=ROW_SCHEMA)
    return pl.concat(frames, how="vertical")


def checked_parts(root: StorePath, sweep: str, store_sha256: str) -> list[bytes]:
    """The bytes of each part of a complete sweep, checked; StoreCorruptError naming the first bad file."""
    def bad(what: str) -> StoreCorruptError:
        return StoreCorruptError(f"sweep {sweep} of store {str(root)!r} is corrupt: {what}; "
                                 f"run `actstore verify {root}`")

    spec = _read_spec(root, sweep)
    if spec is None:
        raise bad(f"its {SPEC} is missing")
    spec_sha = bytes_digest(canonical(spec))
    raw = read_file(sweep_dir(root, sweep) / COMPLETE)
    if raw is None:
        raise bad(f"it is not complete ({COMPLETE} is missing)")
    try:
        done = json.loads(raw)
        n_parts, records = int(done["n_parts"]), dict(done["records"])
    except (ValueError, KeyError, TypeError):
        raise bad(f"{COMPLETE} is unreadable") from None
    if n_parts != int(spec.get("n_parts", -1)) or sorted(records) != [f"{k:05d}" for k in range(n_parts)]:
        raise bad(f"{COMPLETE} lists other parts than the spec plans")
    out = []
    for k in range(n_parts):
        rec_raw = read_file(commit_file(root, sweep, k))
        if rec_raw is None or bytes_digest(rec_raw) != records[f"{k:05d}"]:
            raise bad(f"commit record {COMMITS_DIR}/{k:05d}.json is missing or differs from {COMPLETE}")
        rec = json.loads(rec_raw)
        if rec.get("spec") != spec_sha:
            raise bad(f"commit record {k:05d} was written for another spec")
        if rec.get("store") not in store_records(root, store_sha256):  # a grown store: its earlier records too
            raise bad(f"commit record {k:05d} was written against another store record")
        data = read_file(part_file(root, sweep, k))
        if data is None or [len(data), bytes_digest(data)] != rec.get("file"):
            raise bad(f"part-{k:05d}.parquet is missing or differs from its commit record")
        out.append(data)
    return out


def sweep_problems(root: StorePath, store_sha256: str) -> tuple[list[str], list[str]]:
    """(problems, notes) for verify: a complete sweep that fails its checks is a problem; an
    unfinished one (a killed sweep, resumed by rerunning it) is a note."""
    problems: list[str] = []
    notes: list[str] = []
    base = root / SWEEPS
    if not base.is_dir():
        return problems, notes
    for d in children(base):
        if not SWEEP_ID.match(d.name) or not d.is_dir():
            problems.append(f"{SWEEPS}/{d.name} is not a sweep directory")
            continue
        try:
            spec = _read_spec(root, d.name)
            if spec is None:
                notes.append(f"sweep {d.name} has no spec (an interrupted start); rerun it or delete it")
            elif not (d / COMPLETE).exists():
                what = f"{spec.get('kind')} {spec.get('hook')}"
                notes.append(f"sweep {d.name} ({what}) is unfinished; rerun it to resume")
            else:
                checked_parts(root, d.name, store_sha256)
        except StoreCorruptError as e:
            problems.append(str(e).removesuffix(f"; run `actstore verify {root}`"))
    return problems, notes
