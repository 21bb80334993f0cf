"""A store whose records are consistent but whose meta/examples part holds impossible values (what a buggy
writer or another tool could commit: the part's sha256 in its commit record and the completion record redone):
an answer position outside the example's tokens, a length of 0 or past the store's width. Every integrity check
passes (`actstore verify` notices: its decomposition re-check on the stored examples fails); a query must
refuse them with one StoreCorruptError line, never read another position (numpy's negative indices wrap) nor
fail with a raw IndexError / Polars error.

Found by review (the same in f055e53's whole-store arrays and in the per-chunk ExampleIndex); fixed in
query/chunks.py ExampleArrays._of, which every example array of a query comes from."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "ingest"))
sys.path.insert(0, str(Path(__file__).parents[1]))
from recommit import recommit  # noqa: E402
from tiny_models import tiny_model  # noqa: E402

import actstore  # noqa: E402
from actstore.errors import StoreCorruptError  # noqa: E402
from actstore.query import attention, dla, logit_lens, neurons  # noqa: E402

PART = "meta/examples/part-00001.parquet"


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    return actstore.ingest("addition", tiny_model("addition"), 20, 0, tmp_path_factory.mktemp("clean") / "s",
                           chunk=8, batch=8, quiet=True).path


def forged(clean: Path, dest: Path, column: str, edit: Callable[[dict], object]) -> Path:
    """A copy of `clean` whose example 9 (chunk 1) has `column` set to edit(row), every record redone."""
    root = shutil.copytree(clean, dest)
    part = root / PART
    frame = pl.read_parquet(part)
    values = frame[column].to_list()
    values[1] = edit(frame.row(1, named=True))
    frame.with_columns(pl.Series(column, values, dtype=frame[column].dtype)).write_parquet(part)
    recommit(root, 1, PART, 3)
    return root


FORGERIES: dict[str, tuple[str, Callable[[dict], object], Callable[[object], pl.DataFrame]]] = {
    # -1 wraps to the last position: dla, logit_lens and neurons return other numbers, silently
    "answer position -1 (dla)": ("answer_positions", lambda r: [-1, *r["answer_positions"][1:]],
                                 lambda s: dla(s, "head")),
    "answer position -1 (neurons)": ("answer_positions", lambda r: [-1, *r["answer_positions"][1:]],
                                     lambda s: neurons(s, top_k=3)),
    "answer position -1 (logit_lens)": ("answer_positions", lambda r: [-1, *r["answer_positions"][1:]],
                                        lambda s: logit_lens(s)),
    # past the width: a multi-line Polars OutOfBoundsError
    "answer position 99": ("answer_positions", lambda r: [99, *r["answer_positions"][1:]],
                           lambda s: dla(s, "layer")),
    # length 0: attention's key mask empties the example's row, other numbers, silently
    "length 0": ("length", lambda r: 0, lambda s: attention(s, query=-1)),
    # length past the width: a raw IndexError from attention's masks
    "length 99": ("length", lambda r: 99, lambda s: attention(s, query=-1)),
}


@pytest.mark.parametrize("name", list(FORGERIES))
def test_impossible_example_values_are_one_line_never_a_number(clean, tmp_path, name):
    column, edit, query = FORGERIES[name]
    root = forged(clean, tmp_path / "s", column, edit)
    with pytest.raises(StoreCorruptError) as e:
        query(actstore.open_store(root))
    assert "\n" not in str(e.value) and "examples" in str(e.value)
