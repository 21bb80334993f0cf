"""Small whole-store facts (a few int64 arrays) kept in `derived/` between processes.

A fact that takes a pass over every meta part (e.g. the store's distinct answer tokens: one read
and sha256 check per chunk, 123 parts at 1M examples) is written once as
`derived/<name>-n=<examples>-<store hash>.parquet` (one row, a list column per array) with a
digest record, like the derived tables (derived.py): the key changes when the store grows or is
re-ingested, a file its record does not vouch for is a miss (recomputed and rewritten), and where
derived/ cannot be written the fact is simply not kept. Files of the same name under an older
key are removed when a new one is written.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import polars as pl

from actstore.errors import ActstoreError
from actstore.query.tables import write_parquet_frames
from actstore.store.cache import read_checked, write_checked
from actstore.store.fs import StorePath
from actstore.store.reader import Store


def facts_path(store: Store, name: str) -> StorePath:
    """Where the fact `name` of `store` (at its committed examples) lives."""
    from actstore.query.derived import keyed_path  # noqa: PLC0415 (derived imports the queries, which import this)

    return keyed_path(store, name)


def read_facts(store: Store, name: str, fields: tuple[str, ...]) -> dict[str, np.ndarray | None] | None:
    """The arrays `fields` ([value] int64 each, or None) of fact `name`, if a checked file holds exactly
    those; None on any miss."""
    data = read_checked(facts_path(store, name))
    if data is None:
        return None
    try:
        frame = pl.read_parquet(io.BytesIO(data))
    except (OSError, pl.exceptions.PolarsError):
        return None
    if frame.height != 1 or tuple(frame.columns) != fields or any(
            dtype != pl.List(pl.Int64) for dtype in frame.dtypes):
        return None
    out: dict[str, np.ndarray | None] = {}
    for f in fields:
        value = frame.get_column(f)[0]
        out[f] = None if value is None else value.to_numpy().astype(np.int64, copy=False)
    return out


def write_facts(store: Store, name: str, arrays: Mapping[str, np.ndarray | None]) -> None:
    """Keep fact `name` ([value] int64 arrays, or None) for later processes; silently not kept where
    derived/ cannot be written (a read-only store, a full disk)."""
    from actstore.query.derived import remove_entry, remove_older_keys  # noqa: PLC0415 (as in facts_path)

    path = facts_path(store, name)
    frame = pl.DataFrame({f: [None if a is None else a.tolist()] for f, a in arrays.items()},
                         schema={f: pl.List(pl.Int64) for f in arrays})

    def write(tmp: Path) -> None:  # through pyarrow, as derived/'s tables: a full disk is an OSError there,
        write_parquet_frames([frame], tmp)  # where polars' write_parquet raised its ComputeError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_checked(path, write)
    except OSError as e:
        if isinstance(e, ActstoreError):
            raise
        remove_entry(path)  # a file that landed without its record would only be a miss: leave nothing
        return
    remove_older_keys(path, name)
