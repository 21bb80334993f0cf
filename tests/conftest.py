"""Shared test setup: one torch thread (tests run side by side on 2 cores), quiet TransformerLens."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# never the user's weight cache; module-scoped fixtures share this one, each test gets its own (below)
os.environ["ACTSTORE_WEIGHT_CACHE"] = tempfile.mkdtemp(prefix="actstore-weight-cache-")
atexit.register(shutil.rmtree, os.environ["ACTSTORE_WEIGHT_CACHE"], ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
warnings.filterwarnings("ignore", category=DeprecationWarning, module="transformer_lens")

from hypothesis import settings  # noqa: E402

settings.register_profile("ci", deadline=None, max_examples=50)
settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _own_weight_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test ingests with its own weight cache (actstore.store.weight_cache), outside its tmp_path: a test
    that damages a store's weights in place never reaches another test's stores through shared links."""
    monkeypatch.setenv("ACTSTORE_WEIGHT_CACHE", str(tmp_path_factory.mktemp("weight-cache")))


@pytest.fixture(scope="module")
def client():
    """A real Dask LocalCluster of 2 single-threaded worker processes (the one `--workers 2` starts) and
    its client, shared by a test module."""
    from actstore.query.executor import LocalClient

    with LocalClient(2) as c:
        yield c
