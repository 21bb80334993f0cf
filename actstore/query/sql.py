"""`sql(store, query)`: DuckDB over a store's tables, read-only and confined to the store.

Views: `examples`, `tokens`, `outputs`, `topk` (the committed Parquet parts of meta/, each checked
against its commit record by `Store.meta_paths`; `topk` is empty for a store that keeps no top-k
tokens), the derived tables `dla`, `logit_lens`,
`attention`, `neurons`, each materialised on first use into `<store>/derived/` (see derived.py)
and only when the query names it, and the stored intervention sweeps: `interventions` (one row
per target, example, answer and metric, with the clean and corrupted baselines) and `sweeps`
(one row per sweep's spec). So

    SELECT component, avg(value) FROM dla JOIN examples USING (example_id)
    WHERE carry_2 GROUP BY component

computes per-head DLA once, then answers from Parquet. Derived tables use their default
parameters (dla: level='head', target='correct'; logit_lens: target='correct', ln='cached'; ...);
pass `params={'dla': {'level': 'layer'}}` for others. Errors (syntax, unknown view or column)
become one-line QueryErrors naming the available views and the columns of those the query uses.

Attached stores: `sql(a, query, attach={"b": other})` (other: a Store or a store path) adds
every view of the second store under the schema `b`: `b.examples`, `b.tokens`, `b.outputs`,
`b.dla`, ..., read through the same checked paths as the main store's (its derived tables only
when the query names them as `b.dla`, with the same `params`). So two models on one task compare
in one query: `SELECT component, avg(b.value - d.value) FROM dla d JOIN b.dla USING (example_id,
answer_idx, component) GROUP BY component`. An alias is a plain identifier (letters, digits,
underscores, not starting with a digit), not a view name, not `main` or another catalog name,
not an SQL keyword DuckDB reserves; a store that does not open is one error naming its path.

The sandbox: a query is exactly one SELECT (also DESCRIBE, SHOW, SUMMARIZE, which parse as one)
whose table functions are on a short allow-list (range, unnest, catalog listings); anything
else (COPY, ATTACH, INSTALL/LOAD, SET/RESET, PRAGMA, CALL, CREATE/DROP/INSERT/UPDATE/DELETE,
EXPORT, several statements, read_csv/read_text/glob/query(), ...) is refused with one line
before anything runs. Behind that check DuckDB itself is locked down: the views (those of
attached stores too) read Arrow datasets registered by actstore (DuckDB opens no file itself),
then external access and the
local file system are switched off, extension autoload/autoinstall, community extensions,
persistent secrets, Python replacement scans and spilling to a temp directory are off, and the
configuration is locked, so no statement can write anything or read a file. Results are
written by actstore itself (the CLI's -o), never by SQL.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from actstore.errors import ActstoreError, InvalidParameterError, QueryError
from actstore.lazy import lazy_module
from actstore.query import derived
from actstore.query.interventions import interventions as stored_interventions
from actstore.query.interventions import sweeps as stored_sweeps
from actstore.store.fs import RemotePath, StorePath, arrow_filesystem
from actstore.store.layout import META_TABLES, OPTIONAL_META_TABLES
from actstore.store.open import open_store
from actstore.store.reader import Store

if TYPE_CHECKING:
    import duckdb
    import pyarrow.dataset as ds
else:  # imported on first use: ~0.2 s and ~0.7 s (pandas with it) that a process running no SQL never needs
    duckdb = lazy_module("duckdb")
    ds = lazy_module("pyarrow.dataset")

SWEEP_VIEWS = ("interventions", "sweeps")  # stored intervention results (actstore.interventions writes them)
VIEWS = (*META_TABLES, *derived.TABLES, *OPTIONAL_META_TABLES, *SWEEP_VIEWS)


class QueryResult:
    """The result of `sql`: `.pl()` Polars, `.arrow()` a pyarrow Table, `.df()` pandas, `.fetchall()` rows."""

    def __init__(self, con: duckdb.DuckDBPyConnection, rel: duckdb.DuckDBPyRelation | None, describe: Any) -> None:
        self._con, self._rel, self._describe = con, rel, describe

    @property
    def columns(self) -> list[str]:
        return [] if self._rel is None else list(self._rel.columns)

    def _run(self, fetch: str) -> Any:
        rel = self._rel
        if rel is None:
            return pl.DataFrame() if fetch == "pl" else None
        runs: dict[str, Callable[[], Any]] = {"pl": rel.pl, "arrow": rel.to_arrow_table, "df": rel.df}
        run = runs.get(fetch, rel.fetchall)
        try:
            return _interruptible(self._con, run)
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


def _interruptible(con: duckdb.DuckDBPyConnection, run: Callable[[], Any]) -> Any:
    """run() on a worker thread, so that Ctrl-C (which Python cannot deliver while DuckDB's C++ holds
    the main thread) interrupts the query: KeyboardInterrupt here, after DuckDB has stopped."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="actstore-sql") as pool:
        future = pool.submit(run)
        while True:
            try:
                return future.result(timeout=0.2)
            except FuturesTimeout:
                continue
            except KeyboardInterrupt:
                con.interrupt()
                try:
                    future.result()
                except (duckdb.Error, RuntimeError):  # DuckDB's own report of the interrupt
                    pass
                raise


def mentioned_views(query: str, aliases: tuple[str, ...] = ()) -> list[str]:
    """The main store's views a query names (string literals and comments ignored), in VIEWS
    order; a name qualified by an attached store's alias (`b.dla`) is that store's, not the main one's."""
    return _view_refs(query, aliases)[None]


def attached_views(query: str, aliases: tuple[str, ...]) -> dict[str, list[str]]:
    """For each alias, the views of its store the query names as `alias.view`, in VIEWS order."""
    refs = _view_refs(query, aliases)
    return {alias: refs[alias] for alias in aliases}


_IDENT = r'"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*'
_CHAIN = re.compile(rf"(?:{_IDENT})(?:\s*\.\s*(?:{_IDENT}))*")


def _view_refs(query: str, aliases: tuple[str, ...]) -> dict[str | None, list[str]]:
    """{None: main views named, alias: views named as alias.view}; over-inclusive, never missing one."""
    text = re.sub(r"'(?:[^']|'')*'", "''", query)
    text = re.sub(r"--[^\n]*", " ", text)
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    lowered = {a.lower(): a for a in aliases}
    found: dict[str | None, set[str]] = {None: set(), **{a: set() for a in aliases}}
    for chain in _CHAIN.finditer(text):
        parts = [_unquote(p).lower() for p in re.findall(_IDENT, chain.group(0))]
        for i, word in enumerate(parts):
            if word in VIEWS:
                owner = lowered.get(parts[i - 1]) if i > 0 else None
                found[owner].add(word)
    return {k: [v for v in VIEWS if v in names] for k, names in found.items()}


def _unquote(ident: str) -> str:
    return ident[1:-1].replace('""', '"') if ident.startswith('"') else ident


READ_ONLY = "SQL over a store is read-only and confined to the store"

# table functions a query may call: generators and catalog listings (no file, no setting, no dynamic SQL)
TABLE_FUNCTIONS = frozenset({
    "range", "generate_series", "unnest", "repeat", "json_each", "json_tree",
    "duckdb_columns", "duckdb_tables", "duckdb_views", "duckdb_types", "duckdb_functions", "duckdb_keywords",
    "pragma_table_info",
})

# set when the connection is opened (some cannot change later); the rest by _LOCK, after the views exist
_CONFIG = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "allow_persistent_secrets": False,
    "allow_unredacted_secrets": False,
    "python_enable_replacements": False,  # no scans of the caller's Python variables by name
    "temp_directory": "",  # never spill to disk (DuckDB's default is ./.tmp in the working directory)
}
_LOCK = (
    "SET enable_progress_bar = false",  # DuckDB's own bar writes into stdout, i.e. into a piped result
    "SET enable_external_access = false",  # no file, network, extension or ATTACH access from SQL
    "SET disabled_filesystems = 'LocalFileSystem'",
    "SET allow_extension_repositories = 'forbidden'",
    "SET lock_configuration = true",  # last: no SET/RESET/PRAGMA can undo the above
)


def refused(what: str) -> QueryError:
    """The one line for anything the sandbox does not run."""
    return QueryError(f"{what} refused: {READ_ONLY} (one SELECT over its views {', '.join(VIEWS)}; "
                      f"write a result with -o FILE)")


def check_query(con: duckdb.DuckDBPyConnection, query: str) -> None:
    """Raise QueryError unless `query` is exactly one SELECT calling only allowed table functions."""
    try:
        statements = con.extract_statements(query)
    except duckdb.ParserException as e:
        raise QueryError(f"SQL syntax error: {_first_line(e)}") from None
    except duckdb.Error:
        raise refused("this statement") from None
    if not statements:
        raise QueryError("empty SQL query; try: SELECT * FROM examples LIMIT 5")
    if len(statements) > 1:
        raise refused(f"{len(statements)} statements in one query")
    try:
        kind = statements[0].type
    except ValueError:  # a statement kind this duckdb module cannot even name (e.g. UPDATE EXTENSIONS)
        raise refused("this statement") from None
    if kind == duckdb.StatementType.MULTI:  # e.g. a PIVOT that first creates a type for its values
        raise refused("a statement that runs several (a PIVOT without an IN (...) list of values is one)")
    if kind != duckdb.StatementType.SELECT:
        raise refused(f"a {kind.name} statement")
    try:
        tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [query]).fetchall()[0][0])
    except (duckdb.Error, TypeError, ValueError, RecursionError):  # RecursionError: nesting beyond Python's
        raise refused("a SELECT that cannot be inspected (too deeply nested?)") from None
    if tree.get("error"):
        raise refused(f"a SELECT that cannot be inspected ({tree.get('error_message', '')})")
    for name in _table_functions(tree):
        if name.lower() not in TABLE_FUNCTIONS:
            raise refused(f"table function {name}()")


def _table_functions(node: Any) -> Iterator[str]:
    """Names of every table function in a json_serialize_sql parse tree (subqueries, CTEs included)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("type") == "TABLE_FUNCTION":
                fn = item.get("function")
                yield str(fn.get("function_name", "?")) if isinstance(fn, dict) else "?"
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def sources(store: Store, query: str = "",
            params: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The store's views as objects DuckDB scans without opening a file itself: checked meta parts
    as pyarrow datasets, derived tables (only those `query` names) over their checked bytes."""
    return _store_sources(store, mentioned_views(query), params)


def _store_sources(store: Store, named: list[str],
                   params: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any]:
    """The meta views always; the derived and sweep views in `named` only."""
    out: dict[str, Any] = {}
    for table in (*META_TABLES, *OPTIONAL_META_TABLES):  # topk: empty where the store keeps none
        paths = store.meta_paths(table)
        out[table] = _parquet_dataset(paths) if paths else getattr(store, table)  # nothing committed: empty
    for table in named:
        if table in derived.TABLES:
            got = derived.materialise(store, table, (params or {}).get(table))
            out[table] = got if isinstance(got, pl.DataFrame) else _buffer_dataset(got)  # frame: not cached
        elif table in SWEEP_VIEWS:  # every part checked against its commit record as it is read
            out[table] = stored_interventions(store) if table == "interventions" else stored_sweeps(store)
    return out


def sandbox(views: Mapping[str, Any], con: duckdb.DuckDBPyConnection | None = None,
            attached: Mapping[str, Mapping[str, Any]] | None = None) -> duckdb.DuckDBPyConnection:
    """A locked, read-only in-memory DuckDB connection with one view per entry of `views`
    (name -> a pyarrow Dataset/Table or a Polars/pandas frame) and, for each attached store, a
    schema named by its alias holding its views the same way. Everything a query can read is
    registered here, before the lock."""
    con = con if con is not None else _open()
    for name, source in views.items():
        con.register(f"_src_{name}", source)
        con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM "_src_{name}"')
    for i, (alias, its_views) in enumerate((attached or {}).items()):
        check_alias(alias)
        con.execute(f'CREATE SCHEMA "{alias}"')
        for name, source in its_views.items():  # registered names cannot clash: no view starts with a digit
            con.register(f"_src_{i}_{name}", source)
            con.execute(f'CREATE VIEW "{alias}"."{name}" AS SELECT * FROM "_src_{i}_{name}"')
    for statement in _LOCK:
        con.execute(statement)
    return con


def connect(store: Store, query: str = "", params: Mapping[str, Mapping[str, Any]] | None = None,
            attach: Mapping[str, Store] | None = None) -> duckdb.DuckDBPyConnection:
    """A locked in-memory DuckDB connection with the store's views (derived ones only if `query`
    names them) and those of the `attach`ed stores under their aliases (opened: see
    `attached_stores`); `query`, if given, is checked first, so a refused one computes nothing."""
    con = _open()
    if query:
        check_query(con, query)
    others = dict(attach or {})
    aliases = tuple(others)
    named = attached_views(query, aliases)
    views = _store_sources(store, mentioned_views(query, aliases), params)
    attached = {alias: _store_sources(other, named[alias], params) for alias, other in others.items()}
    return sandbox(views, con, attached)


def sql(store: Store, query: str, params: Mapping[str, Mapping[str, Any]] | None = None,
        attach: Mapping[str, Store | str | os.PathLike[str]] | None = None) -> QueryResult:
    """Run `query` against the store's views; `.pl()` / `.arrow()` / `.df()` on the result.

    params: parameters of the derived tables, e.g. {'dla': {'level': 'layer'}} (for attached
            stores' derived tables too)
    attach: {alias: store or store path}: each store's views as `alias.examples`, `alias.dla`, ...
    """
    if not isinstance(query, str) or not query.strip():
        raise QueryError("empty SQL query; try: SELECT * FROM examples LIMIT 5")
    unknown = sorted(set(params or {}) - set(derived.TABLES))
    if unknown:
        raise QueryError(
            f"params for unknown derived table {unknown[0]!r}; derived tables: {', '.join(derived.TABLES)}")
    others = attached_stores(attach)
    con = connect(store, query, params, others)

    def describe(e: duckdb.Error) -> QueryError:
        return _error(con, query, e, tuple(others))

    try:
        rel = con.sql(query)
    except duckdb.Error as e:
        raise describe(e) from None
    return QueryResult(con, rel, describe)


# schemas and catalogs a DuckDB connection already has: an attached store cannot take their names
CATALOG_NAMES = frozenset({"main", "memory", "temp", "system", "information_schema", "pg_catalog"})
_ALIAS = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_alias(alias: object) -> str:
    """`alias` if it can name an attached store's schema, else InvalidParameterError saying why."""
    if not isinstance(alias, str) or not _ALIAS.fullmatch(alias):
        raise InvalidParameterError(f"attach alias {alias!r} is not a plain identifier (letters, digits and "
                                    "underscores, not starting with a digit), e.g. b")
    low = alias.lower()
    if low in VIEWS:
        raise InvalidParameterError(f"attach alias {alias!r} is the name of a view; choose another, e.g. b")
    if low in CATALOG_NAMES or low.startswith("_src_"):
        raise InvalidParameterError(f"attach alias {alias!r} names one of DuckDB's own schemas or actstore's "
                                    "sources; choose another, e.g. b")
    if low in _reserved_keywords():
        raise InvalidParameterError(f"attach alias {alias!r} is a reserved SQL keyword; choose another, e.g. b")
    return alias


@lru_cache(maxsize=1)
def _reserved_keywords() -> frozenset[str]:
    con = _open()
    try:
        rows = con.execute("SELECT keyword_name FROM duckdb_keywords() WHERE keyword_category = 'reserved'")
        return frozenset(str(r[0]).lower() for r in rows.fetchall())
    finally:
        con.close()


def attached_stores(attach: Mapping[str, Store | str | os.PathLike[str]] | None) -> dict[str, Store]:
    """{alias: open Store}: aliases checked (distinct ignoring case, see check_alias), paths opened;
    a store that does not open is its own error, prefixed with the alias."""
    if attach is None:
        return {}
    if not isinstance(attach, Mapping):
        raise InvalidParameterError(f"attach must map aliases to stores, e.g. {{'b': store}}, got "
                                    f"{type(attach).__name__}")
    out: dict[str, Store] = {}
    seen: dict[str, str] = {}
    for alias, other in attach.items():
        check_alias(alias)
        if alias.lower() in seen:
            raise InvalidParameterError(f"attach aliases {seen[alias.lower()]!r} and {alias!r} are the same name "
                                        "to SQL (identifiers ignore case)")
        seen[alias.lower()] = alias
        if isinstance(other, Store):
            out[alias] = other
            continue
        if not isinstance(other, (str, os.PathLike)):
            raise InvalidParameterError(f"attach {alias!r}: expected a store or a store path, got "
                                        f"{type(other).__name__}")
        try:
            out[alias] = open_store(other)
        except ActstoreError as e:
            raise type(e)(f"attach {alias!r}: {e}") from None
    return out


def _open() -> duckdb.DuckDBPyConnection:
    return duckdb.connect(":memory:", config=dict(_CONFIG))  # type: ignore[arg-type]  # values are str/bool


def _parquet_dataset(paths: list[StorePath]) -> ds.Dataset:
    """The parts as one dataset; columns are unified by name across parts (a label that is all
    null in one part and typed in another). A remote store's parts are read through its own
    fsspec filesystem, wrapped for Arrow: DuckDB scans the dataset and opens nothing itself."""
    fs = arrow_filesystem(paths[0]) if isinstance(paths[0], RemotePath) else None
    files = [p.path if isinstance(p, RemotePath) else str(p) for p in paths]
    try:
        schema = pa.unify_schemas([pq.read_schema(f, filesystem=fs) for f in files], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        schema = None
    return ds.dataset(files, schema=schema, format="parquet", filesystem=fs)


def _buffer_dataset(data: bytes) -> ds.Dataset:
    """A dataset over checked Parquet bytes held in memory (scanned batch by batch, as often as
    a query needs; the file is never reopened)."""
    fmt = ds.ParquetFileFormat()
    fragment = fmt.make_fragment(pa.BufferReader(pa.py_buffer(data)))
    return ds.FileSystemDataset([fragment], fragment.physical_schema, fmt)


def _first_line(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return re.sub(r"^(Catalog|Binder|Parser|Conversion|Invalid Input|Permission) Error: ", "", first)


def _error(con: duckdb.DuckDBPyConnection, query: str, e: duckdb.Error,
           aliases: tuple[str, ...] = ()) -> QueryError:
    """One line: DuckDB's message, the views, and the columns of the views the query uses."""
    first = _first_line(e)
    if isinstance(e, duckdb.PermissionException) or "configuration has been locked" in first:
        return refused(f"access outside the store's views ({first})")
    if isinstance(e, duckdb.ParserException):
        return QueryError(f"SQL syntax error: {first}")
    rows = con.execute("SELECT schema_name, view_name FROM duckdb_views() WHERE NOT internal").fetchall()
    bound = {(str(r[0]), str(r[1])) for r in rows}
    used = [("main", v) for v in mentioned_views(query, aliases)]
    used += [(a, v) for a, vs in attached_views(query, aliases).items() for v in vs]
    cols = "; ".join(f"{_qualified(s, v)}({', '.join(_columns(con, s, v))})" for s, v in used if (s, v) in bound)
    hint = f"available views: {', '.join(VIEWS)}"
    if aliases:
        hint += f"; attached: {', '.join(aliases)} (views as {aliases[0]}.examples, {aliases[0]}.dla, ...)"
    hint += f"; columns: {cols}" if cols else ""
    missing = re.search(r"with name (\S+) does not exist", first)
    if isinstance(e, duckdb.CatalogException) and missing:  # our own hint: DuckDB's may name a system table
        close = difflib.get_close_matches(missing[1].strip('"').lower(), VIEWS, n=1)
        first = first + (f" Did you mean {close[0]!r}?" if close else "")
    if isinstance(e, (duckdb.CatalogException, duckdb.BinderException)):  # unknown view / column
        return QueryError(f"{first}; {hint}")
    return QueryError(f"{first} ({hint})")


def _qualified(schema: str, view: str) -> str:
    return view if schema == "main" else f"{schema}.{view}"


def _columns(con: duckdb.DuckDBPyConnection, schema: str, view: str) -> list[str]:
    try:
        return [r[0] for r in con.execute(f'DESCRIBE "{schema}"."{view}"').fetchall()]
    except duckdb.Error:
        return []
