"""ingest(outputs=False) / --no-outputs: the same activations as an ingest with outputs, no outputs, topk or
twin pass, forward passes that stop after the deepest stored hook, and stores that commit, verify, resume and
answer queries (outputs empty with their columns; DLA from meta/examples)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from helpers import tree_bytes
from tiny_models import tiny_model

import actstore
from actstore.cli import main
from actstore.errors import InvalidParameterError
from actstore.query import dla
from actstore.store.commits import commit_path
from actstore.store.parts import BASE_SCHEMAS
from actstore.store.verify import verify


@pytest.fixture(scope="module")
def model():
    return tiny_model("addition")


KW = dict(chunk=16, batch=8, quiet=True)


@pytest.fixture(scope="module")
def pair(model, tmp_path_factory) -> tuple:
    """(with outputs, without) over the same 40 examples, default hooks plus a residual stream hook."""
    root = tmp_path_factory.mktemp("pair")
    hooks = ["default", "blocks.1.hook_resid_pre"]
    on = actstore.ingest("addition", model, 40, 2, root / "on", hooks=hooks, dtype="float32", **KW)
    off = actstore.ingest("addition", model, 40, 2, root / "off", hooks=hooks, dtype="float32", outputs=False, **KW)
    return on, off


def test_values_equal_the_store_with_outputs(pair):
    on, off = pair
    assert off.hooks == on.hooks and off.n_examples == on.n_examples == 40
    for name in on.hooks:
        assert np.array_equal(off.read(name), on.read(name)), name
    assert off.examples.equals(on.examples) and off.tokens.equals(on.tokens)
    assert off.manifest.outputs is False and on.manifest.outputs is True
    assert off.manifest.top_k == 0 and on.manifest.top_k
    assert not (off.path / "meta/outputs").exists() and not (off.path / "meta/topk").exists()
    assert off.manifest.decomposition["status"] == on.manifest.decomposition["status"] == "ok"


def test_queries_on_a_store_without_outputs(pair):
    on, off = pair
    assert off.outputs.height == 0 and list(off.outputs.columns) == list(BASE_SCHEMAS["outputs"])
    assert off.topk.height == 0
    got = off.sql("SELECT count(*) AS n FROM outputs").pl()
    assert got["n"][0] == 0
    a = dla(on, level="head", target="correct").sort("example_id", "answer_idx", "component")
    b = dla(off, level="head", target="correct").sort("example_id", "answer_idx", "component")
    assert a.height > 0 and a.equals(b)  # answer tokens come from meta/examples


def test_verify_passes_and_skips_only_the_decomposition(pair):
    report = verify(pair[1].path)
    assert report.passed and report.problems == []
    assert report.decomposition["status"] == "skipped" and "no outputs" in report.decomposition["reason"]


def test_the_forward_pass_stops_after_the_deepest_stored_hook(model, tmp_path):
    calls = {"block1": 0, "unembed": 0}
    handles = [model.blocks[1].register_forward_hook(lambda *_: calls.__setitem__("block1", calls["block1"] + 1)),
               model.unembed.register_forward_hook(lambda *_: calls.__setitem__("unembed", calls["unembed"] + 1))]
    try:
        store = actstore.ingest("addition", model, 24, 0, tmp_path / "s", hooks=["blocks.1.hook_resid_pre"],
                                outputs=False, **KW)
        assert calls == {"block1": 0, "unembed": 0}  # block 1's resid_pre fires before block 1 runs
        actstore.ingest("addition", model, 24, 0, tmp_path / "with", hooks=["blocks.1.hook_resid_pre"], **KW)
        # with outputs every block runs; the logits are read at the answer positions only, without the unembed
        # module, which would unembed every position (actstore.ingest.forward.answer_pass)
        assert calls["block1"] > 0 and calls["unembed"] == 0
    finally:
        for h in handles:
            h.remove()
    assert store.manifest.decomposition["status"] == "skipped"  # the store lacks the hooks it needs
    assert "does not keep" in store.manifest.decomposition["reason"]


def test_resume_is_byte_identical(model, tmp_path):
    ref = actstore.ingest("addition", model, 40, 0, tmp_path / "ref", hooks=["resid_pre"], outputs=False, **KW).path
    out = tmp_path / "crashed"
    shutil.copytree(ref, out)
    (out / "_commits/complete.json").unlink()
    commit_path(out, 2).unlink()
    (out / "meta/examples/part-00002.parquet").unlink()
    assert actstore.open_store(out).n_examples == 32
    assert actstore.ingest("addition", model, 40, 0, out, hooks=["resid_pre"], outputs=False, **KW).n_examples == 40
    assert tree_bytes(out) == tree_bytes(ref)


def test_a_rerun_with_outputs_is_another_run(model, tmp_path):
    out = tmp_path / "s"
    actstore.ingest("addition", model, 16, 0, out, hooks=["resid_pre"], outputs=False, **KW)
    with pytest.raises(actstore.errors.StoreExistsError, match="outputs"):
        actstore.ingest("addition", model, 16, 0, out, hooks=["resid_pre"], **KW)


def test_top_k_needs_outputs(model, tmp_path):
    with pytest.raises(InvalidParameterError, match="needs the outputs"):
        actstore.ingest("addition", model, 8, 0, tmp_path / "s", outputs=False, top_k=3, **KW)
    assert not (tmp_path / "s").exists()


def test_cli_no_outputs(tmp_path, capsys, monkeypatch):
    out = tmp_path / "s"
    rc = main(["ingest", "--task", "list_update", "--model", "zoo:list_update", "--n", "16", "--out", str(out),
               "--hooks", "blocks.0.hook_resid_pre", "--no-outputs", "--quiet"])
    assert rc == 0
    assert actstore.open_store(out).manifest.outputs is False
    assert main(["ingest", "--task", "list_update", "--model", "zoo:list_update", "--n", "16", "--out",
                 str(tmp_path / "t"), "--no-outputs", "--top-k", "2", "--quiet"]) == 2
    assert "needs the outputs" in capsys.readouterr().err
