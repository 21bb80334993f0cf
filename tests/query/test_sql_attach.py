"""sql(a, ..., attach={"b": other}): a second store's views as b.examples, b.dla, ... inside the sandbox.

Two stores of the same 40 addition examples through two tiny random models (query_models.py):
the attached views equal the second store's own tables, a query across both equals the same
computation in Polars, derived tables are computed only for the store whose view a query names,
aliases and unopenable stores are refused in one line, and escapes through the attached schema
are refused and change nothing in either store.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
from query_models import CHUNK, N_EXAMPLES, tiny_model

import actstore
from actstore.cli import main
from actstore.errors import InvalidParameterError, QueryError, StoreNotFoundError
from actstore.query import dla, sql
from actstore.query.sql import READ_ONLY, attached_views, connect, mentioned_views


def ingest_second_model(path: Path, seed: int = 1) -> Path:
    """The tiny_store('ln_mlp') examples (addition, seed 3) through another random model of its shape."""
    actstore.ingest("addition", tiny_model("ln_mlp", seed=seed), N_EXAMPLES, 3, path, hooks=["default", "resid_post"],
                    dtype="float32", chunk=CHUNK, batch=8, quiet=True)
    return path


@pytest.fixture(scope="module")
def second(tmp_path_factory) -> Path:
    return ingest_second_model(tmp_path_factory.mktemp("attach") / "b")


@pytest.fixture()
def pair(tiny_store, second, tmp_path):
    """Private copies (tests here check what is written to derived/)."""
    a = shutil.copytree(tiny_store("ln_mlp").path, tmp_path / "a")
    b = shutil.copytree(second, tmp_path / "b")
    for root in (a, b):
        shutil.rmtree(root / "derived", ignore_errors=True)
    return actstore.open_store(a), actstore.open_store(b)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_attached_views_are_the_other_stores_tables(pair):
    a, b = pair
    assert sql(a, "SELECT count(*) FROM b.examples", attach={"b": b}).fetchall() == [(N_EXAMPLES,)]
    got = sql(a, "SELECT * FROM b.outputs ORDER BY example_id, answer_idx", attach={"b": b.path}).pl()
    assert got.equals(b.outputs.sort("example_id", "answer_idx").select(got.columns))
    got = sql(a, "SELECT * FROM b.dla", attach={"b": str(b.path)}).pl()
    want = dla(b)
    assert got.columns == want.columns
    assert got.sort("example_id", "answer_idx", "component").equals(want.sort("example_id", "answer_idx", "component"))
    assert not dla(a).equals(want)  # two different models: the attached view is not the main one
    mine = sql(a, "SELECT count(*) FROM tokens", attach={"b": b}).fetchall()
    assert mine == [(a.tokens.height,)]


def test_a_query_across_two_stores_equals_polars(pair):
    """Per head: the mean change of DLA between the two models, by SQL and by numpy over dla()."""
    a, b = pair
    got = a.sql("SELECT component, avg(o.value - m.value) AS change, count(*) AS n "
                "FROM dla m JOIN other.dla o USING (example_id, answer_idx, component) "
                "WHERE component LIKE 'L%H%' GROUP BY component ORDER BY component", attach={"other": b}).pl()
    ta, tb = dla(a), dla(b)
    heads = sorted(c for c in ta["component"].unique() if c.startswith("L"))
    assert got["component"].to_list() == heads and len(heads) == 9
    for row in got.iter_rows(named=True):
        va = ta.filter(pl.col("component") == row["component"]).sort("example_id", "answer_idx")["value"].to_numpy()
        vb = tb.filter(pl.col("component") == row["component"]).sort("example_id", "answer_idx")["value"].to_numpy()
        assert row["n"] == N_EXAMPLES * a.n_answers == va.size
        np.testing.assert_allclose(row["change"], np.mean(vb - va), rtol=1e-9, atol=1e-12)


def test_derived_tables_only_for_the_store_named(pair):
    a, b = pair
    sql(a, "SELECT count(*) FROM b.examples JOIN examples USING (example_id)", attach={"b": b}).fetchall()
    assert not a.derived_dir.exists() and not b.derived_dir.exists()
    sql(a, 'SELECT count(*) FROM "b"."dla"', attach={"b": b}).fetchall()
    assert not a.derived_dir.exists()
    assert [f.name.split("-n=")[0] for f in b.derived_dir.glob("dla-*.parquet")] == ["dla-level=head-target=correct"]
    n = sql(a, "SELECT count(*) FROM b . dla", attach={"b": b}, params={"dla": {"level": "layer"}}).fetchall()
    assert n == [(N_EXAMPLES * a.n_answers * (2 + 2 * 3),)]  # params reach the attached store's tables
    assert not a.derived_dir.exists()
    sql(a, "SELECT count(*) FROM dla", attach={"b": b}).fetchall()
    assert a.derived_dir.exists() and len(list(b.derived_dir.glob("dla-*.parquet"))) == 2


def test_an_attention_only_main_store_with_an_attached_neurons_view(tiny_store, second):
    """b.neurons names the attached store's neurons, not the main store's (which has none)."""
    main_store = tiny_store("ln_attn")
    other = actstore.open_store(second)
    got = sql(main_store, "SELECT count(DISTINCT layer) FROM b.neurons", attach={"b": other}).fetchall()
    assert got == [(3,)]
    with pytest.raises(QueryError, match="attention-only"):
        sql(main_store, "SELECT count(*) FROM neurons", attach={"b": other})


def test_view_references_by_store():
    q = 'SELECT * FROM b.dla JOIN dla USING (component) JOIN "B"."Neurons" ON 1 -- c.attention\n'
    assert mentioned_views(q, ("b", "c")) == ["dla"]
    assert attached_views(q, ("b", "c")) == {"b": ["dla", "neurons"], "c": []}
    assert attached_views("SELECT 'b.dla' FROM memory.c.logit_lens, c . sweeps", ("b", "c")) == {
        "b": [], "c": ["logit_lens", "sweeps"]}
    assert mentioned_views("SELECT dla.value FROM main.dla", ("b",)) == ["dla"]


@pytest.mark.parametrize(("alias", "says"), [
    ("main", "DuckDB's own schemas"), ("MEMORY", "DuckDB's own schemas"), ("system", "DuckDB's own schemas"),
    ("temp", "DuckDB's own schemas"), ("_src_x", "actstore's sources"),
    ("dla", "name of a view"), ("Examples", "name of a view"), ("select", "reserved SQL keyword"),
    ("1b", "not a plain identifier"), ("b-c", "not a plain identifier"), ("", "not a plain identifier"),
    ('b"; DROP', "not a plain identifier"), ("b.c", "not a plain identifier"), (3, "not a plain identifier"),
])
def test_bad_aliases_are_refused(pair, alias, says):
    a, b = pair
    with pytest.raises(InvalidParameterError) as e:
        sql(a, "SELECT 1", attach={alias: b})
    assert says in str(e.value) and "\n" not in str(e.value)


def test_bad_attachments_are_refused(pair, tmp_path):
    a, b = pair
    with pytest.raises(InvalidParameterError, match="'b' and 'B' are the same name"):
        sql(a, "SELECT 1", attach={"b": b, "B": b})
    with pytest.raises(StoreNotFoundError) as e:
        sql(a, "SELECT 1", attach={"b": tmp_path / "nowhere"})
    assert str(e.value).startswith("attach 'b': no store at") and str(tmp_path / "nowhere") in str(e.value)
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreNotFoundError, match="is not an actstore store"):
        sql(a, "SELECT 1", attach={"b": tmp_path / "plain"})
    with pytest.raises(InvalidParameterError, match="expected a store or a store path, got int"):
        sql(a, "SELECT 1", attach={"b": 7})  # type: ignore[dict-item]
    with pytest.raises(InvalidParameterError, match="attach must map aliases"):
        sql(a, "SELECT 1", attach=[("b", b)])  # type: ignore[arg-type]


def test_errors_name_the_attached_views_and_columns(pair):
    a, b = pair
    with pytest.raises(QueryError) as e:
        sql(a, "SELECT * FROM b.dlaa", attach={"b": b}).fetchall()
    msg = str(e.value)
    assert "dlaa" in msg and "attached: b (views as b.examples, b.dla, ...)" in msg and "Did you mean 'dla'" in msg
    with pytest.raises(QueryError) as e:
        sql(a, "SELECT componentt FROM b.dla", attach={"b": b}).fetchall()
    assert "b.dla(example_id, answer_idx, answer_pos, target, component, layer, head, value)" in str(e.value)
    with pytest.raises(QueryError, match="does not exist"):
        sql(a, "SELECT * FROM c.examples", attach={"b": b}).fetchall()


# escapes through the attached schema; {a} {b} the stores, {outside} a folder beside them
ESCAPES = [
    "CREATE OR REPLACE VIEW b.dla AS SELECT 1 AS value",
    "CREATE VIEW b.v AS SELECT * FROM b.examples",
    "CREATE TABLE b.t AS SELECT 1",
    "CREATE SCHEMA c",
    "DROP SCHEMA b CASCADE",
    "DROP VIEW b.examples",
    "ALTER VIEW b.examples RENAME TO e2",
    "INSERT INTO b.examples (example_id) VALUES (999)",
    "DELETE FROM b.examples",
    "COPY b.examples TO '{outside}/x.csv'",
    "COPY (SELECT * FROM b.dla) TO '{b}/zarr.json'",
    "COPY (SELECT * FROM b.examples) TO '{b}/meta/examples/part-00000.parquet' (FORMAT parquet)",
    "EXPORT DATABASE '{outside}/export'",
    "SELECT * FROM read_parquet('{b}/meta/examples/part-00000.parquet')",
    "SELECT * FROM '{b}/meta/examples/part-00000.parquet'",
    "SELECT * FROM b.read_csv('{outside}/secret.csv')",
    "SELECT * FROM glob('{b}/*')",
    "SELECT * FROM b.examples WHERE example_id IN (SELECT 1 FROM read_text('{outside}/secret.csv'))",
    "ATTACH '{b}/x.db' AS c",
    "DETACH b",
    "USE b",
    "SET schema = 'b'",
    "SET search_path = 'b'",
    "SELECT 1; DROP SCHEMA b CASCADE",
]


@pytest.fixture(scope="module")
def cached_pair(tiny_store, second, tmp_path_factory):
    """Private copies whose dla tables are cached (one per module: the escapes must change nothing)."""
    root = tmp_path_factory.mktemp("escapes")
    a = actstore.open_store(shutil.copytree(tiny_store("ln_mlp").path, root / "a"))
    b = actstore.open_store(shutil.copytree(second, root / "b"))
    sql(a, "SELECT count(*) FROM b.dla JOIN dla USING (example_id)", attach={"b": b}).fetchall()
    return a, b


@pytest.mark.parametrize("query", ESCAPES)
def test_escape_through_the_attached_schema_is_refused(cached_pair, tmp_path, monkeypatch, query):
    a, b = cached_pair
    outside, cwd = tmp_path / "outside", tmp_path / "cwd"
    outside.mkdir()
    cwd.mkdir()
    (outside / "secret.csv").write_text("user,password\nroot,hunter2\n")
    monkeypatch.chdir(cwd)
    before = snapshot(a.path), snapshot(b.path)
    with pytest.raises(QueryError) as e:
        sql(a, query.format(a=a.path, b=b.path, outside=outside), attach={"b": b}).fetchall()
    msg = str(e.value)
    assert "\n" not in msg and "refused" in msg and READ_ONLY in msg, msg
    assert (snapshot(a.path), snapshot(b.path)) == before
    assert sorted(p.name for p in outside.iterdir()) == ["secret.csv"] and not any(cwd.iterdir())
    assert sql(a, "SELECT count(*) FROM b.examples", attach={"b": b}).fetchall() == [(N_EXAMPLES,)]


def test_the_connection_with_an_attached_store_is_locked(pair, tmp_path):
    """Behind the statement check, DuckDB itself reads no file of the attached store and writes none."""
    a, b = pair
    con = connect(a, "SELECT * FROM b.dla", attach={"b": b})  # computes and caches b's dla table
    before = snapshot(b.path)
    for statement in (
        f"COPY b.examples TO '{tmp_path}/x.csv'",
        f"SELECT * FROM read_parquet('{b.path}/meta/examples/part-00000.parquet')",
        f"SELECT * FROM '{b.path}/meta/outputs/part-00000.parquet'",
        f"ATTACH '{tmp_path}/x.db' AS c",
        "SET enable_external_access = true",
    ):
        with pytest.raises(duckdb.Error):
            con.execute(statement).fetchall()
    assert con.execute("SELECT count(*) FROM b.dla").fetchall() == [(N_EXAMPLES * a.n_answers * 17,)]
    assert snapshot(b.path) == before and not (tmp_path / "x.csv").exists() and not (tmp_path / "x.db").exists()


def test_cli_attach(pair, capsys, tmp_path):
    a, b = pair
    q = "SELECT count(*) AS n, avg(o.value) AS v FROM b.dla o"
    assert main(["sql", str(a.path), q, "--attach", f"b={b.path}", "--format", "csv"]) == 0
    out = pl.read_csv(capsys.readouterr().out.encode())
    assert out["n"].item() == dla(b).height
    np.testing.assert_allclose(out["v"].item(), dla(b)["value"].mean(), rtol=1e-9)
    for argv, says in (
        (["--attach", "b"], "--attach expects ALIAS=STORE"),
        (["--attach", "=x"], "--attach expects ALIAS=STORE"),
        (["--attach", f"b={b.path}", "--attach", f"b={a.path}"], "--attach 'b' is given twice"),
        (["--attach", f"main={b.path}"], "attach alias 'main'"),
        (["--attach", f"b={tmp_path}/missing"], "attach 'b': no store at"),
    ):
        assert main(["sql", str(a.path), "SELECT 1", *argv, "-o", str(tmp_path / "r.csv")]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.startswith("actstore sql: error: ") and says in err, err
        assert not (tmp_path / "r.csv").exists()
