"""`actstore dla`, `actstore logit-lens`, `actstore circuit` through the command line entry point."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from no_counter import no_counter_task
from test_sql import csv_out, one_line_error, tiny_addition_store

import actstore
from actstore.cli import main
from actstore.query import circuit_matrix, ov_circuit


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    return tiny_addition_store(tmp_path_factory.mktemp("cli-dla") / "store")


def test_dla_sums_to_the_stored_logits(capsys, store_path):
    table = csv_out(capsys, ["dla", str(store_path), "--level", "neuron", "--format", "csv"])
    store = actstore.open_store(store_path)
    n_comp = 2 + 2 * (2 + 1 + 32 + 1)  # embed, pos_embed; per layer 2 heads, attn_bias, 32 neurons, mlp_bias
    assert table.height == 24 * store.n_answers * n_comp
    b_u = store.param("unembed.b_U")
    sums = table.group_by("example_id", "answer_idx").agg(pl.col("value").sum()).sort("example_id", "answer_idx")
    out = store.outputs.sort("example_id", "answer_idx")
    want = out["correct_logit"].to_numpy() - b_u[out["correct_token"].to_numpy()]
    np.testing.assert_allclose(sums["value"], want, rtol=1e-5, atol=1e-4)


def test_dla_mean_and_cache_reuse(capsys, store_path):
    mean = csv_out(capsys, ["dla", str(store_path), "--mean", "--format", "csv"])
    assert mean.columns == ["target", "answer_idx", "component", "layer", "head", "mean", "std", "n", "ci_low",
                            "ci_high"]
    assert mean["n"].unique().to_list() == [24]
    assert mean.height == 4 * (2 + 2 * 4)  # 4 answers x (embed, pos_embed, per layer 2 heads + bias + mlp)
    cached = sorted(p.name.split("-n=")[0] for p in (store_path / "derived").glob("dla-*.parquet"))
    assert "dla-level=head-target=correct" in cached


def test_dla_errors(capsys, store_path, tmp_path):
    with no_counter_task() as task:
        bare = tiny_addition_store(tmp_path / "bare", task=task)
    one_line_error(capsys, ["dla", str(bare), "--target", "diff"], "needs counterfactual tokens", task)
    one_line_error(capsys, ["dla", str(store_path), "--level", "block"], "invalid choice: 'block'")  # argparse


def test_logit_lens(capsys, store_path):
    lens = csv_out(capsys, ["logit-lens", str(store_path), "--format", "csv"])
    assert lens.columns == ["example_id", "answer_idx", "answer_pos", "target", "layer", "stage", "value"]
    assert lens.height == 24 * 4 * 5  # pre0, mid0, pre1, mid1, post1
    mean = csv_out(capsys, ["logit-lens", str(store_path), "--ln", "recompute", "--mean", "--format", "csv"])
    assert mean.height == 4 * 5 and mean["n"].unique().to_list() == [24]


def test_circuits(capsys, store_path):
    assert main(["circuit", str(store_path), "--kind", "ov", "--layer", "1", "--head", "0", "--tokens", "0,1,10",
                 "--format", "json"]) == 0
    ov = pl.read_ndjson(io.BytesIO(capsys.readouterr().out.encode()))
    assert ov.columns == ["token", "output", "token_str", "output_str", "value"]
    assert ov.height == 9 and ov.filter(pl.col("token") == 10)["token_str"].unique().to_list() == ["+"]
    store = actstore.open_store(store_path)
    want = circuit_matrix(ov_circuit(store, 1, 0))[np.ix_([0, 1, 10], [0, 1, 10])].ravel()
    np.testing.assert_allclose(ov["value"], want, rtol=1e-9)
    qk = csv_out(capsys, ["circuit", str(store_path), "--kind", "qk", "--layer", "0", "--head", "1", "--over",
                          "positions", "--format", "csv"])
    assert qk.height == 16 * 16 and qk.columns == ["query", "key", "value"]
    comp = csv_out(capsys, ["circuit", str(store_path), "--kind", "composition", "--mode", "V", "--format", "csv"])
    assert comp.height == 4 and set(comp["kind"]) == {"V"}
    assert main(["circuit", str(store_path), "--kind", "virtual-ov", "--layer", "0", "--head", "0",
                 "--to", "1", "1", "--format", "json"]) == 0
    virt = pl.read_ndjson(io.BytesIO(capsys.readouterr().out.encode()))
    assert virt.height == 12 * 12
    one_line_error(capsys, ["circuit", str(store_path), "--kind", "ov"], "needs --layer and --head")
    one_line_error(capsys, ["circuit", str(store_path), "--kind", "virtual-ov", "--layer", "0", "--head", "0"],
                   "needs --to LAYER HEAD")
    one_line_error(capsys, ["circuit", str(store_path), "--layer", "0", "--head", "0", "--tokens", "1,x"],
                   "--tokens expects comma-separated integers")
    one_line_error(capsys, ["circuit", str(store_path), "--layer", "5", "--head", "0"],
                   "layer must be an integer in [0, 2)")
