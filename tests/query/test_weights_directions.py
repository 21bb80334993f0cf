"""Directions out (issue 12 item 3): seed 002's linear fit of a LayerNorm, the 'unbalanced' direction
before the final LayerNorm and before head 2.0, saved in the store, read back by name, checked.

The reference fit is numpy least squares on TransformerLens's own cache (resid -> hook_normalized),
as the seed's `get_ln_fit` does with sklearn (inputs centred over d_model: LayerNorm ignores the mean).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers import csv_out
from query_models import run_batch, task_data, tiny_model

import actstore
from actstore.cli import main
from actstore.errors import InvalidParameterError, StoreCorruptError
from actstore.query.directions import parse_direction
from actstore.query.ln_fit import fit_layernorm, through_ov, unembed_direction
from actstore.query.neurons import neurons
from actstore.query.residual import ResidualPlan
from actstore.store.directions import direction_problems, load_direction, save_direction


@pytest.fixture(scope="module")
def batch():
    return run_batch(tiny_model("bidir"), task_data("bidir", 40, 3))  # the examples of tiny_store('bidir')


def reference_fit(batch, x_hook: str, y_hook: str, pos: int | None):
    x, y = batch.cache[x_hook].double().numpy(), batch.cache[y_hook].double().numpy()
    if pos is None:
        real = np.arange(x.shape[1])[None] < batch.data.lengths[:, None]
        x, y = x[real], y[real]
    else:
        x, y = x[:, pos], y[:, pos]
    a = np.c_[x - x.mean(1, keepdims=True), np.ones(len(x))]
    sol = np.linalg.lstsq(a, y, rcond=None)[0]
    r2 = np.mean(1 - ((y - a @ sol) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0))
    return sol[:-1].T, sol[-1], r2, len(x)


@pytest.mark.parametrize("ln, layer, pos, x_hook, y_hook", [
    ("ln_final", None, 0, "blocks.2.hook_resid_post", "ln_final.hook_normalized"),  # seed: final LN at pos 0
    ("ln1", 2, 1, "blocks.2.hook_resid_pre", "blocks.2.ln1.hook_normalized"),  # seed: head 2.0's ln1 at pos 1
    ("ln1", 0, None, "blocks.0.hook_resid_pre", "blocks.0.ln1.hook_normalized"),  # seed: every position
    ("ln2", 1, None, "blocks.1.hook_resid_mid", "blocks.1.ln2.hook_normalized"),
])
def test_layernorm_fit_equals_least_squares_on_the_cache(tiny_store, batch, ln, layer, pos, x_hook, y_hook):
    store = tiny_store("bidir")
    coef, intercept, r2, n = reference_fit(batch, x_hook, y_hook, pos)
    for use_stored in (True, False):  # the store holds resid_post: read it, or rebuild it from components
        fit = fit_layernorm(store, ln, layer, pos, use_stored=use_stored)
        assert fit.n == n and fit.coef.shape == (24, 24)
        np.testing.assert_allclose(fit.coef, coef, atol=2e-5)
        np.testing.assert_allclose(fit.intercept, intercept, atol=2e-5)
        assert abs(fit.r2 - r2) < 1e-6 and 0.9 < fit.r2 < 1


def test_rebuilt_stream_equals_the_cache(tiny_store, batch):
    store = tiny_store("bidir")
    plan = ResidualPlan.build(store, "ln1", 2, use_stored=False)
    assert plan.stored is None and "blocks.1.attn.hook_z" in plan.full_hooks
    from actstore.query.chunks import stream
    from actstore.query.readout import Weights

    chunk = next(stream(store, [], list(plan.full_hooks), tokens=True))
    e, p = np.nonzero(np.arange(store.manifest.width)[None] < chunk.lengths[:, None])
    got = plan.rows(Weights.from_store(store), chunk, e, p)
    want = batch.cache["blocks.2.hook_resid_pre"].double().numpy()[chunk.example_id[e], p]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_unbalanced_directions_seed_002(tiny_store, batch):
    store = tiny_store("bidir")
    model = batch.model
    post = unembed_direction(store, 0, 1)  # W_U[:, 0] - W_U[:, 1]: unbalanced minus balanced
    np.testing.assert_allclose(post, (model.W_U[:, 0] - model.W_U[:, 1]).detach().double().numpy(), atol=1e-7)
    coef_final = reference_fit(batch, "blocks.2.hook_resid_post", "ln_final.hook_normalized", 0)[0]
    pre_final = coef_final.T @ post  # get_pre_final_ln_dir
    coef_ln1 = reference_fit(batch, "blocks.2.hook_resid_pre", "blocks.2.ln1.hook_normalized", 1)[0]
    w_ov = model.W_V[2, 0].detach().double().numpy() @ model.W_O[2, 0].detach().double().numpy()
    pre_20 = coef_ln1.T @ w_ov @ pre_final  # get_pre_20_dir
    got_final = fit_layernorm(store, "ln_final", pos=0).pull_back(post)
    np.testing.assert_allclose(got_final, pre_final, atol=1e-4 * np.abs(pre_final).max())
    got_20, fit = through_ov(store, got_final, "2.0", pos=1)
    assert fit is not None and fit.ln == "ln1" and fit.layer == 2
    np.testing.assert_allclose(got_20, pre_20, atol=1e-4 * np.abs(pre_20).max())
    raw, none = through_ov(store, got_final, (2, 0), ln="none")
    assert none is None
    np.testing.assert_allclose(raw, w_ov @ got_final, rtol=1e-6, atol=1e-9)


def test_direction_commands_save_and_every_query_reads_by_name(capsys, tiny_store, tmp_path):
    shutil.copytree(tiny_store("bidir").path, tmp_path / "s")  # a private copy: this test writes directions/
    store = actstore.open_store(tmp_path / "s")
    path = str(store.path)
    row = csv_out(capsys, ["direction", "fit-ln", path, "--name", "unbalanced", "--token", "0", "--minus", "1",
                           "--pos", "0"])
    assert row["name"].to_list() == ["unbalanced"] and row["kind"][0] == "fit-ln" and row["n"][0] == 40
    saved = load_direction(path, "unbalanced")
    want = fit_layernorm(store, "ln_final", pos=0).pull_back(unembed_direction(store, 0, 1))
    np.testing.assert_array_equal(saved.vector, want)  # bit for bit through JSON
    assert saved.info["r2"] == pytest.approx(row["r2"][0]) and saved.info["token"] == 0 and not saved.final_ln
    row = csv_out(capsys, ["direction", "through-ov", path, "--name", "pre20", "--head", "2.0", "--from",
                           "unbalanced", "--pos", "1"])
    assert main(["direction", "through-ov", path, "--name", "pre20", "--head", "2.0", "--from", "unbalanced"]) == 2
    assert "already has a direction named 'pre20'" in capsys.readouterr().err
    csv_out(capsys, ["direction", "through-ov", path, "--name", "pre20", "--head", "2.0", "--from", "unbalanced",
                     "--pos", "1", "--force"])
    np.testing.assert_allclose(load_direction(path, "pre20").vector, through_ov(store, want, "2.0", pos=1)[0],
                               rtol=1e-12)
    # read by name by the queries: parse_direction(store=), neurons (an array today), cosines
    d = parse_direction("name:pre20", 24, store=store)
    assert d.kind == "vector" and d.name == "pre20" and not d.final_ln
    assert parse_direction("pre20", 24, store=store).name == "pre20"
    got = neurons(store, 1, direction=load_direction(path, "pre20").vector, pos=1, top_k=3)
    assert got.height == 3 * 24
    cos = csv_out(capsys, ["weights", "cosine", path, "dir:pre20", "W_in:1"])
    w_in = store.param("blocks.1.mlp.W_in").astype(np.float64)
    v = load_direction(path, "pre20").vector
    np.testing.assert_allclose(cos["cosine"], v @ w_in / np.linalg.norm(v) / np.linalg.norm(w_in, axis=0), rtol=1e-9)
    # save a singular vector, list, export as a table and as .npy, remove
    csv_out(capsys, ["direction", "save", path, "--name", "ov20top", "--svd", "OV:2.0"])
    listed = csv_out(capsys, ["direction", "list", path])
    assert set(listed["name"]) >= {"unbalanced", "pre20", "ov20top"}
    table = csv_out(capsys, ["direction", "export", path, "pre20"])
    assert table.columns == ["name", "dim", "value"] and table.height == 24
    assert main(["direction", "export", path, "pre20", "-o", str(tmp_path / "pre20.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "pre20.npy"), v)
    assert main(["direction", "remove", path, "ov20top"]) == 0
    capsys.readouterr()


def test_saved_directions_are_checked(tmp_path, capsys, tiny_store):
    root = tmp_path / "s"
    root.mkdir()
    save_direction(root, "d", np.arange(4.0))
    with pytest.raises(InvalidParameterError, match="already has a direction named 'd'"):
        save_direction(root, "d", np.ones(4))
    with pytest.raises(InvalidParameterError, match="reserved"):
        save_direction(root, "diff", np.ones(4))
    with pytest.raises(InvalidParameterError, match="no direction named 'e' \\(saved: d\\)"):
        load_direction(root, "e")
    f = root / "directions" / "d.json"
    assert json.loads(f.read_text())["vector"] == [0.0, 1.0, 2.0, 3.0]
    f.write_bytes(f.read_bytes().replace(b"1.0", b"1.5", 1))  # same size, another value
    with pytest.raises(StoreCorruptError, match="sha256 differs from its digest record"):
        load_direction(root, "d")
    assert direction_problems(root) == ["direction directions/d.json: sha256 differs from its digest record"]
    path = str(tiny_store("bidir").path)
    for argv, fragment in [
        (["direction", "fit-ln", path, "--name", "x"], "fit-ln needs the direction"),
        (["direction", "fit-ln", path, "--name", "x", "--token", "5"], "not an output token id in [0, 2)"),
        (["direction", "fit-ln", path, "--name", "x", "--token", "0", "--ln", "ln1"], "ln1 needs a layer"),
        (["direction", "through-ov", path, "--name", "x", "--head", "2.0", "--from", "answer"], "per-example"),
        (["direction", "save", path, "--name", "x", "--svd", "W_U"], "not d_model"),
        (["direction", "save", path, "--name", "9x", "--token", "0"], "direction name '9x'"),
        (["direction", "export", path, "nope"], "no direction named 'nope'"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.startswith("actstore direction: error: ") and fragment in err, err
