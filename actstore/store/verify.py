"""`verify(path)`: check a store's committed chunks end to end, naming anything bad.

For every committed chunk: the commit record's range; every array chunk file and meta part
against the size and SHA-256 in the commit record; every array chunk decoded through Zarr
(which checks its crc32c); the meta parts' rows against the chunk's examples; and the
decomposition (stored components rebuild the stored correct-answer logits). Also: the records
themselves (the manifest's digest, each commit record against the store record and the
completion record, see integrity.py), every array's metadata against its recorded digest and
the manifest, every weight file against its record, the weights' sha256 recomputed against the
manifest's `weights_sha256`, the derived cache's records, stray commit records, and every stored
intervention sweep's parts against their commit records (store/sweeps.py). A store
whose ingest has not finished is reported as INCOMPLETE, never as OK.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from actstore.errors import StoreCorruptError
from actstore.store.cache import cache_problems
from actstore.store.commits import CommitRecord, commit_files, file_digest, read_file, read_remote_files
from actstore.store.fs import RemotePath, StorePath, relative, store_path
from actstore.store.decomposition import decomposed_logits, required_hooks, rounding_bound
from actstore.store.integrity import Ledger, bytes_digest, weights_sha256
from actstore.store.layout import META_TABLES, acts_path, chunk_file, chunk_ranges, meta_tables, part_path
from actstore.store.manifest import Manifest
from actstore.store.open import read_manifest
from actstore.store.reader import Store
from actstore.store.directions import direction_problems
from actstore.store.sweeps import sweep_problems

# verify's decomposition tolerance, per answer: twice the first-order bound on what rounding the
# stored activations to their dtype can do to the rebuilt logit (decomposition.rounding_bound),
# plus the float32 model's own error (4 x the error ingest measured at full precision, and
# F32_ULPS float32 units of 1 + |logit|).
UNIT = {"float16": 2.0**-11, "float32": 2.0**-24}  # unit roundoff of the stored dtype
BOUND_SAFETY = 2.0
F32_ULPS = 64.0
F32_EPS = float(np.finfo(np.float32).eps)


@dataclass
class VerifyReport:
    """What verify found. `problems` holds one line per bad array chunk, part, record or weight."""

    path: StorePath
    n_chunks: int
    committed_chunks: int
    n_examples: int
    finished: bool = True
    problems: list[str] = field(default_factory=list)
    decomposition: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # harmless findings (a damaged cached table)

    @property
    def ok(self) -> bool:
        """No damage found (an unfinished ingest's committed chunks can be ok: see `finished`)."""
        return not self.problems

    @property
    def passed(self) -> bool:
        """The store is whole and intact: what `actstore verify` exits 0 for."""
        return self.ok and self.finished

    def lines(self) -> list[str]:
        head = (f"{self.path}: {self.committed_chunks}/{self.n_chunks} chunks committed, "
                f"{self.n_examples} examples")
        d = self.decomposition
        if d.get("status") == "checked":
            dec = (f"decomposition: max error {d['max_abs_error']:.3g} over {d['n_answers']} answers; "
                   f"tightest answer {d['worst_error']:.3g} of its tolerance {d['tolerance']:.3g} "
                   f"({d['worst_ratio']:.0%})")
        else:
            dec = f"decomposition: {d.get('status', 'skipped')} ({d.get('reason', '')})"
        if not self.ok:
            tail = [f"BAD: {p}" for p in self.problems]
        elif not self.finished:
            tail = [f"INCOMPLETE: {self.committed_chunks}/{self.n_chunks} chunks committed, all intact; the "
                    "ingest is still running or was interrupted (rerun it to finish)"]
        else:
            tail = ["OK"]
        return [head, dec, *(f"NOTE: {n}" for n in self.notes), *tail]


def verify(path: str | Path | RemotePath, storage_options: dict[str, Any] | None = None) -> VerifyReport:
    """Check the store at `path` (a local path or an fsspec URL); StoreNotFoundError /
    StoreFormatError if it is not one."""
    root = store_path(path, "store", storage_options)
    m = read_manifest(root)
    problems: list[str] = []
    ledger = Ledger.load(root, m, problems)
    store = Store(root, m, ledger=ledger)
    committed = len(ledger.commits)
    report = VerifyReport(root, m.n_chunks, committed, store.n_examples, finished=ledger.complete,
                          problems=problems)
    bad = report.problems.append

    stray = [k for k in commit_files(root) if committed <= k < m.n_chunks]
    if stray:
        bad(f"commit record(s) for chunk(s) {stray} follow uncommitted chunk {committed}: "
            "the commit order was broken; re-ingest from chunk "
            f"{committed} (delete _commits/{committed:05d}.json onwards and rerun)")
    _check_recorded_metadata(ledger, bad)
    _check_array_metadata(store, bad)
    _check_params(store, bad)
    report.notes = cache_problems(root)  # never used as they are: recomputed on next use
    for line in direction_problems(root):  # a saved direction cannot be recomputed: damage is a problem
        bad(line)
    sweep_bad, sweep_notes = sweep_problems(root, ledger.store_sha256)
    for line in sweep_bad:
        bad(line)
    report.notes += sweep_notes

    dec = _Decomposition(store)
    for k, (start, stop) in enumerate(chunk_ranges(m.n, m.chunk)[:committed]):
        _check_chunk(store, ledger.commits[k], start, stop, bad, dec)
    report.decomposition = dec.result()
    if dec.errors:
        bad(dec.errors[0] if len(dec.errors) == 1 else f"{dec.errors[0]} (and {len(dec.errors) - 1} more chunks)")
    return report


def _check_array_metadata(store: Store, bad: Any) -> None:
    m = store.manifest
    for h in m.hooks:
        meta_path = acts_path(store.path, h.name) / "zarr.json"
        try:
            raw = read_file(meta_path)
            if raw is None:
                raise FileNotFoundError(meta_path)
            meta = json.loads(raw)
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError, StoreCorruptError) as e:
            bad(f"array acts/{h.name}: metadata unreadable ({_short(e)})")
            continue
        chunks = meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape")
        expect = {"shape": list(h.shape), "data_type": h.dtype, "dimension_names": list(h.dims),
                  "chunk_shape": [m.chunk, *h.shape[1:]]}
        found = {"shape": meta.get("shape"), "data_type": meta.get("data_type"),
                 "dimension_names": meta.get("dimension_names"), "chunk_shape": chunks}
        for key in expect:
            if expect[key] != found[key]:
                bad(f"array acts/{h.name}: {key} {found[key]} differs from the manifest's {expect[key]}")


def _check_recorded_metadata(ledger: Ledger, bad: Any) -> None:
    """Every zarr.json under acts/ and params/ is the one recorded at creation (codecs, fill value, shape)."""
    items = sorted(ledger.metadata.items())
    remote = isinstance(ledger.root, RemotePath)
    fetched = read_remote_files([ledger.root / rel for rel, _ in items]) if remote else []  # concurrently
    for i, (rel, digest) in enumerate(items):
        try:
            data = fetched[i] if remote else read_file(ledger.root / rel)
        except StoreCorruptError as e:
            bad(f"array metadata {rel}: {_short(e)}")
            continue
        if data is None:
            bad(f"array metadata {rel} is missing")
            continue
        if bytes_digest(data) != digest:
            bad(f"array metadata {rel} differs from its record (edited after the store was created)")


def _check_params(store: Store, bad: Any) -> None:
    """Each weight decodes and matches its record; their sha256 recomputed equals the manifest's."""
    readable: list[str] = []

    def weights() -> Iterator[tuple[str, np.ndarray]]:
        for name in store.param_names:
            try:
                value = store.param(name)
            except Exception as e:  # noqa: BLE001 - any decode failure is a finding
                bad(f"weight params/{name}: unreadable ({_short(e)})")
                continue
            if not np.isfinite(value).all():
                bad(f"weight params/{name}: holds NaN or infinite values")
            readable.append(name)
            yield name, value

    digest = weights_sha256(weights())
    want = store.manifest.weights_sha256
    if len(readable) == len(store.param_names) and want and digest != want:
        bad(f"weights in params/ do not hash to the manifest's weights_sha256 ({want[:12]}...): "
            "a weight was changed or removed")


def _check_chunk(store: Store, record: CommitRecord, start: int, stop: int, bad: Any,
                 dec: "_Decomposition") -> None:
    """One committed chunk against its (already read and range-checked) commit record."""
    m = store.manifest
    root = store.path
    k = record.chunk
    files = {f"acts/{h.name}": chunk_file(root, h.name, k, len(h.shape)) for h in m.hooks}
    files |= {f"meta/{t}": part_path(root, t, k) for t in meta_tables(m)}  # + topk where top_k > 0
    intact: set[str] = set()
    for label, f in files.items():
        rel = relative(f, root)
        if rel not in record.files:
            bad(f"{label} chunk {k}: not listed in its commit record")
        elif not f.exists():
            bad(f"{label} chunk {k}: file {rel} is missing")
        else:
            try:
                same = file_digest(f, tail=len(record.files[rel]) == 3) == list(record.files[rel])
            except (OSError, StoreCorruptError) as e:
                bad(f"{label} chunk {k}: {rel} is unreadable ({_short(e)})")
                continue
            if same:
                intact.add(label)
            else:
                bad(f"{label} chunk {k}: checksum of {rel} differs from its commit record")
    acts: dict[str, np.ndarray] = {}
    for h in m.hooks:
        if f"acts/{h.name}" not in intact:
            continue
        try:
            acts[h.name] = store.read(h.name, start, stop)
        except Exception as e:  # noqa: BLE001 - crc32c mismatch or a broken chunk
            bad(f"acts/{h.name} chunk {k}: {_short(e)}")
    tables: dict[str, pl.DataFrame] = {}
    for t in meta_tables(m):
        if f"meta/{t}" in intact:
            try:
                tables[t] = pl.read_parquet(io.BytesIO(read_file(part_path(root, t, k)) or b""))
            except Exception as e:  # noqa: BLE001
                bad(f"meta/{t} chunk {k}: unreadable ({_short(e)})")
    _check_meta_rows(m, k, start, stop, tables, bad)
    if all(t in tables for t in META_TABLES):
        dec.add(k, tables["examples"], tables["outputs"], acts)


def _check_meta_rows(m: Manifest, k: int, start: int, stop: int, tables: dict[str, pl.DataFrame], bad: Any) -> None:
    ids = list(range(start, stop))
    ex = tables.get("examples")
    if ex is not None and ex["example_id"].to_list() != ids:
        bad(f"meta/examples chunk {k}: example_ids are not {start}..{stop - 1}")
    tok = tables.get("tokens")
    if ex is not None and tok is not None:
        if tok.height != int(ex["length"].sum()) or set(tok["example_id"].unique().to_list()) - set(ids):
            bad(f"meta/tokens chunk {k}: {tok.height} rows do not match the examples' lengths")
    out = tables.get("outputs")
    if out is not None:
        want = [e for e in ids for _ in range(m.n_answers)]
        if out["example_id"].to_list() != want:
            bad(f"meta/outputs chunk {k}: rows are not one per (example, answer) for examples {start}..{stop - 1}")
    top = tables.get("topk")
    if top is not None:
        want = [e for e in ids for _ in range(m.n_answers * (m.top_k or 0))]
        if top["example_id"].to_list() != want:
            bad(f"meta/topk chunk {k}: rows are not {m.top_k} per (example, answer) for examples {start}..{stop - 1}")


class _Decomposition:
    """Accumulates the decomposition check over chunks from stored values."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.needed = required_hooks(store.arch)
        self.missing = [h for h in self.needed if h not in store.hooks]
        recorded = store.manifest.decomposition or {}
        self.skipped = recorded.get("reason", "skipped at ingest") if recorded.get("status") == "skipped" else None
        if not store.manifest.outputs:
            self.skipped = "the store keeps no outputs (logits) to rebuild"
        self.max_error = 0.0
        self.worst = (0.0, 0.0, 0.0)  # (error / tolerance, error, tolerance) of the tightest answer
        self.n_answers = 0
        self.errors: list[str] = []
        self._params: dict[str, np.ndarray] = {}
        m = store.manifest
        self.unit = UNIT.get(m.dtype, UNIT["float32"])
        full = (m.decomposition or {}).get("max_abs_error")  # float32 model vs float64 rebuild, first batch
        self.full_precision = float(full) if isinstance(full, (int, float)) else 0.0

    def _param(self, name: str) -> np.ndarray:
        if name not in self._params:
            self._params[name] = self.store.param(name)
        return self._params[name]

    def add(self, k: int, examples: pl.DataFrame, outputs: pl.DataFrame, acts: dict[str, np.ndarray]) -> None:
        if self.skipped or self.missing or any(h not in acts for h in self.needed):
            return
        try:
            self._add(k, examples, outputs, acts)
        except Exception as e:  # noqa: BLE001 - reported, not raised
            self.errors.append(f"decomposition chunk {k}: cannot rebuild the logits ({_short(e)})")

    def _add(self, k: int, examples: pl.DataFrame, outputs: pl.DataFrame, acts: dict[str, np.ndarray]) -> None:
        answer_pos = np.array(examples["answer_positions"].to_list(), dtype=np.int64)  # [e, a]
        tokens = examples["tokens"].to_list()
        tok_at = np.array([[row[p] for p in ps] for row, ps in zip(tokens, answer_pos.tolist())], dtype=np.int64)
        n, a = answer_pos.shape
        correct = outputs["correct_token"].to_numpy().reshape(n, a)
        stored = outputs["correct_logit"].to_numpy().astype(np.float64).reshape(n, a)
        stored = stored - self._param("unembed.b_U")[correct]

        at_answers: dict[str, np.ndarray] = {}  # the rebuild and the rounding bound read the same hooks

        def act(name: str) -> np.ndarray:
            if name not in at_answers:
                v = acts[name]
                if self.store.hook_info(name).positions != "answer":
                    v = np.take_along_axis(v, answer_pos.reshape(n, a, *([1] * (v.ndim - 2))), axis=1)
                at_answers[name] = v
            return at_answers[name]

        names = self.store.param_names
        rebuilt = decomposed_logits(self.store.arch, self._param, names, tok_at, answer_pos, act, vocab=correct)
        if not stored.size:
            return
        tol = (BOUND_SAFETY * rounding_bound(self.store.arch, self._param, names, act, correct, rebuilt, self.unit)
               + 4.0 * self.full_precision + F32_ULPS * F32_EPS * (1.0 + np.abs(stored)))  # [e, a]
        err = np.abs(rebuilt - stored)
        ratio = err / tol
        i = np.unravel_index(ratio.argmax(), ratio.shape)
        self.max_error = max(self.max_error, float(err.max()))
        self.n_answers += stored.size
        if ratio[i] > self.worst[0]:
            self.worst = (float(ratio[i]), float(err[i]), float(tol[i]))
        if ratio[i] > 1.0:
            self.errors.append(
                f"decomposition chunk {k}: components miss the stored logit of example "
                f"{int(examples['example_id'][int(i[0])])} answer {int(i[1])} by {err[i]:.3g} "
                f"(tolerance {tol[i]:.3g})")

    def result(self) -> dict[str, Any]:
        if self.skipped:
            return {"status": "skipped", "reason": self.skipped}
        if self.missing:
            return {"status": "skipped", "reason": f"needs hook(s) {', '.join(self.missing[:3])}"
                    f"{' ...' if len(self.missing) > 3 else ''} stored"}
        if not self.n_answers:
            return {"status": "skipped", "reason": "no committed examples"}
        ratio, err, tol = self.worst
        return {"status": "checked", "max_abs_error": self.max_error, "n_answers": self.n_answers,
                "worst_ratio": ratio, "worst_error": err, "tolerance": tol}


def _short(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:200]
