"""`actstore probe`, `actstore pca` and `actstore chart pca` through the command line: the API's tables,
charts written, bad input one line and exit 2."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from test_sql import csv_out, one_line_error, tiny_addition_store

import actstore
from actstore.cli import main
from actstore.query.pca import pca
from actstore.query.probes import probe


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    return tiny_addition_store(tmp_path_factory.mktemp("cli-probe") / "store")  # default hooks: z, no residual


def test_probe_defaults_to_every_z_at_the_first_answer(capsys, store_path):
    got = csv_out(capsys, ["probe", str(store_path), "--label", "carry_0", "--format", "csv"])
    want = probe(actstore.open_store(store_path), "carry_0")
    assert got.columns == want.columns
    assert got["hook"].to_list() == ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]
    assert got["pos"].to_list() == ["answer:0"] * 2 and got["n"].to_list() == [24, 24]
    for col in ("train_acc", "test_acc", "baseline", "shrinkage"):
        np.testing.assert_allclose(got[col], want[col], rtol=1e-12)


def test_probe_options_and_chart(capsys, store_path, tmp_path):
    chart = tmp_path / "acc.html"
    assert main(["probe", str(store_path), "--label", "carry_0,carry_1", "--label", "sum", "--bins", "2",
                 "--hooks", "blocks.1.attn.hook_z", "--pos", "=,-1,answer:2", "--test-fraction", "0.3", "--seed", "4",
                 "--shrinkage", "0.2", "--where", "carry_2=false", "--chart", str(chart), "--format", "csv"]) == 0
    captured = capsys.readouterr()
    got = pl.read_csv(io.StringIO(captured.out))
    want = probe(actstore.open_store(store_path), ["carry_0", "carry_1", "sum"], hooks="blocks.1.attn.hook_z",
                 pos=["=", -1, "answer:2"], test_fraction=0.3, seed=4, shrinkage=0.2, bins=2,
                 where={"carry_2": [False]})
    assert got.height == 9 and got["pos"].to_list() == [p for p in ["=", "-1", "answer:2"] for _ in range(3)]
    assert got["label"].to_list() == ["carry_0", "carry_1", "sum"] * 3
    # a null test_acc (no test example kept by --where at that position) must be null on both sides
    np.testing.assert_allclose(got["test_acc"].cast(pl.Float64).fill_null(np.nan).to_numpy(),
                               want["test_acc"].cast(pl.Float64).fill_null(np.nan).to_numpy(), rtol=1e-12)
    n_kept = int((~actstore.open_store(store_path).examples["carry_2"]).sum())
    assert got["n"].unique().to_list() == [n_kept]
    assert "vegaEmbed" in chart.read_text() and "wrote probe chart" in captured.err


def test_pca_scores_variance_and_chart(capsys, store_path, tmp_path):
    store = actstore.open_store(store_path)
    want = pca(store, "blocks.1.attn.hook_z", "=", k=3, color=["carry_0", "a"])
    out = tmp_path / "pca.svg"
    assert main(["pca", str(store_path), "--hook", "blocks.1.attn.hook_z", "--pos", "=", "--components", "3",
                 "--color", "carry_0,a", "--chart", str(out), "--format", "csv"]) == 0
    captured = capsys.readouterr()
    got = pl.read_csv(io.StringIO(captured.out))
    assert got.columns == ["example_id", "pc1", "pc2", "pc3", "carry_0", "a"]
    np.testing.assert_allclose(got.select("pc1", "pc2", "pc3").to_numpy(),
                               want.scores.select("pc1", "pc2", "pc3").to_numpy(), rtol=1e-9, atol=1e-12)
    ratio = want.variance["ratio"].to_list()
    assert f"24 examples; variance explained: pc1 {ratio[0]:.1%}" in captured.err
    assert out.read_text().lstrip().startswith("<svg")
    var = csv_out(capsys, ["pca", str(store_path), "--hook", "blocks.1.attn.hook_z", "--pos", "=", "--components",
                           "3", "--variance", "--format", "csv"])
    assert var.columns == ["component", "variance", "ratio", "cumulative"]
    np.testing.assert_allclose(var["variance"], want.variance["variance"], rtol=1e-9)


def test_chart_kind_pca(capsys, store_path, tmp_path):
    out = tmp_path / "kind.html"
    assert main(["chart", "pca", str(store_path), "-o", str(out), "--layer", "0", "--pos", "c1",
                 "--color", "carry_1"]) == 0
    assert "wrote pca chart" in capsys.readouterr().err
    assert "blocks.0.attn.hook_z at pos c1" in out.read_text()
    from actstore.charts.standard import make_chart

    rows = make_chart(actstore.open_store(store_path), "pca", layer=0, pos="c1", color="carry_1").to_dict()
    data = next(iter(rows["datasets"].values()))
    want = pca(actstore.open_store(store_path), "blocks.0.attn.hook_z", "c1", color="carry_1").scores
    np.testing.assert_allclose([r["pc1"] for r in data], want["pc1"].to_numpy(), rtol=1e-9, atol=1e-12)
    assert [r["carry_1"] for r in data] == want["carry_1"].to_list()


@pytest.mark.parametrize("argv, fragments", [
    (["probe", "{store}", "--label", "nope"], ["'nope' is not a label"]),
    (["probe", "{store}", "--label", "sum", "--max-classes", "10"], ["distinct values", "bins"]),
    (["probe", "{store}", "--label", "carry_0", "--pos", "99"], ["outside the store's 14 positions"]),
    (["probe", "{store}", "--label", "carry_0", "--pos", ","], ["--pos is empty"]),
    (["probe", "{store}", "--label", "carry_0", "--hooks", "resid_post"], ["'resid_post' is not stored"]),
    (["probe", "{store}", "--label", "carry_0", "--test-fraction", "1"], ["strictly between 0 and 1"]),
    (["probe", "{store}", "--label", "carry_0", "--shrinkage", "-1"], ["shrinkage must be"]),
    (["probe", "{store}", "--label", "carry_0", "--bins", "1"], ["--bins", ">= 2"]),
    (["probe", "{store}", "--label", "carry_0", "--chart", "{tmp}/a.pdf"], ["extension must be one of"]),
    (["probe", "{store}"], ["--label"]),
    (["probe", "{tmp}/nostore", "--label", "carry_0"], ["nostore"]),
    (["pca", "{store}", "--pos", "=,-1"], ["pca reads one position"]),
    (["pca", "{store}", "--hook", "z"], ["pca reads one hook; 'z' names 2"]),
    (["pca", "{store}", "--components", "500"], ["components in 1..16"]),
    (["pca", "{store}", "--components", "1", "--chart", "{tmp}/p.html"], ["needs --components 2"]),
    (["pca", "{store}", "--color", "nope"], ["'nope' is not a label"]),
    (["chart", "pca", "{store}", "-o", "{tmp}/p.html", "--layer", "7"], ["no residual hook or hook_z of layer 7"]),
])
def test_errors_are_one_line(capsys, store_path, tmp_path, argv, fragments):
    argv = [a.format(store=store_path, tmp=tmp_path) for a in argv]
    one_line_error(capsys, argv, *fragments)
    assert not list(tmp_path.iterdir())  # nothing written
