"""`breakdown_file(path, group_by, examples)`: `breakdown` of a table file (Parquet or CSV), batch by batch.

A table written by a query (`actstore dla -o dla.parquet`, a neuron table) can be larger than
memory. Its rows are read a batch at a time (Parquet: `batch_rows` rows; CSV: blocks of
`csv_block_bytes`), only the columns the summary needs; each batch gets the label columns it
lacks from the store's examples by example_id and reduces to a GroupStats partial (summary.py),
folded in file order. Memory holds one batch and one total per group. Groups, their order and n
are those of `breakdown(whole_table, ...)`; mean and std agree to the last bits of the sums.

The file is untrusted input: an example_id that is null or not one of the store's examples
(0..n-1) is a one-line error naming the row, never a row grouped under a null label.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from actstore.errors import InvalidParameterError, UnknownColumnError
from actstore.query.breakdown import check_label_columns
from actstore.query.summary import GroupSpec, GroupStats, finish, label_columns, with_labels

BATCH_ROWS = 1 << 16  # Parquet rows per batch
CSV_BLOCK = 1 << 24  # CSV bytes per block (its column types are inferred from the first block)


def breakdown_file(path: str | Path, group_by: str | Sequence[str], examples: Any = None, value: str | None = None,
                   keys: Sequence[str] | None = None, *, batch_rows: int = BATCH_ROWS,
                   csv_block_bytes: int = CSV_BLOCK) -> pl.DataFrame:
    """`breakdown` of the table in `path` (.csv: CSV, else Parquet), read batch by batch.

    examples: a store (or its examples table) whose labels are joined by example_id for the
              `group_by` columns the file lacks
    value:    the column summarised (None: value, or projection in a neuron table without value)
    returns:  group_by..., keys..., mean, std, n, ci_low, ci_high, as `breakdown` does
    """
    path = Path(path)
    by = (group_by,) if isinstance(group_by, str) else tuple(group_by)
    source = _Source(path, batch_rows, csv_block_bytes)
    empty = source.empty
    if value is None:
        value = "projection" if "value" not in empty.columns and "projection" in empty.columns else "value"
    spec = GroupSpec(by=by, keys=None if keys is None else tuple(keys), value=value)
    spec.check(empty)
    missing = [c for c in by if c not in empty.columns]
    labels = _labels(examples, missing, empty, path) if missing else None
    labelled = with_labels(empty, None if labels is None else labels.clear())
    columns = spec.columns(labelled)
    needed = {*columns, value, *(("example_id",) if labels is not None else ())}
    read = [c for c in empty.columns if c in needed]
    where = f"store {examples.path}" if hasattr(examples, "path") else "the examples table"
    parts = (GroupStats.of(batch if labels is None else _join(batch, labels, offset, path, where), columns, value)
             for offset, batch in source.batches(read))
    return finish(GroupStats.fold(parts), spec, dict(labelled.select(columns).schema))


def _labels(examples: Any, missing: list[str], empty: pl.DataFrame, path: Path) -> pl.DataFrame:
    """The `missing` label columns, row i for example i (checked: the file can be joined to them)."""
    if examples is None:
        raise UnknownColumnError(f"breakdown: {', '.join(map(repr, missing))} not in {str(path)!r}; pass the store "
                                 "(examples=) to join its labels by example_id")
    if "example_id" not in empty.columns:
        raise UnknownColumnError(f"breakdown: joining labels needs an example_id column, and {str(path)!r} has none "
                                 f"(columns: {', '.join(empty.columns)})")
    dtype = empty.schema["example_id"]
    if not dtype.is_integer():
        raise InvalidParameterError(f"breakdown: {str(path)!r}'s example_id is {dtype}, not an integer")
    if isinstance(examples, pl.DataFrame):
        ids = examples.get_column("example_id") if "example_id" in examples.columns else None
        if ids is None or not np.array_equal(ids.to_numpy(), np.arange(examples.height)):
            raise InvalidParameterError("breakdown: examples must be a store or its whole examples table "
                                        "(example_id 0..n-1 in order)")
        check_label_columns(examples, missing)
        return examples.select(missing)
    if not hasattr(examples, "examples"):
        raise InvalidParameterError(f"breakdown: examples must be a store or a Polars DataFrame, got "
                                    f"{type(examples).__name__}")
    return label_columns(examples, missing)


def _join(batch: pl.DataFrame, labels: pl.DataFrame, offset: int, path: Path, where: str) -> pl.DataFrame:
    """`batch` (rows offset.. of the file) with its examples' labels; one-line error for an unknown example."""
    ids = batch.get_column("example_id")
    if ids.null_count():
        row = offset + int(ids.is_null().arg_true()[0])
        raise InvalidParameterError(f"breakdown: {str(path)!r} row {row}: example_id is null; every row needs the "
                                    "example it belongs to")
    n = labels.height
    bad = ((ids < 0) | (ids >= n)).arg_true()
    if bad.len():
        row = int(bad[0])
        raise InvalidParameterError(f"breakdown: {str(path)!r} row {offset + row}: example_id {ids[row]} is not an "
                                    f"example of {where} (0..{n - 1}); was the table made from another store?")
    return with_labels(batch, labels)


class _Source:
    """A Parquet or CSV file's columns (`empty`, a table of no rows) and its rows batch by batch."""

    def __init__(self, path: Path, batch_rows: int, csv_block_bytes: int) -> None:
        if not path.is_file():
            raise InvalidParameterError(f"breakdown input {str(path)!r} is not a file")
        self.path, self.batch_rows, self.block = path, batch_rows, csv_block_bytes
        self.csv = path.suffix.lower() == ".csv"
        kind = "CSV" if self.csv else "Parquet"
        try:
            if self.csv:
                reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=self.block),
                                        convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
                schema = reader.schema  # inferred from the first block
                reader.close()
            else:
                schema = pq.read_schema(path)
        except (OSError, pa.ArrowException) as e:
            raise InvalidParameterError(f"breakdown input {str(path)!r} is not a readable {kind} file "
                                        f"({_reason(e)})") from None
        self.schema = schema
        self.empty = cast(pl.DataFrame, pl.from_arrow(schema.empty_table()))

    def batches(self, columns: list[str]) -> Iterator[tuple[int, pl.DataFrame]]:
        """(offset of its first row, batch) for each batch of `columns`, in file order."""
        offset = 0
        opened: Any = None
        try:
            if self.csv:
                types = {c: self.schema.field(c).type for c in columns}
                opened = pacsv.open_csv(self.path, read_options=pacsv.ReadOptions(block_size=self.block),
                                        convert_options=pacsv.ConvertOptions(
                                            column_types=types, include_columns=columns, strings_can_be_null=True))
                reader: Iterator[Any] = iter(opened)
            else:
                opened = pq.ParquetFile(self.path, pre_buffer=False)  # pre-buffering holds the file's columns
                reader = opened.iter_batches(batch_size=self.batch_rows, columns=columns)
        except (OSError, pa.ArrowException) as e:
            if opened is not None:
                opened.close()
            raise self._unreadable(offset, e) from None
        try:
            while True:
                try:
                    batch = next(reader)
                except StopIteration:
                    return
                except (OSError, pa.ArrowException) as e:
                    raise self._unreadable(offset, e) from None
                frame = cast(pl.DataFrame, pl.from_arrow(batch))
                yield offset, frame
                offset += frame.height
        finally:
            opened.close()

    def _unreadable(self, offset: int, e: Exception) -> InvalidParameterError:
        if self.csv:
            return InvalidParameterError(f"breakdown input {str(self.path)!r}: unreadable after row {offset} "
                                         f"({_reason(e)}); its column types are inferred from its first "
                                         f"{self.block} bytes: fix the column or convert it to Parquet")
        return InvalidParameterError(f"breakdown input {str(self.path)!r}: unreadable after row {offset} "
                                     f"({_reason(e)}); is it a complete Parquet file?")


def _reason(e: Exception) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__


__all__ = ["BATCH_ROWS", "CSV_BLOCK", "breakdown_file"]
