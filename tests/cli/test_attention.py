"""`actstore attention` through the command line entry point: the same tables as the API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from test_sql import csv_out, one_line_error, tiny_addition_store

import actstore
from actstore.cli import main
from actstore.query import attention


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    return tiny_addition_store(tmp_path_factory.mktemp("cli-attention") / "store")


def test_raw_rows_as_csv_and_parquet(capsys, store_path, tmp_path):
    store = actstore.open_store(store_path)
    want = attention(store, layers=[1], heads=[0], query="=")
    got = csv_out(capsys, ["attention", str(store_path), "--layers", "1", "--heads", "0", "--query", "=",
                           "--format", "csv"])
    assert got.columns == want.columns and got.height == want.height == 24 * 10  # '=' at 9 sees keys 0..9
    assert got["k_role"].to_list() == want["k_role"].to_list()
    np.testing.assert_allclose(got["value"], want["value"], rtol=1e-6)
    out = tmp_path / "a.parquet"
    assert main(["attention", str(store_path), "--query", "-1", "--key", "0,1", "-o", str(out)]) == 0
    assert f"wrote {2 * 2 * 24 * 2} rows" in capsys.readouterr().err  # 2 layers x 2 heads x 24 examples x 2 keys
    assert pl.read_parquet(out).equals(attention(store, query=-1, key=[0, 1]))


def test_grouped_by_role_and_label_with_where(capsys, store_path):
    store = actstore.open_store(store_path)
    argv = ["attention", str(store_path), "--layers", "1", "--query", "=", "--key", "a0,a1,a2,a3",
            "--group-by", "k_role,carry_2", "--where", "any_carry=true", "--format", "csv"]
    got = csv_out(capsys, argv)
    want = attention(store, layers=1, query="=", key=["a0", "a1", "a2", "a3"], group_by=["k_role", "carry_2"],
                     where={"any_carry": True})
    assert got.columns == ["layer", "head", "k_role", "carry_2", "mean", "std", "n", "ci_low", "ci_high", "entropy"]
    assert got.select("head", "k_role", "carry_2", "n").equals(want.select("head", "k_role", "carry_2", "n"))
    np.testing.assert_allclose(got["mean"], want["mean"], rtol=1e-9)
    assert got["n"].sum() == 2 * 4 * store.examples["any_carry"].sum()
    mean = csv_out(capsys, ["attention", str(store_path), "--query", "=", "--key", "=", "--aggregate", "mean",
                            "--format", "csv"])
    assert mean.height == 4 and mean["n"].to_list() == [24] * 4


def test_errors_are_one_line(capsys, store_path):
    one_line_error(capsys, ["attention", str(store_path), "--query", "END"], "no token has role 'END'", "a0")
    one_line_error(capsys, ["attention", str(store_path), "--layers", "one"], "--layers expects comma-separated")
    one_line_error(capsys, ["attention", str(store_path), "--group-by", "carry"], "'carry' is not a label")
    one_line_error(capsys, ["attention", str(store_path / "nope")], "nope")


def test_streamed_outputs_and_limit(capsys, store_path, tmp_path):
    """Raw rows are written chunk by chunk (three chunks here): CSV and JSON files hold the whole
    table, --limit stops early, and an empty selection still writes a header."""
    store = actstore.open_store(store_path)
    want = attention(store, heads=[1], key="=")
    assert len(list(store.chunks())) == 3
    out = tmp_path / "a.csv"
    assert main(["attention", str(store_path), "--heads", "1", "--key", "=", "-o", str(out)]) == 0
    assert f"wrote {want.height} rows" in capsys.readouterr().err
    got = pl.read_csv(out, schema_overrides={"value": pl.Float32})
    assert got.drop("value").equals(want.drop("value"))
    np.testing.assert_allclose(got["value"], want["value"], rtol=1e-6)
    js = tmp_path / "a.json"
    assert main(["attention", str(store_path), "--heads", "1", "--key", "=", "-o", str(js)]) == 0
    assert pl.read_ndjson(js).height == want.height
    head = csv_out(capsys, ["attention", str(store_path), "--limit", "7", "--format", "csv"])
    assert head.height == 7 and head["example_id"].to_list() == [0] * 7
    empty = csv_out(capsys, ["attention", str(store_path), "--where", "sum=-1", "--format", "csv"])
    assert empty.height == 0 and empty.columns == want.columns
