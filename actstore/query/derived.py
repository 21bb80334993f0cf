"""Derived tables cached in `<store>/derived/` as Parquet, keyed by their parameters.

A derived table (dla, logit_lens, attention, neurons) is computed on first use and written
atomically to `derived/<table>-<param>=<value>-...-n=<examples>-<store hash>.parquet`; the
example count and a hash of the store's manifest (and of this module's VERSION) are part of
the key, so a store that grew (a resumed ingest) or was re-ingested never serves stale rows.
Files of the same table and parameters with an older key are removed when a new one is written.
Raw attention and neuron rows are written chunk by chunk, so memory holds one chunk's rows.

dla and logit_lens also take target= (any token, token list, expression or vector), pos=,
answer= and final_ln= (see targets.py, read_at.py). Their key holds pos and answer only when set,
and the target as parsed: a token list as its ids, a vector (file, saved direction, expression)
as its label and a digest of the vector read, so an edited file or a re-saved direction is
another table; the default keys ('dla-level=head-target=correct') are those of before.

Every cached file has a digest record written after it (actstore.store.cache); a file is used
only through its checked bytes, so a replaced, truncated or bit-flipped file (or one whose
record is missing) is recomputed and rewritten, never served. Where derived/ cannot be written
(a read-only store, a full disk) the table is computed in memory and nothing is left behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from actstore.errors import ActstoreError, InvalidParameterError, QueryError
from actstore.query.attention import attention, attention_frames
from actstore.query.dla import dla
from actstore.query.logit_lens import logit_lens
from actstore.query.neurons import neuron_frames, neurons
from actstore.query.readout import Weights
from actstore.query.tables import write_parquet_frames
from actstore.query.targets import parse_target
from actstore.store.cache import read_checked, record_path, write_checked
from actstore.store.fs import StorePath
from actstore.store.reader import Store

VERSION = 1  # bump when a derived table's contents change for the same parameters
TABLES = ("dla", "logit_lens", "attention", "neurons")
DEFAULTS: dict[str, dict[str, Any]] = {
    "dla": {"level": "head", "target": "correct"},
    "logit_lens": {"target": "correct", "ln": "cached"},
    "attention": {},
    "neurons": {"direction": "answer"},
}
QUERIES: dict[str, Callable[..., pl.DataFrame]] = {"dla": dla, "logit_lens": logit_lens, "attention": attention,
                                                   "neurons": neurons}
READOUT_TABLES = ("dla", "logit_lens")  # the tables whose target= is parsed for the key (targets.py)


def compute(store: Store, table: str, params: Mapping[str, Any]) -> pl.DataFrame:
    """Run the query behind a derived table."""
    if table == "neurons":
        _check_neurons_view(store)
    return QUERIES[table](store, **params)


def _check_neurons_view(store: Store) -> None:
    if not store.arch.has_mlp:
        raise QueryError(f"view 'neurons': the model of store {store.path} is attention-only (no MLP neurons)")


def stream(store: Store, table: str, params: Mapping[str, Any]) -> Iterator[pl.DataFrame] | None:
    """The table's rows chunk by chunk, for the raw tables that can be far bigger than memory
    (attention rows, neuron rows); None for tables computed whole (dla, logit_lens, aggregates)."""
    if table == "attention" and not params.get("aggregate") and not params.get("group_by"):
        return attention_frames(store, **params)
    if table == "neurons" and params.get("top_k") is None:
        _check_neurons_view(store)
        return neuron_frames(store, **{k: v for k, v in params.items() if k != "top_k"})
    return None


def params_for(table: str, given: Mapping[str, Any] | None) -> dict[str, Any]:
    if table not in TABLES:
        raise InvalidParameterError(f"no derived table {table!r}; derived tables: {', '.join(TABLES)}")
    return {**DEFAULTS[table], **(given or {})}


def cache_path(store: Store, table: str, params: Mapping[str, Any]) -> StorePath:
    """Where the derived table for these parameters lives (whether or not it exists yet)."""
    return keyed_path(store, _stem(table, key_params(store, table, params)))


def keyed_path(store: Store, stem: str) -> StorePath:
    """`derived/<stem>-n=<examples>-<store hash>.parquet`: a key that changes when the store grows or is
    re-ingested."""
    return store.derived_dir / f"{stem}-n={store.n_examples}-{store_hash(store)}.parquet"


def key_params(store: Store, table: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters a cached table is keyed by: as given, except for dla / logit_lens, where pos,
    answer and final_ln are left out at their defaults and the target is keyed as parsed (its
    errors are raised here, before anything is computed)."""
    key = dict(params)
    if table not in READOUT_TABLES:
        return key
    if key.get("pos") is None:
        key.pop("pos", None)
    if isinstance(key.get("answer"), (int, np.integer)) and not isinstance(key.get("answer"), bool) \
            and key["answer"] == 0:
        key.pop("answer")
    final_ln = key.pop("final_ln", None)  # part of the target's key
    key["target"] = parse_target(key.get("target", "correct"), Weights.from_store(store), store, final_ln).key()
    return key


def store_hash(store: Store) -> str:
    ident = json.dumps({"manifest": store.manifest.identity(), "version": VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(ident.encode()).hexdigest()[:12]


def materialise(store: Store, table: str, params: Mapping[str, Any] | None = None) -> bytes | pl.DataFrame:
    """The checked Parquet bytes of a derived table, computing and caching it if the cache holds
    no file its digest record vouches for.

    Returns the computed DataFrame itself where derived/ cannot be written (a read-only store, a
    full disk): the query still runs, it just is not cached.
    """
    full = params_for(table, params)
    key = key_params(store, table, full)
    path = keyed_path(store, _stem(table, key))
    data = read_checked(path)
    if data is not None:
        return data

    def write(tmp: Path) -> None:
        frames = stream(store, table, full)
        if frames is None or write_parquet_frames(frames, tmp) is None:  # whole tables, empty streamed ones
            write_parquet_frames([compute(store, table, full)], tmp)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_checked(path, write)
    except OSError as e:
        if isinstance(e, ActstoreError):  # the query itself failed (e.g. a missing store file): not a cache problem
            raise
        return compute(store, table, full)  # derived/ not writable: computed in memory, not cached
    remove_older_keys(path, _stem(table, key))
    data = read_checked(path)
    # None only if the file was replaced between writing and reading it back: do not trust it
    return data if data is not None else compute(store, table, full)


def remove_older_keys(path: StorePath, stem: str) -> None:
    """Files (and their records) of the same stem (table and parameters, or fact) under an older store key."""
    for old in path.parent.glob(f"{stem}-n=*.parquet"):
        if old != path and old.name[len(stem):].count("-") == 2:  # same stem, older key
            remove_entry(old)


def remove_entry(path: StorePath) -> None:
    """A cache file and its record, where they can be removed."""
    for f in (record_path(path), path):
        try:
            f.unlink(missing_ok=True)
        except OSError:
            pass


def cached(store: Store, table: str, params: Mapping[str, Any] | None = None) -> pl.DataFrame:
    """The derived table as a DataFrame (from the checked cache when present)."""
    got = materialise(store, table, params)
    return got if isinstance(got, pl.DataFrame) else pl.read_parquet(io.BytesIO(got))


def _stem(table: str, params: Mapping[str, Any]) -> str:
    return "-".join([table, *(f"{k}={_slug(v)}" for k, v in sorted(params.items()))])


def _slug(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return "array" + hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()[:10]
    if isinstance(value, (list, tuple)):
        return "_".join(_slug(v) for v in value) or "none"
    text = str(value)
    clean = re.sub(r"[^A-Za-z0-9_.+]", "_", text)
    if clean != text or len(clean) > 40:  # paths and odd strings: keep the key unique and short
        clean = clean[:24] + "_" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return clean
