"""ingest(twins=False) / --no-twins: one forward pass per batch instead of two for a task with corrupted twins,
the same activations and clean outputs, null corrupted_* columns, recorded in the manifest, and a resume or
growth that must match it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import tree_bytes
from tiny_models import tiny_model

import actstore
from actstore.cli import main
from actstore.errors import InvalidParameterError, StoreExistsError, StoreFormatError
from actstore.store.commits import commit_path
from actstore.store.manifest import Manifest
from actstore.store.verify import verify

KW = dict(chunk=16, batch=8, quiet=True, hooks=["resid_pre"])
TWIN_COLUMNS = ["corrupted_correct_logit", "corrupted_counter_logit", "corrupted_logit_diff", "corrupted_loss"]


@pytest.fixture(scope="module")
def model():
    return tiny_model("addition")


@pytest.fixture(scope="module")
def pair(model, tmp_path_factory) -> tuple:
    """(with twins, without) over the same 40 addition examples."""
    root = tmp_path_factory.mktemp("twins")
    on = actstore.ingest("addition", model, 40, 1, root / "on", **KW)
    off = actstore.ingest("addition", model, 40, 1, root / "off", twins=False, **KW)
    return on, off


def stored_manifest(path: Path) -> dict:
    return json.loads((path / "zarr.json").read_text())["attributes"]["actstore"]


def test_same_activations_and_clean_outputs_null_twin_columns(pair):
    on, off = pair
    for name in on.hooks:
        assert np.array_equal(off.read(name), on.read(name)), name
    a, b = on.outputs, off.outputs
    assert a.height == b.height == 40 * on.n_answers
    assert a.drop(TWIN_COLUMNS).equals(b.drop(TWIN_COLUMNS))
    assert a["corrupted_correct_logit"].null_count() == 0  # with twins the baselines are there
    assert all(b[c].null_count() == b.height for c in TWIN_COLUMNS)
    assert off.topk.equals(on.topk)


def test_manifest_records_it_and_old_stores_read_as_twins(pair):
    on, off = pair
    assert on.manifest.twins is True and off.manifest.twins is False
    assert "twins" not in stored_manifest(on.path)  # as every store before the option: its digest is unchanged
    assert stored_manifest(off.path)["twins"] is False
    assert Manifest.from_dict(stored_manifest(on.path)).twins is True
    assert verify(off.path).passed


def test_one_forward_pass_per_batch_without_twins(model, tmp_path):
    calls = []
    handle = model.blocks[0].register_forward_hook(lambda *_: calls.append(1))
    try:
        actstore.ingest("addition", model, 32, 0, tmp_path / "on", **KW)
        with_twins = len(calls)
        calls.clear()
        actstore.ingest("addition", model, 32, 0, tmp_path / "off", twins=False, **KW)
    finally:
        handle.remove()
    # no probe pass (the shapes of resid_pre come from the config; the first batch checks them): one per batch
    assert len(calls) == 32 // 8
    assert with_twins == 2 * (32 // 8)  # the clean and the twin pass per batch


def test_resume_is_byte_identical(model, tmp_path):
    ref = actstore.ingest("addition", model, 40, 0, tmp_path / "ref", twins=False, **KW).path
    out = tmp_path / "crashed"
    shutil.copytree(ref, out)
    (out / "_commits/complete.json").unlink()
    commit_path(out, 2).unlink()
    assert actstore.ingest("addition", model, 40, 0, out, twins=False, **KW).n_examples == 40
    assert tree_bytes(out) == tree_bytes(ref)


@pytest.mark.parametrize("first", [True, False])
def test_resume_and_growth_refuse_a_mismatch(model, tmp_path, first):
    out = tmp_path / "s"
    actstore.ingest("addition", model, 16, 0, out, twins=first, **KW)
    before = tree_bytes(out)
    for n in (16, 32):  # a resume, then a growth
        with pytest.raises(StoreExistsError, match="twins"):
            actstore.ingest("addition", model, n, 0, out, twins=not first, **KW)
    assert tree_bytes(out) == before


def test_without_outputs_twins_is_moot(model, tmp_path):
    out = tmp_path / "s"
    store = actstore.ingest("addition", model, 16, 0, out, outputs=False, twins=False, **KW)
    assert store.manifest.twins is True  # no outputs: no twin pass to skip, the same store either way
    assert actstore.ingest("addition", model, 16, 0, out, outputs=False, **KW).n_examples == 16


def test_bad_values_are_refused(model, tmp_path, pair):
    with pytest.raises(InvalidParameterError, match="twins must be True or False"):
        actstore.ingest("addition", model, 8, 0, tmp_path / "s", twins="no", **KW)  # type: ignore[arg-type]
    assert not (tmp_path / "s").exists()
    d = stored_manifest(pair[1].path)
    with pytest.raises(StoreFormatError, match="twins must be true or false"):
        Manifest.from_dict({**d, "twins": "false"})
    with pytest.raises(StoreFormatError, match="keeps no outputs"):
        Manifest.from_dict({**d, "outputs": False, "top_k": 0})


def test_cli_no_twins(tmp_path):
    out = tmp_path / "s"
    assert main(["ingest", "--task", "addition", "--model", "zoo:addition", "--n", "16", "--out", str(out),
                 "--hooks", "blocks.0.hook_resid_pre", "--no-twins", "--quiet"]) == 0
    store = actstore.open_store(out)
    assert store.manifest.twins is False
    assert store.outputs["corrupted_loss"].null_count() == 16 * store.n_answers
