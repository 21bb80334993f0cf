"""Reads that decode into a reused per-thread buffer (chunk_read.transient_reads, the scan's answer-only
hooks) must never let one read's values reach another's result: chunks kept from a scan after later reads,
two stores' scans interleaved on one thread, and queries run back to back give what the Zarr path (no reused
buffer, no direct reads) gives, bit for bit, on the reading threads and on the calling thread alone."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "ingest"))
from tiny_models import tiny_model  # noqa: E402

import actstore  # noqa: E402
from actstore.query import dla, logit_lens, neurons  # noqa: E402
from actstore.query.chunks import stream  # noqa: E402

KW = dict(chunk=8, batch=8, quiet=True)


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("reuse")
    model = tiny_model("addition")
    return (actstore.ingest("addition", model, 20, 0, root / "a", **KW).path,
            actstore.ingest("addition", model, 20, 1, root / "b", dtype="float32", **KW).path)


def _zarr_only(path: Path):
    store = actstore.open_store(path)
    store.direct_reads = False
    return store


def _hooks(store) -> list[str]:
    return [h for h in store.hooks if "hook_z" in h or "hook_post" in h or "hook_scale" in h]


def _chunks(store, workers: int) -> list:
    return list(stream(store, _hooks(store), workers=workers))  # every chunk kept while later ones are read


@pytest.mark.parametrize("workers", [1, 2])
def test_kept_and_interleaved_scans_equal_the_zarr_path(paths, workers):
    a, b = paths
    want = {p: _chunks(_zarr_only(p), 1) for p in paths}
    sa, sb = actstore.open_store(a), actstore.open_store(b)
    got_a, got_b = [], []
    for ca, cb in zip(stream(sa, _hooks(sa), workers=workers), stream(sb, _hooks(sb), workers=workers)):
        got_a.append(ca)
        got_b.append(cb)
    got_a += [c for c in stream(sa, _hooks(sa), workers=workers)][len(got_a):]
    for got, path in ((got_a, a), (got_b, b), (_chunks(sa, workers), a)):
        assert len(got) == len(want[path])
        for g, w in zip(got, want[path]):
            assert set(g.at_answer) == set(w.at_answer)
            for hook in w.at_answer:
                assert g.at_answer[hook].dtype == w.at_answer[hook].dtype
                np.testing.assert_array_equal(g.at_answer[hook].view(np.uint8), w.at_answer[hook].view(np.uint8))


def test_queries_back_to_back_equal_the_zarr_path(paths):
    queries = [lambda s: dla(s, "head"), lambda s: logit_lens(s), lambda s: neurons(s, top_k=4),
               lambda s: dla(s, "neuron")]
    want = [[q(_zarr_only(p)) for q in queries] for p in paths]
    stores = [actstore.open_store(p) for p in paths]
    for _ in range(2):
        for i, q in enumerate(queries):
            for j, s in enumerate(stores):
                assert q(s).equals(want[j][i]), (i, j)
