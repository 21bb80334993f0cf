"""Shared test setup: one torch thread (tests run side by side on 2 cores), quiet TransformerLens."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# never the user's weight cache; module-scoped fixtures share this one, each test gets its own (below)
os.environ["ACTSTORE_WEIGHT_CACHE"] = tempfile.mkdtemp(prefix="actstore-weight-cache-")
atexit.register(shutil.rmtree, os.environ["ACTSTORE_WEIGHT_CACHE"], ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
warnings.filterwarnings("ignore", category=DeprecationWarning, module="transformer_lens")

from dask_guard import dask_state, keep_real_stderr, restore_dask_state, stall_guard  # noqa: E402
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", deadline=None, max_examples=50)
settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _own_weight_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test ingests with its own weight cache (actstore.store.weight_cache), outside its tmp_path: a test
    that damages a store's weights in place never reaches another test's stores through shared links."""
    monkeypatch.setenv("ACTSTORE_WEIGHT_CACHE", str(tmp_path_factory.mktemp("weight-cache")))


def pytest_configure(config: pytest.Config) -> None:
    keep_real_stderr()  # for the stall guard's last resort (pytest is not capturing fd 2 here)


@pytest.fixture(autouse=True)
def _dask_left_as_found() -> Iterator[None]:
    """Every test leaves dask's `scheduler` setting and default client as it found them: a Client left as
    the default would take every later `.compute()` in this worker process (see tests/dask_guard.py).
    A leak is undone here and fails the test."""
    before = dask_state()
    yield
    leaks = restore_dask_state(before)
    if leaks:
        pytest.fail("the test left dask's global state changed: " + "; ".join(leaks), pytrace=False)


@pytest.fixture
def cluster_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    """A cluster test fails with every thread's stack after ACTSTORE_CLUSTER_TEST_TIMEOUT seconds (300)
    instead of hanging the run: `pytestmark = pytest.mark.usefixtures("cluster_guard")`."""
    with stall_guard(request.node.nodeid):
        yield


@pytest.fixture(scope="module")
def client():
    """A real Dask LocalCluster of 2 single-threaded worker processes (the one `--workers 2` starts) and
    its client, shared by a test module; not dask's default client (pass it as client=, or compute with
    scheduler=client). Its start and its close are stall-guarded too."""
    from actstore.query.executor import LocalClient

    local = LocalClient(2)
    with stall_guard("starting the 'client' fixture's LocalCluster"):
        c = local.__enter__()
    try:
        yield c
    finally:
        with stall_guard("closing the 'client' fixture's LocalCluster"):
            local.__exit__(None, None, None)
