"""The whole-store answer facts kept in derived/answer_facts-n=N-HASH.parquet (query/store_facts.py) decide
which answer directions a query reads, yet their only check is a digest record beside them in derived/, which
anyone who edits the file can rewrite. So the queries that use them must hold them against the checked
examples: a facts file lacking an answer the examples have (with a matching record) makes neurons and dla
refuse, never return other numbers; one with extra answers, one whose record does not match, and one of
another n give the same tables as the examples themselves."""

from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path

import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "ingest"))
from tiny_models import tiny_model  # noqa: E402

import actstore  # noqa: E402
from actstore.errors import ActstoreError, StoreCorruptError  # noqa: E402
from actstore.query import dla, neurons  # noqa: E402

QUERIES = {"neurons": lambda s: neurons(s, top_k=None), "neurons_diff": lambda s: neurons(s, direction="diff"),
           "dla": lambda s: dla(s, "head"), "dla_diff": lambda s: dla(s, "layer", "diff")}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Path, dict[str, pl.DataFrame], Path, bytes]:
    """(store, each query's table, its facts file, that file's bytes as the queries wrote it)."""
    path = actstore.ingest("addition", tiny_model("addition"), 25, 0, tmp_path_factory.mktemp("facts") / "s",
                           chunk=8, batch=8, quiet=True).path
    opened = actstore.open_store(path)
    want = {name: q(opened) for name, q in QUERIES.items()}
    (facts,) = (path / "derived").glob("answer_facts-n=25-*.parquet")
    return path, want, facts, facts.read_bytes()


def _put(facts: Path, frame: pl.DataFrame, record: bool = True) -> None:
    frame.write_parquet(facts, statistics=False)
    data = facts.read_bytes()
    digest = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)} if record else {"sha256": "0" * 64,
                                                                                             "size": len(data)}
    Path(f"{facts}.sha256").write_text(json.dumps(digest, sort_keys=True) + "\n")


def _edited(original: bytes, keep) -> pl.DataFrame:

    frame = pl.read_parquet(io.BytesIO(original))
    return pl.DataFrame({c: [keep(c, frame.get_column(c)[0].to_list())] for c in frame.columns},
                        schema={c: pl.List(pl.Int64) for c in frame.columns})


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_facts_lacking_an_answer_are_refused(store, name):
    path, want, facts, original = store
    try:
        _put(facts, _edited(original, lambda c, v: v[1:]))  # the smallest answer, counter and pair gone
        with pytest.raises(ActstoreError) as err:
            QUERIES[name](actstore.open_store(path))
        if name.startswith("neurons"):
            assert isinstance(err.value, StoreCorruptError) and "answer_facts" in str(err.value)
    finally:
        _put(facts, pl.read_parquet(io.BytesIO(original)))


@pytest.mark.parametrize("how", ["extra", "bad_record", "other_n"])
def test_other_facts_files_give_the_examples_tables(store, how):
    path, want, facts, original = store
    try:
        if how == "extra":  # answers and pairs no example has: directions read and never used
            _put(facts, _edited(original, lambda c, v: sorted({*v, 11 if c != "pairs" else (11 << 32) + 4})))
        elif how == "bad_record":  # a file of no answers whose record does not vouch for it: recomputed
            _put(facts, _edited(original, lambda c, v: []), record=False)
        else:  # no answers under another n's name: never read for this store
            other = facts.with_name(facts.name.replace("n=25", "n=24"))
            _put(other, _edited(original, lambda c, v: []))
        for name, q in QUERIES.items():
            assert q(actstore.open_store(path)).equals(want[name]), name
    finally:
        for f in (path / "derived").glob("answer_facts-n=24-*"):
            f.unlink()
        _put(facts, pl.read_parquet(io.BytesIO(original)))
