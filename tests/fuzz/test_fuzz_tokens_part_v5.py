"""A store whose records are consistent but whose meta/tokens part does not hold one row per real token of its
chunk's examples (a row missing, another chunk's rows, a position past the example's length, a row doubled):
role-selected queries read each chunk's roles from that part (ExampleIndex.roles), so such a part gave other
numbers, silently; now one StoreCorruptError line naming the part. A part with other but well-formed roles is
another store's data and still reads.

Found by review (V, session 5); fixed in query/chunks.py (ExampleIndex.roles checks each part)."""

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
from actstore.query import attention, neurons  # noqa: E402

PART = "meta/tokens/part-00001.parquet"
ROLE = "="  # the addition task's '=' token: one per example


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    return actstore.ingest("addition", tiny_model("addition"), 20, 0, tmp_path_factory.mktemp("clean") / "s",
                           chunk=8, batch=8, quiet=True).path


def forged(clean: Path, dest: Path, edit: Callable[[pl.DataFrame], pl.DataFrame]) -> Path:
    """A copy of `clean` whose tokens part of chunk 1 is edit(part), every record redone."""
    root = shutil.copytree(clean, dest)
    part = root / PART
    edit(pl.read_parquet(part)).write_parquet(part)
    recommit(root, 1, PART, 3)
    return root


QUERIES: dict[str, Callable[[object], pl.DataFrame]] = {
    "attention": lambda s: attention(s, query=ROLE),
    "neurons": lambda s: neurons(s, pos=ROLE, top_k=3),
}
BROKEN: dict[str, Callable[[pl.DataFrame], pl.DataFrame]] = {
    "a row missing": lambda f: f.filter(~((pl.col("example_id") == 9) & (pl.col("role") == ROLE))),
    "another chunk's rows": lambda f: f.with_columns(pl.col("example_id") + 8),
    "a position past the length": lambda f: f.with_columns(
        pl.when(pl.col("example_id") == 9).then(pl.col("pos") + 50).otherwise(pl.col("pos")).alias("pos")),
    "a row doubled": lambda f: pl.concat([f, f.filter(pl.col("example_id") == 9).head(1)]),
}


@pytest.mark.parametrize("query", list(QUERIES))
@pytest.mark.parametrize("case", list(BROKEN))
def test_a_tokens_part_not_one_row_per_token_is_one_line(clean, tmp_path, case, query):
    root = forged(clean, tmp_path / "s", BROKEN[case])
    with pytest.raises(StoreCorruptError) as e:
        QUERIES[query](actstore.open_store(root))
    assert "\n" not in str(e.value) and "meta/tokens part 1" in str(e.value)


@pytest.mark.parametrize("query", list(QUERIES))
def test_well_formed_parts_still_read(clean, tmp_path, query):
    """The forgery itself changes nothing (the same part rewritten gives the clean numbers), and other roles
    in a well-formed part are data: they read, with other numbers."""
    want = QUERIES[query](actstore.open_store(clean))
    same = forged(clean, tmp_path / "same", lambda f: f)
    assert QUERIES[query](actstore.open_store(same)).equals(want)
    other = forged(clean, tmp_path / "other", lambda f: f.with_columns(
        pl.when(pl.col("example_id") == 9).then(None).otherwise(pl.col("role")).alias("role")))
    assert not QUERIES[query](actstore.open_store(other)).equals(want)


def test_an_examples_tokens_list_not_its_length_is_one_line(tmp_path):
    """An example whose tokens list is longer than its length (within or past the width) made mean_queries
    (attention_circuits, which pads each example's tokens) fail with a raw numpy ValueError."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_fuzz_forged_examples import forged as forged_example  # noqa: PLC0415

    from actstore.query.attention_circuits import mean_queries  # noqa: PLC0415

    clean = actstore.ingest("addition", tiny_model("addition"), 20, 0, tmp_path / "c", chunk=8, batch=8,
                            quiet=True).path
    width = actstore.open_store(clean).manifest.width
    for name, edit in (("one more", lambda r: r["tokens"] + [1]),
                       ("past the width", lambda r: r["tokens"] + [1] * (width + 3 - len(r["tokens"])))):
        root = forged_example(clean, tmp_path / name.replace(" ", "_"), "tokens", edit)
        for query in (lambda s: mean_queries(s, 1), lambda s: attention(s, query=-1)):
            with pytest.raises(StoreCorruptError) as e:
                query(actstore.open_store(root))
            assert "\n" not in str(e.value) and "examples" in str(e.value)
