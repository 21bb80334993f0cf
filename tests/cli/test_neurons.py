"""`actstore neurons` through the command line entry point: the same tables as the API."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from no_counter import no_counter_task
from test_sql import csv_out, one_line_error, tiny_addition_store

import actstore
from actstore.cli import main
from actstore.query import neurons
from actstore.query.neuron_stats import neuron_correlation


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    return tiny_addition_store(tmp_path_factory.mktemp("cli-neurons") / "store")


def test_all_layers_by_default(capsys, store_path):
    store = actstore.open_store(store_path)
    got = csv_out(capsys, ["neurons", str(store_path), "--format", "csv"])
    want = pl.concat([neurons(store, 0), neurons(store, 1)])
    assert got.columns == want.columns and got.height == want.height == 2 * 24 * 4 * 32
    np.testing.assert_allclose(got["projection"], want["projection"], rtol=1e-6, atol=1e-9)
    assert got["layer"].unique().sort().to_list() == [0, 1]


def test_top_k_vector_and_through_head(capsys, store_path, tmp_path):
    store = actstore.open_store(store_path)
    v = np.random.default_rng(1).normal(size=16)
    np.save(tmp_path / "v.npy", v)
    got = csv_out(capsys, ["neurons", str(store_path), "--direction", str(tmp_path / "v.npy"),
                           "--through-head", "1.1", "--pos", "b2", "--answer", "1", "--top-k", "2",
                           "--format", "csv"])
    want = neurons(store, 0, direction=v, through_head=(1, 1), pos="b2", answer=1, top_k=2)
    assert got["layer"].unique().to_list() == [0]  # only layers before the head
    assert got.height == 32 * 2 and got["example_id"].to_list() == want["example_id"].to_list()
    np.testing.assert_allclose(got["projection"], want["projection"], rtol=1e-6, atol=1e-9)


def test_correlate(capsys, store_path):
    store = actstore.open_store(store_path)
    got = csv_out(capsys, ["neurons", str(store_path), "--layers", "1", "--correlate", "sum", "--value",
                           "projection", "--format", "csv"])
    want = neuron_correlation(store, 1, "sum", value="projection")
    assert got.columns == ["layer", "neuron", "r", "n"] and got["n"].unique().to_list() == [24 * 4]
    strength = got["r"].abs().fill_nan(-1).to_numpy()
    assert (np.diff(strength) <= 1e-12).all()  # strongest |r| first, undefined r last
    got = got.sort("neuron")
    np.testing.assert_allclose(got["r"].fill_nan(9), want["r"].fill_nan(9), rtol=1e-6)


def test_errors_are_one_line(capsys, store_path, tmp_path):
    with no_counter_task() as task:
        bare = tiny_addition_store(tmp_path / "bare", task=task)
    one_line_error(capsys, ["neurons", str(bare), "--direction", "diff"], "needs counterfactual tokens")
    one_line_error(capsys, ["neurons", str(store_path), "--through-head", "x"], "expected LAYER.HEAD")
    one_line_error(capsys, ["neurons", str(store_path), "--top-k", "2", "--correlate", "sum"], "do not combine")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        model = HookedTransformer(HookedTransformerConfig(n_layers=1, n_heads=1, d_model=8, d_head=8, n_ctx=16,
                                                          d_vocab=12, attn_only=True, seed=0, device="cpu"))
    attn_only = actstore.ingest("addition", model, 4, 0, tmp_path / "attn", quiet=True, model_spec="tiny")
    one_line_error(capsys, ["neurons", str(attn_only.path)], "attention-only", "blocks.0.attn.hook_z")


def test_streamed_parquet_equals_the_api(capsys, store_path, tmp_path):
    store = actstore.open_store(store_path)
    out = tmp_path / "n.parquet"
    assert main(["neurons", str(store_path), "--pos", "=,c0", "--answer", "3", "-o", str(out)]) == 0
    want = pl.concat([neurons(store, 0, pos=["=", "c0"], answer=3), neurons(store, 1, pos=["=", "c0"], answer=3)])
    assert f"wrote {want.height} rows" in capsys.readouterr().err
    assert pl.read_parquet(out).equals(want)
    one_line_error(capsys, ["neurons", str(store_path), "--layers", "0,7"], "7 is not a layer in [0, 2)")
