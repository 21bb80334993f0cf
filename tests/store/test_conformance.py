"""The conformance suite (conformance.py) on every kind of store actstore writes."""

from __future__ import annotations

from pathlib import Path

import pytest
from conformance import StoreConformance
from synthetic_store import write_synthetic

import actstore
from actstore.errors import ModelUnavailableError


class TestSyntheticStore(StoreConformance):
    """Written through the writer with known values and no model (no weights to rebuild logits)."""

    decomposition_checked = False

    @pytest.fixture()
    def store_path(self, tmp_path) -> Path:
        return write_synthetic(tmp_path / "syn")


class TestTinyModelStore(StoreConformance):
    """Ingested from a tiny random LayerNorm + MLP model, several chunks."""

    @pytest.fixture()
    def store_path(self, real_store_template) -> Path:
        return real_store_template


ZOO_RUNS = [("zoo:addition", "addition", {}), ("zoo:list_update", "list_update", {}),
            ("zoo:brackets", "brackets", {}), ("zoo:lm", "ioi", {"positions": "answer"})]


@pytest.fixture(scope="module", params=ZOO_RUNS, ids=[spec for spec, _, _ in ZOO_RUNS])
def zoo_store(request, tmp_path_factory) -> Path:
    spec, task, options = request.param
    out = tmp_path_factory.mktemp("zoo") / spec.replace(":", "_")
    try:
        actstore.ingest(task, spec, 48, 2, out, chunk=16, batch=16, quiet=True, **options)
    except ModelUnavailableError as e:
        pytest.skip(str(e))
    return out


class TestZooModelStore(StoreConformance):
    """Ingested from each shipped zoo model on its task (lm: answer positions only)."""

    @pytest.fixture()
    def store_path(self, zoo_store) -> Path:
        return zoo_store
