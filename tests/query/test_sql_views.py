"""sql(store, ...): DuckDB views over meta tables and lazily materialised, cached derived tables."""

from __future__ import annotations

import shutil

import numpy as np
import polars as pl
import pytest
from query_models import CHUNK, N_EXAMPLES

import actstore
from actstore.errors import IncompleteStoreWarning, QueryError
from actstore.query import dla, logit_lens, sql
from actstore.query.sql import mentioned_views


@pytest.fixture()
def store(tiny_store, tmp_path):
    """A private copy of the addition store without its derived/ cache (tests here write derived/ and
    check what it holds; other tests may have filled the shared store's)."""
    src = tiny_store("ln_mlp").path
    shutil.copytree(src, tmp_path / "s", ignore=shutil.ignore_patterns("derived"))
    return actstore.open_store(tmp_path / "s")


def test_the_issue_query(store):
    got = sql(store, "SELECT component, avg(value) AS v FROM dla JOIN examples USING (example_id) "
                     "WHERE carry_2 GROUP BY component ORDER BY component").pl()
    table = dla(store).join(store.examples.select("example_id", "carry_2"), on="example_id")
    want = table.filter(pl.col("carry_2")).group_by("component").agg(v=pl.col("value").mean()).sort("component")
    assert got.height == 17
    assert got["component"].to_list() == want["component"].to_list()
    np.testing.assert_allclose(got["v"], want["v"], rtol=1e-12)


def test_derived_tables_are_lazy_cached_and_keyed(store):
    assert sql(store, "SELECT count(*) AS n FROM examples").pl().item() == N_EXAMPLES
    assert not store.derived_dir.exists()  # nothing derived for a query that names no derived table
    sql(store, "SELECT * FROM dla LIMIT 1").pl()
    files = sorted(store.derived_dir.glob("dla-*.parquet"))  # (and the answer facts: query/store_facts.py)
    assert [f.name.split("-n=")[0] for f in files] == ["dla-level=head-target=correct"]
    stamp = files[0].stat().st_mtime_ns
    sql(store, "select count(*) from DLA").pl()  # reused, not recomputed
    assert files[0].stat().st_mtime_ns == stamp and len(list(store.derived_dir.glob("dla-*.parquet"))) == 1
    n = sql(store, "SELECT count(*) FROM dla", params={"dla": {"level": "layer"}}).fetchall()[0][0]
    assert n == N_EXAMPLES * store.n_answers * (2 + 2 * 3)
    assert len(list(store.derived_dir.glob("dla-level=layer-*.parquet"))) == 1
    lens = sql(store, "SELECT stage, layer, avg(value) AS v FROM logit_lens GROUP BY ALL ORDER BY layer, stage").pl()
    want = logit_lens(store).group_by("stage", "layer").agg(v=pl.col("value").mean()).sort("layer", "stage")
    np.testing.assert_allclose(lens["v"], want["v"], rtol=1e-12)


def test_uncommitted_chunks_are_invisible_and_change_the_key(store):
    sql(store, "SELECT 1 FROM dla").pl()
    # as if the ingest stopped before the last commit (so it never wrote its completion record either)
    (store.path / "_commits" / "00002.json").unlink()
    (store.path / "_commits" / "complete.json").unlink(missing_ok=True)
    with pytest.warns(IncompleteStoreWarning, match="2/3 chunks committed"):
        partial = actstore.open_store(store.path)
    assert partial.n_examples == 2 * CHUNK
    assert sql(partial, "SELECT count(*) FROM examples").fetchall() == [(2 * CHUNK,)]
    assert sql(partial, "SELECT max(example_id) FROM outputs").fetchall() == [(2 * CHUNK - 1,)]
    got = sql(partial, "SELECT count(DISTINCT example_id) FROM dla").fetchall()
    assert got == [(2 * CHUNK,)]
    names = [f.name for f in store.derived_dir.glob("dla-*.parquet")]
    assert len(names) == 1 and f"-n={2 * CHUNK}-" in names[0]  # the stale full-size file was replaced


def test_result_formats(store):
    res = sql(store, "SELECT example_id, carry_2 FROM examples ORDER BY example_id LIMIT 3")
    assert res.columns == ["example_id", "carry_2"]
    assert res.arrow().num_rows == 3
    assert list(res.df()["example_id"]) == [0, 1, 2]
    assert res.pl()["carry_2"].dtype == pl.Boolean


def test_errors_are_one_line_and_name_views_and_columns(store):
    with pytest.raises(QueryError) as e:
        sql(store, "SELECT * FROM dlaa").pl()
    msg = str(e.value)
    assert "dlaa" in msg and "available views: examples, tokens, outputs, dla, logit_lens, attention, neurons" in msg
    assert "\n" not in msg
    with pytest.raises(QueryError) as e:
        sql(store, "SELECT componentt FROM dla").pl()
    msg = str(e.value)
    assert "componentt" in msg
    assert "dla(example_id, answer_idx, answer_pos, target, component, layer, head, value)" in msg
    assert "\n" not in msg
    with pytest.raises(QueryError, match="SQL syntax error"):
        sql(store, "SELEC 1")
    with pytest.raises(QueryError, match="empty SQL query"):
        sql(store, "  ")
    with pytest.raises(QueryError, match="params for unknown derived table 'dlx'"):
        sql(store, "SELECT 1", params={"dlx": {}})


def test_mentioned_views_ignores_strings_and_comments():
    assert mentioned_views("SELECT 'dla' FROM examples -- neurons\n /* attention */") == ["examples"]
    assert mentioned_views('SELECT * FROM "logit_lens" JOIN Outputs USING (example_id)') == ["outputs", "logit_lens"]


def test_attention_and_neurons_views_equal_the_queries(store):
    """The raw views are written to derived/ chunk by chunk; their rows equal the in-memory queries."""
    from actstore import query

    keys = ["example_id", "layer", "head", "q_pos", "k_pos"]
    viewed = sql(store, "SELECT * FROM attention").pl().sort(keys)
    direct = query.attention(store).sort(keys)
    assert store.manifest.n_chunks > 1 and viewed.height == direct.height > 0
    assert viewed.equals(direct.select(viewed.columns))
    keys = ["layer", "example_id", "pos", "neuron"]
    viewed = sql(store, "SELECT * FROM neurons").pl().sort(keys)
    direct = pl.concat([query.neurons(store, layers=layer) for layer in range(3)]).sort(keys)
    assert viewed["layer"].unique().to_list() == [0, 1, 2]
    assert viewed.equals(direct.select(viewed.columns))


def test_store_sql_method(store):
    q = "SELECT component, avg(value) AS v FROM dla JOIN examples USING (example_id) WHERE carry_2 GROUP BY component"
    assert store.sql(q).pl().sort("component").equals(sql(store, q).pl().sort("component"))
    assert store.sql("SELECT count(*) FROM dla", {"dla": {"level": "layer"}}).fetchall() == [
        (N_EXAMPLES * store.n_answers * 8,)]


def test_unwritable_derived_dir_still_answers(store):
    """derived/ cannot be created (here a file is in its way, as a read-only store would refuse it):
    the derived table is computed and queried, just not cached."""
    store.derived_dir.write_text("not a directory")
    n = sql(store, "SELECT count(*) FROM dla").fetchall()[0][0]
    assert n == N_EXAMPLES * store.n_answers * 17 and store.derived_dir.is_file()
