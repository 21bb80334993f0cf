"""A process that runs one DLA imports only what it uses: no torch, DuckDB, pyarrow.dataset (pandas),
tqdm or Dask (each costs 0.2-0.7 s of a cold query; see docs/benchmarks-log.md), and SQL still works."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from actstore.lazy import lazy_module

HEAVY = ("torch", "transformer_lens", "duckdb", "pyarrow.dataset", "pandas", "tqdm", "dask", "altair")


def _imported_after(code: str) -> list[str]:
    probe = f"{code}\nimport sys, json\nprint(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("code", ["import actstore; from actstore.query import dla",
                                  "import actstore.cli; actstore.cli.build_parser()"])
def test_the_dla_path_imports_no_heavy_module(code: str) -> None:
    assert _imported_after(code) == []


def test_sql_imports_duckdb_when_it_runs() -> None:
    code = ("import importlib, sys; q = importlib.import_module('actstore.query.sql'); "
            "assert 'duckdb' not in sys.modules; assert q._open().execute('select 41 + 1').fetchall() == [(42,)]")
    assert "duckdb" in _imported_after(code)


def test_lazy_module_imports_on_first_attribute() -> None:
    mod = lazy_module("json")
    assert "imported" not in repr(mod)
    assert mod.dumps([1]) == "[1]"
    assert "(imported)" in repr(mod)
    with pytest.raises(ModuleNotFoundError):
        lazy_module("actstore_no_such_module").anything
