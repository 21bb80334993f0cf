"""`sql(store, query)`: DuckDB over a store's tables.

Views: `examples`, `tokens`, `outputs` (the committed Parquet parts of meta/, read in place) and
the derived tables `dla`, `logit_lens`, `attention`, `neurons`, each materialised on first use
into `<store>/derived/` (see derived.py) and only when the query names it. So

    SELECT component, avg(value) FROM dla JOIN examples USING (example_id)
    WHERE carry_2 GROUP BY component

computes per-head DLA once, then answers from Parquet. Derived tables use their default
parameters (dla: by='head', target='correct'; logit_lens: target='correct', ln='cached'; ...);
pass `params={'dla': {'by': 'layer'}}` for others. Errors (syntax, unknown view or column)
become one-line QueryErrors naming the available views and the columns of those the query uses.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

import duckdb
import polars as pl

from actstore.errors import QueryError
from actstore.query import derived
from actstore.store.layout import META_TABLES, part_path

VIEWS = (*META_TABLES, *derived.TABLES)


class QueryResult:
    """The result of `sql`: `.pl()` Polars, `.arrow()` a pyarrow Table, `.df()` pandas, `.fetchall()` rows."""

    def __init__(self, con: duckdb.DuckDBPyConnection, rel: duckdb.DuckDBPyRelation | None, describe: Any) -> None:
        self._con, self._rel, self._describe = con, rel, describe

    @property
    def columns(self) -> list[str]:
        return [] if self._rel is None else list(self._rel.columns)

    def _run(self, fetch: str) -> Any:
        if self._rel is None:
            return pl.DataFrame() if fetch == "pl" else None
        try:
            if fetch == "pl":
                return self._rel.pl()
            if fetch == "arrow":
                return self._rel.to_arrow_table()
            if fetch == "df":
                return self._rel.df()
            return self._rel.fetchall()
        except duckdb.Error as e:
            raise self._describe(e) from None

    def pl(self) -> pl.DataFrame:
        return self._run("pl")

    def arrow(self) -> Any:
        return self._run("arrow")

    def df(self) -> Any:
        return self._run("df")

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._run("fetchall")

    def __repr__(self) -> str:
        return f"QueryResult(columns={self.columns})"


def mentioned_views(query: str) -> list[str]:
    """The views a query names (string literals and comments ignored), in VIEWS order."""
    text = re.sub(r"'(?:[^']|'')*'", "''", query)
    text = re.sub(r"--[^\n]*", " ", text)
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    words = {w.lower() for w in re.findall(r'"([^"]+)"|\b([A-Za-z_][A-Za-z0-9_]*)\b', text) for w in w if w}
    return [v for v in VIEWS if v in words]


def connect(store: Any, query: str = "",
            params: Mapping[str, Mapping[str, Any]] | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the store's views (derived ones only if `query` names them)."""
    con = duckdb.connect()
    n_chunks = sum(1 for _ in store.chunks())
    for table in META_TABLES:
        paths = [str(part_path(store.path, table, k)) for k in range(n_chunks)]
        if paths:
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet({_list(paths)}, union_by_name = true)")
        else:  # nothing committed yet: an empty view with the table's columns
            con.register(f"_{table}_empty", getattr(store, table))
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM _{table}_empty")
    for table in mentioned_views(query):
        if table in derived.TABLES:
            got = derived.materialise(store, table, (params or {}).get(table))
            if isinstance(got, pl.DataFrame):  # not cached (read-only store): query the frame itself
                con.register(f"_{table}_frame", got)
                con.execute(f"CREATE VIEW {table} AS SELECT * FROM _{table}_frame")
            else:
                con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet({_list([str(got)])})")
    return con


def sql(store: Any, query: str, params: Mapping[str, Mapping[str, Any]] | None = None) -> QueryResult:
    """Run `query` against the store's views; `.pl()` / `.arrow()` / `.df()` on the result."""
    if not isinstance(query, str) or not query.strip():
        raise QueryError("empty SQL query; try: SELECT * FROM examples LIMIT 5")
    unknown = sorted(set(params or {}) - set(derived.TABLES))
    if unknown:
        raise QueryError(
            f"params for unknown derived table {unknown[0]!r}; derived tables: {', '.join(derived.TABLES)}")
    con = connect(store, query, params)

    def describe(e: duckdb.Error) -> QueryError:
        return _error(con, query, e)

    try:
        rel = con.sql(query)
    except duckdb.Error as e:
        raise describe(e) from None
    return QueryResult(con, rel, describe)


def _list(paths: list[str]) -> str:
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def _error(con: duckdb.DuckDBPyConnection, query: str, e: duckdb.Error) -> QueryError:
    """One line: DuckDB's message, the views, and the columns of the views the query uses."""
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    first = re.sub(r"^(Catalog|Binder|Parser|Conversion|Invalid Input) Error: ", "", first)
    if isinstance(e, duckdb.ParserException):
        return QueryError(f"SQL syntax error: {first}")
    bound = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    used = [v for v in mentioned_views(query) if v in bound]
    cols = "; ".join(f"{v}({', '.join(_columns(con, v))})" for v in used)
    hint = f"available views: {', '.join(VIEWS)}" + (f"; columns: {cols}" if cols else "")
    missing = re.search(r"with name (\S+) does not exist", first)
    if isinstance(e, duckdb.CatalogException) and missing:  # our own hint: DuckDB's may name a system table
        close = difflib.get_close_matches(missing[1].lower(), VIEWS, n=1)
        first = first + (f" Did you mean {close[0]!r}?" if close else "")
    if isinstance(e, (duckdb.CatalogException, duckdb.BinderException)):  # unknown view / column
        return QueryError(f"{first}; {hint}")
    return QueryError(f"{first} ({hint})")


def _columns(con: duckdb.DuckDBPyConnection, view: str) -> list[str]:
    try:
        return [r[0] for r in con.execute(f"DESCRIBE {view}").fetchall()]
    except duckdb.Error:
        return []
