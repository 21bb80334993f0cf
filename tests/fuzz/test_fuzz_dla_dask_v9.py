"""Issue 14's scaled DLA on a real Dask LocalCluster (2 single-threaded worker processes): a worker's batch of one
chunk takes the scaled path (dla.DlaPlan.partials: one range) where this process scans the whole many-chunk store
on the plain path, so the two must agree bit for bit; on the crafted stores of test_fuzz_dla_crafted_v9 (float16
subnormals, -0.0, +-65504, +-inf in some chunks only)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "ingest"))
from test_fuzz_dla_crafted_v9 import QUERIES, _same, crafted  # noqa: E402

import actstore  # noqa: E402
from actstore.query import dla  # noqa: E402

pytestmark = pytest.mark.usefixtures("cluster_guard")  # a stall fails with every stack (tests/dask_guard.py)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dla_dask_v9")
    kw = dict(batch=64, quiet=True, model_spec="tiny:addition")
    return [actstore.ingest("addition", crafted(), 160, 1, tmp / "many", chunk=32, **kw),
            actstore.ingest("addition", crafted(), 100, 1, tmp / "one", chunk=128, **kw)]


@pytest.mark.parametrize("s", [0, 1])
def test_the_cluster_gives_this_processs_tables(stores, client, s):
    store = stores[s]
    for level, target, pos, answer in QUERIES:
        here = dla(store, level, target, pos=pos, answer=answer)
        there = dla(store, level, target, pos=pos, answer=answer, client=client)
        assert here.height > 0 and _same(here, there), (store.path.name, level, target, pos, answer)
        assert here["value"].is_finite().mean() > 0.5
