"""A saved direction is checked by verify (it cannot be recomputed) and usable by name in neurons."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

import actstore
from actstore.cli import main
from actstore.query import neurons
from actstore.store.verify import verify


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return actstore.ingest("brackets", "zoo:brackets", 16, 0, tmp_path_factory.mktemp("dirs") / "s", quiet=True)


def test_a_damaged_saved_direction_fails_verify_and_a_named_one_reads_as_its_vector(store, tmp_path, capsys):
    d_model = store.arch.d_model
    vec = np.linspace(-1, 1, d_model).astype(np.float32)
    np.save(tmp_path / "v.npy", vec)
    assert main(["direction", "save", str(store.path), "--name", "ramp", "--vector", str(tmp_path / "v.npy")]) == 0
    capsys.readouterr()
    assert verify(store.path).passed
    by_name = neurons(actstore.open_store(store.path), layers=0, direction="name:ramp")
    by_file = neurons(actstore.open_store(store.path), layers=0, direction=str(tmp_path / "v.npy"))
    assert by_name.height > 0 and by_name.equals(by_file)
    saved = next((store.path / "directions").glob("ramp*.json"))
    saved.write_text(saved.read_text().replace("ramp", "ramq", 1))
    report = verify(store.path)
    assert not report.passed and any("ramp" in p for p in report.problems), report.problems
    assert isinstance(by_name, pl.DataFrame)
