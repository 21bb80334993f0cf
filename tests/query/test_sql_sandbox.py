"""SQL over a store is read-only and confined: every escape attempt is refused (one line) or harmless.

Each attempt runs against a real store (with a cached derived table) and a real DuckDB; after
each, every file of the store is byte-identical, nothing appeared outside it (the target of a
COPY/EXPORT/ATTACH, the working directory, the home directory's ~/.duckdb), and a plain query
still answers.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import duckdb
import polars as pl
import pytest
from query_models import N_EXAMPLES

import actstore
from actstore.cli import main
from actstore.errors import ActstoreError, QueryError, StoreCorruptError
from actstore.query import sql
from actstore.query.sql import READ_ONLY, connect

REAL_DUCKDB_HOME = Path.home() / ".duckdb"


@pytest.fixture(scope="module")
def store(tiny_store, tmp_path_factory):
    """A private copy of a tiny store whose dla table is already cached in derived/."""
    root = tmp_path_factory.mktemp("sandbox") / "s"
    shutil.copytree(tiny_store("ln_mlp").path, root)
    s = actstore.open_store(root)
    assert sql(s, "SELECT count(*) FROM dla").fetchall()[0][0] > 0
    assert any(s.derived_dir.glob("dla-*.parquet"))
    return s


@pytest.fixture()
def world(store, tmp_path, monkeypatch):
    """Where an escape could land: an outside folder, a fresh working directory and home."""
    outside, cwd, home = tmp_path / "outside", tmp_path / "cwd", tmp_path / "home"
    for d in (outside, cwd, home):
        d.mkdir()
    (outside / "secret.csv").write_text("user,password\nroot,hunter2\n")
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(home))
    return {"store": store.path, "outside": outside, "cwd": cwd, "home": home}


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# (query, what it must not create); {store} {outside} are filled in per test
ESCAPES = [
    # writes over the store or beside it
    ("COPY (SELECT 1) TO '{store}/zarr.json'", None),
    ("COPY examples TO '{store}/meta/examples/part-00000.parquet' (FORMAT parquet)", None),
    ("COPY (SELECT 2 AS value) TO '{store}/derived/x.parquet' (FORMAT parquet)", "{store}/derived/x.parquet"),
    ("COPY (SELECT 1) TO '{outside}/out.csv'", "{outside}/out.csv"),
    ("COPY examples FROM '{outside}/secret.csv'", None),
    ("EXPORT DATABASE '{outside}/export'", "{outside}/export"),
    ("IMPORT DATABASE '{outside}'", None),
    # reads outside the views
    ("SELECT * FROM read_csv('/etc/shadow')", None),
    ("SELECT * FROM read_csv('{outside}/secret.csv')", None),
    ("SELECT * FROM read_csv_auto('{outside}/secret.csv')", None),
    ("SELECT * FROM glob('/root/*')", None),
    ("SELECT * FROM glob('{store}/*')", None),
    ("SELECT * FROM read_text('{outside}/secret.csv')", None),
    ("SELECT * FROM read_blob('{store}/zarr.json')", None),
    ("SELECT * FROM read_json('{store}/zarr.json')", None),
    ("SELECT * FROM read_json_auto('{store}/zarr.json')", None),
    ("SELECT * FROM read_ndjson('{outside}/secret.csv')", None),
    ("SELECT * FROM parquet_scan('{store}/meta/examples/part-00000.parquet')", None),
    ("SELECT * FROM read_parquet('{store}/meta/examples/part-00000.parquet')", None),
    ("SELECT * FROM parquet_metadata('{store}/meta/examples/part-00000.parquet')", None),
    ("SELECT * FROM sniff_csv('{outside}/secret.csv')", None),
    ("SELECT * FROM '{outside}/secret.csv'", None),  # replacement scan by file name
    ("SELECT * FROM '{store}/meta/examples/part-00000.parquet'", None),
    ("SELECT * FROM read_duckdb('{outside}/x.db')", None),
    ("SELECT * FROM duckdb_secrets()", None),
    ("SELECT * FROM which_secret('s3://b/k', 's3')", None),
    ("SELECT * FROM query('SELECT * FROM read_csv(''/etc/passwd'')')", None),
    ("SELECT * FROM query_table('examples')", None),
    ("SELECT * FROM json_execute_serialized_sql(json_serialize_sql('SELECT 1'))", None),
    ("SELECT example_id FROM examples WHERE example_id IN (SELECT 1 FROM read_csv('{outside}/secret.csv'))", None),
    ("WITH f AS (SELECT * FROM glob('/etc/*')) SELECT * FROM f", None),
    ("SELECT * FROM (SELECT * FROM examples) e, LATERAL (SELECT * FROM read_text('/etc/hostname')) t", None),
    # extensions
    ("INSTALL httpfs", "{home}/.duckdb"),
    ("FORCE INSTALL json", "{home}/.duckdb"),
    ("LOAD parquet", None),
    ("LOAD '{outside}/evil.duckdb_extension'", None),
    ("UPDATE EXTENSIONS", None),
    # other databases
    ("ATTACH '{outside}/x.db' AS x", "{outside}/x.db"),
    ("ATTACH ':memory:' AS m", None),
    ("DETACH memory", None),
    ("USE system", None),
    # configuration
    ("SET enable_external_access = true", None),
    ("SET lock_configuration = false", None),
    ("RESET lock_configuration", None),
    ("RESET enable_external_access", None),
    ("SET GLOBAL enable_external_access = true", None),
    ("SET temp_directory = '{outside}/spill'", "{outside}/spill"),
    ("SET VARIABLE x = 1", None),
    ("PRAGMA enable_profiling = 'json'", None),
    ("PRAGMA profiling_output = '{outside}/profile.json'", "{outside}/profile.json"),
    ("PRAGMA version", None),
    ("CALL enable_logging(storage = 'file', storage_path = '{outside}/log')", "{outside}/log"),
    ("SELECT * FROM enable_logging(storage = 'file', storage_path = '{outside}/log')", "{outside}/log"),
    ("CALL pragma_version()", None),
    ("CHECKPOINT", None),
    # the views and the catalog
    ("CREATE TABLE t AS SELECT 1", None),
    ("CREATE OR REPLACE VIEW dla AS SELECT example_id, 2 * value AS value FROM dla", None),
    ("CREATE VIEW v AS SELECT * FROM examples", None),
    ("CREATE MACRO m(x) AS x + 1", None),
    ("CREATE SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')", None),
    ("CREATE PERSISTENT SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')", "{home}/.duckdb"),
    ("DROP VIEW examples", None),
    ("INSERT INTO examples (example_id) VALUES (999)", None),
    ("UPDATE examples SET carry_2 = NOT carry_2", None),
    ("DELETE FROM examples", None),
    ("ALTER VIEW examples RENAME TO e2", None),
    ("COMMENT ON VIEW examples IS 'x'", None),
    ("BEGIN TRANSACTION", None),
    ("PREPARE p AS SELECT 1", None),
    ("VACUUM", None),
    ("ANALYZE", None),
    # several statements
    ("SELECT 1; COPY (SELECT 1) TO '{store}/zarr.json'", None),
    ("SELECT 1; SELECT 2", None),
    ("SELECT 1; INSTALL httpfs", "{home}/.duckdb"),
]


def _fill(text: str, world: dict[str, Path]) -> str:
    return text.format(**{k: str(v) for k, v in world.items()})


@pytest.mark.parametrize(("query", "creates"), ESCAPES, ids=[q for q, _ in ESCAPES])
def test_escape_is_refused_and_changes_nothing(store, world, query, creates):
    before = snapshot(store.path)
    real_home = REAL_DUCKDB_HOME.exists()
    q = _fill(query, world)
    with pytest.raises(QueryError) as e:
        sql(store, q).fetchall()
    msg = str(e.value)
    assert "\n" not in msg
    assert "refused" in msg and READ_ONLY in msg, msg
    assert snapshot(store.path) == before
    assert not any(world["cwd"].iterdir()) and not any(world["home"].iterdir())
    assert sorted(p.name for p in world["outside"].iterdir()) == ["secret.csv"]
    if creates:
        assert not Path(_fill(creates, world)).exists()
    assert REAL_DUCKDB_HOME.exists() == real_home
    assert sql(store, "SELECT count(*) FROM examples").fetchall() == [(N_EXAMPLES,)]  # still answers


def test_harmless_selects_answer(store, world):
    """Plain SELECTs, catalog listings and settings reads run; nothing they do touches a file."""
    before = snapshot(store.path)
    assert sql(store, "SELECT current_setting('enable_external_access')").fetchall() == [(False,)]
    assert sql(store, "SELECT current_setting('lock_configuration')").fetchall() == [(True,)]
    assert sql(store, "SELECT count(*) FROM range(5)").fetchall() == [(5,)]
    assert sql(store, "SELECT * FROM unnest([1, 2])").fetchall() == [(1,), (2,)]
    names = {r[0] for r in sql(store, "SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    assert {"examples", "tokens", "outputs"} <= names
    assert len(sql(store, "DESCRIBE examples").fetchall()) > 3
    assert len(sql(store, "SUMMARIZE outputs").fetchall()) > 3
    assert sql(store, "WITH e AS (SELECT * FROM examples) SELECT count(*) FROM e").fetchall() == [(N_EXAMPLES,)]
    assert sql(store, "FROM examples SELECT count(*)").fetchall() == [(N_EXAMPLES,)]
    assert snapshot(store.path) == before
    assert not any(world["cwd"].iterdir()) and not any(world["home"].iterdir())


def test_no_function_reaches_the_environment(store, world):
    """DuckDB has no getenv outside its CLI; calling it, or scanning a Python variable by name, fails
    with a one-line QueryError."""
    secret_frame = pl.DataFrame({"password": ["hunter2"]})  # noqa: F841 (what a replacement scan would find)
    for q in ("SELECT getenv('HOME')", "SELECT * FROM secret_frame"):
        with pytest.raises(QueryError) as e:
            sql(store, q).fetchall()
        assert "\n" not in str(e.value) and "hunter2" not in str(e.value)


def test_duckdb_itself_is_locked(store, world):
    """Behind the statement check, the connection itself refuses files, extensions, ATTACH and
    any change of configuration (the check is not the only barrier)."""
    before = snapshot(store.path)
    con = connect(store)
    for statement in (
        f"COPY (SELECT 1) TO '{store.path}/zarr.json'",
        f"COPY (SELECT 1) TO '{world['outside']}/out.csv'",
        f"SELECT * FROM read_csv('{world['outside']}/secret.csv')",
        "SELECT * FROM glob('/root/*')",
        f"SELECT * FROM read_text('{store.path}/zarr.json')",
        f"SELECT * FROM '{store.path}/meta/examples/part-00000.parquet'",
        "INSTALL httpfs",
        f"ATTACH '{world['outside']}/x.db'",
        f"EXPORT DATABASE '{world['outside']}/export'",
        "SET enable_external_access = true",
        "RESET lock_configuration",
        "SET disabled_filesystems = ''",
        "SET temp_directory = '.tmp'",
        "SET allow_community_extensions = true",
        "SET autoinstall_known_extensions = true",
        "PRAGMA enable_profiling",
        f"CALL enable_logging(storage = 'file', storage_path = '{world['outside']}/log')",
    ):
        with pytest.raises(duckdb.Error):
            con.execute(statement).fetchall()
    assert con.execute("SELECT count(*) FROM examples").fetchall() == [(N_EXAMPLES,)]
    assert snapshot(store.path) == before
    assert sorted(p.name for p in world["outside"].iterdir()) == ["secret.csv"]
    assert not any(world["cwd"].iterdir()) and not any(world["home"].iterdir())


def test_refused_before_anything_is_computed(store, tmp_path):
    """A refused query that names a derived table computes and caches nothing."""
    root = tmp_path / "s"
    shutil.copytree(store.path, root)
    shutil.rmtree(root / "derived")
    fresh = actstore.open_store(root)
    with pytest.raises(QueryError, match="refused"):
        sql(fresh, f"COPY (SELECT * FROM dla) TO '{tmp_path}/dla.csv'")
    assert not fresh.derived_dir.exists() and not (tmp_path / "dla.csv").exists()


def test_store_sql_method_is_sandboxed_too(store, world):
    with pytest.raises(QueryError, match="refused"):
        store.sql(f"COPY (SELECT 1) TO '{store.path}/zarr.json'").fetchall()


def test_cli_refusal_is_one_line_exit_2(store, world, capsys):
    before = snapshot(store.path)
    for q in (f"COPY (SELECT 1) TO '{store.path}/zarr.json'", "SELECT * FROM read_csv('/etc/shadow')",
              "INSTALL httpfs", "SELECT 1; SELECT 2", "SET enable_external_access = true"):
        assert main(["sql", str(store.path), q]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.startswith("actstore sql: error: "), err
        assert "refused" in err and READ_ONLY in err, err
    assert snapshot(store.path) == before


def test_meta_views_read_only_checked_parts(store, tmp_path):
    """The meta views come from Store.meta_paths: a part that disagrees with its commit record is
    an error, never rows."""
    root = tmp_path / "s"
    shutil.copytree(store.path, root)
    part = root / "meta" / "examples" / "part-00001.parquet"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0x10
    part.write_bytes(bytes(data))
    with pytest.raises(StoreCorruptError):
        sql(actstore.open_store(root), "SELECT count(*) FROM examples").fetchall()


def test_errors_are_actstore_errors(store, world):
    with pytest.raises(ActstoreError):
        sql(store, "DROP VIEW examples")
    assert os.listdir(world["cwd"]) == []
