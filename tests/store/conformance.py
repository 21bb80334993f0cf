"""What every store must satisfy, whatever wrote it: a reusable conformance suite.

Subclass `StoreConformance` and provide a `store_path` fixture; the subclass collects every
check below (see test_conformance.py for the synthetic, tiny-model and zoo-model stores).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from actstore.store import Manifest, open_store
from actstore.store.verify import verify


class StoreConformance:
    """Checks of the on-disk contract (DESIGN.md) through the public store API and raw Zarr."""

    decomposition_checked = True  # False for stores without the weights / hooks to rebuild logits

    @pytest.fixture()
    def store_path(self) -> Path:  # pragma: no cover - provided by each subclass
        raise NotImplementedError

    def test_manifest_round_trips_through_json(self, store_path):
        m = open_store(store_path).manifest
        assert Manifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m

    def test_arrays_are_what_the_manifest_says(self, store_path):
        store = open_store(store_path)
        m = store.manifest
        assert store.hooks == [h.name for h in m.hooks]
        for h in m.hooks:
            arr = zarr.open_array(f"{store_path}/acts/{h.name}", mode="r")  # a path or a URL
            assert arr.shape == tuple(h.shape) and str(arr.dtype) == h.dtype == m.dtype, h.name
            assert arr.chunks == (m.chunk, *h.shape[1:]), f"{h.name}: chunked along example only"
            assert tuple(arr.metadata.dimension_names) == tuple(h.dims), h.name

    def test_reads_agree_across_chunk_edges(self, store_path):
        store = open_store(store_path)
        n, chunk = store.n_examples, store.chunk_size
        for name in store.hooks:
            whole = store.read(name)
            assert whole.shape[0] == n
            for start, stop in [(0, n), (max(0, chunk - 1), min(n, chunk + 2)), (n - 1, n)]:
                np.testing.assert_array_equal(store.read(name, start, stop), whole[start:stop])

    def test_meta_tables_agree_with_each_other(self, store_path):
        store = open_store(store_path)
        n, a = store.n_examples, store.n_answers
        ex, tokens, outputs = store.examples, store.tokens, store.outputs
        assert ex["example_id"].to_list() == list(range(n))
        lengths = ex["length"].to_numpy()
        counts = tokens.group_by("example_id").len().sort("example_id")["len"].to_numpy()
        np.testing.assert_array_equal(counts, lengths)
        assert [len(t) for t in ex["tokens"].to_list()] == lengths.tolist()
        assert outputs.height == n * a
        assert outputs.group_by("example_id").len()["len"].unique().to_list() == [a]
        pos = np.array(ex["answer_positions"].to_list())
        np.testing.assert_array_equal(outputs.sort("example_id", "answer_idx")["answer_pos"].to_numpy(), pos.ravel())

    def test_params_are_float32_and_finite(self, store_path):
        store = open_store(store_path)
        assert store.param_names
        for name in store.param_names:
            w = store.param(name)
            assert w.dtype == np.float32 and np.isfinite(w).all(), name

    def test_verify_passes(self, store_path):
        report = verify(store_path)
        assert report.ok, report.lines()
        assert report.committed_chunks == report.n_chunks and report.n_examples == open_store(store_path).n_examples
        if self.decomposition_checked:
            assert report.decomposition.get("status") == "checked", report.lines()
            assert 0 <= report.decomposition["worst_ratio"] <= 1  # every answer within its own tolerance

    def test_xarray_reads_every_array_with_its_dims(self, store_path):
        xr = pytest.importorskip("xarray")
        store = open_store(store_path)
        ds = xr.open_zarr(f"{store_path}/acts", consolidated=False)
        for h in store.manifest.hooks:
            assert ds[h.name].dims == tuple(h.dims)
        name = store.hooks[0]
        np.testing.assert_array_equal(ds[name].values[: store.n_examples], store.read(name))
