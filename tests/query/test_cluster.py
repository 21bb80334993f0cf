"""Streamed queries on a real Dask LocalCluster (2 single-threaded worker processes) give the same
tables, bit for bit, as the local run; per-chunk summaries match the whole-table breakdown; the
CLI's --workers / --scheduler; store.to_xarray() reads what store.read reads."""

from __future__ import annotations

import io
import shutil
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

import actstore
from actstore.cli import main
from actstore.errors import ClusterError, UnknownColumnError
from actstore.query import streamed
from actstore.query.attention import attention, attention_frames
from actstore.query.breakdown import breakdown
from actstore.query.dla import dla, dla_plan
from actstore.query.executor import Job, connect, split
from actstore.query.logit_lens import logit_lens
from actstore.query.neuron_stats import neuron_correlation
from actstore.query.neurons import neurons
from actstore.query.summary import GroupSpec, GroupStats, summarise

# a stalled cluster test fails with every thread's stack instead of hanging the run (tests/dask_guard.py);
# tests/conftest.py checks after every test that dask's scheduler setting and default client are as they were
pytestmark = pytest.mark.usefixtures("cluster_guard")


def assert_sum(got: np.ndarray, values: np.ndarray) -> None:
    """got is values summed over examples (axis 0) in float32 in some order (Dask's, xarray's): within float32
    rounding of the float64 sum, measured against the sum of |values| (a sum that cancels to near 0 keeps the
    rounding of its terms; a relative tolerance failed on one such element of 896 with dask 2026.11)."""
    wide = values.astype(np.float64)
    np.testing.assert_array_less(np.abs(got - wide.sum(axis=0)), 1e-6 * np.abs(wide).sum(axis=0) + 1e-30)


@pytest.fixture(scope="module")
def store(tiny_store, tmp_path_factory):
    """The ln_mlp store (3 chunks: 16, 16, 8 examples), copied so that derived/ caches stay ours."""
    path = tmp_path_factory.mktemp("cluster") / "store"
    shutil.copytree(tiny_store("ln_mlp").path, path)
    return actstore.open_store(path)


def same(a: pl.DataFrame, b: pl.DataFrame) -> None:
    assert a.height > 0
    assert_frame_equal(a, b, check_exact=True)


@pytest.mark.parametrize("level", ["layer", "head", "neuron", "path"])
def test_dla_per_example_is_identical_on_the_cluster(store, client, level):
    same(dla(store, level=level), dla(store, level=level, client=client))


def test_readouts_at_positions_and_token_lists_are_identical(store, client):
    same(dla(store, target=[0, 1, 2], pos="all"), dla(store, target=[0, 1, 2], pos="all", client=client))
    for ln in ("cached", "recompute"):
        same(logit_lens(store, ln=ln), logit_lens(store, ln=ln, client=client))
    same(logit_lens(store, target="W_U[:,7] - W_U[:,3]", pos=-1),
         logit_lens(store, target="W_U[:,7] - W_U[:,3]", pos=-1, client=client))


def test_dla_mean_and_breakdown_stream_identically_and_match_the_whole_table(store, client):
    table = dla(store, level="head")
    for spec, whole in [(GroupSpec(), breakdown(table, group_by=[])),
                        (GroupSpec(by=("carry_2",)), breakdown(table, "carry_2", store)),
                        (GroupSpec(by=("carry_2", "carry_1")), breakdown(table, ["carry_2", "carry_1"], store))]:
        local = summarise(store, Job(dla_plan, {"level": "head"}), spec)
        same(local, summarise(store, Job(dla_plan, {"level": "head"}), spec, client=client))
        assert local.columns == whole.columns
        keys = [c for c in whole.columns if c not in ("mean", "std", "n", "ci_low", "ci_high")]
        assert_frame_equal(local.select(keys, "n"), whole.select(keys, "n"))  # same groups, same order
        for col in ("mean", "std", "ci_low", "ci_high"):
            np.testing.assert_allclose(local[col].to_numpy(), whole[col].to_numpy(), rtol=1e-9, atol=1e-12)
    n_carry = int(store.examples["carry_2"].sum())
    by = summarise(store, Job(dla_plan, {"level": "head"}), GroupSpec(by=("carry_2",)))
    assert sorted(by["n"].unique().to_list()) == sorted({n_carry, store.n_examples - n_carry})
    with pytest.raises(UnknownColumnError, match="no label column 'nosuch'"):
        summarise(store, Job(dla_plan, {}), GroupSpec(by=("nosuch",)))


def test_summary_filling_the_cache_is_identical_to_a_cluster_run_and_rows_come_back_from_it(store, client):
    params = {"level": "layer"}
    spec = GroupSpec(by=("carry_2",))
    for f in store.derived_dir.glob("dla-level=layer-*"):
        f.unlink()
    filling = streamed.summary(store, "dla", params, spec)  # computes and fills the cache on the way
    assert list(store.derived_dir.glob("dla-level=layer-target=correct-*.parquet"))
    same(filling, streamed.summary(store, "dla", params, spec))
    same(filling, streamed.summary(store, "dla", params, spec, client))
    frames, _ = streamed.rows(store, "dla", params)  # from the cache
    same(pl.concat(list(frames)), dla(store, level="layer"))
    frames, _ = streamed.rows(store, "dla", params, client)
    same(pl.concat(list(frames)), dla(store, level="layer"))


def test_attention_raw_and_aggregated_are_identical(store, client):
    same(attention(store, query="=", key=["a0", "a1"]), attention(store, query="=", key=["a0", "a1"], client=client))
    same(pl.concat(list(attention_frames(store, layers=[1], client=client))), attention(store, layers=[1]))
    for by in (["k_role", "carry_2"], ["k_pos"], ["q_role"]):
        same(attention(store, group_by=by), attention(store, group_by=by, client=client))
    same(attention(store, aggregate="mean", where={"carry_2": True}),
         attention(store, aggregate="mean", where={"carry_2": True}, client=client))


def test_neuron_rows_top_k_and_correlation_are_identical(store, client):
    same(neurons(store, [0, 2]), neurons(store, [0, 2], client=client))
    same(neurons(store, pos="=", top_k=3), neurons(store, pos="=", top_k=3, client=client))
    top = neurons(store, 1, top_k=2, rank_by="-activation", client=client)
    rows = neurons(store, 1)
    want = rows.sort("activation", maintain_order=True).group_by("neuron", maintain_order=True).head(2)
    assert top.sort("neuron", "rank")["activation"].to_list() == want.sort("neuron")["activation"].to_list()
    same(neuron_correlation(store, None, "a"), neuron_correlation(store, None, "a", client=client))


def test_split_keeps_order_and_covers_every_chunk():
    ranges = [(i * 10, i * 10 + 10) for i in range(7)]
    parts = split(ranges, 3)
    assert [r for p in parts for r in p] == ranges and [len(p) for p in parts] == [2, 3, 2]
    assert split(ranges[:2], 8) == [[ranges[0]], [ranges[1]]] and split([], 4) == []


def test_group_stats_combine_in_parts_equals_one_pass():
    rng = np.random.default_rng(0)
    table = pl.DataFrame({"g": rng.integers(0, 3, 1000), "value": rng.normal(5, 2, 1000)})
    whole = GroupStats.of(table, ["g"], "value")
    parts = GroupStats.combine(GroupStats.of(table.slice(i, 250), ["g"], "value") for i in range(0, 1000, 250))
    assert parts is not None and parts.keys.equals(whole.keys) and parts.n.tolist() == whole.n.tolist()
    np.testing.assert_allclose(parts.mean, whole.mean, rtol=1e-12)
    np.testing.assert_allclose(parts.m2, whole.m2, rtol=1e-10)
    want = table.group_by("g", maintain_order=True).agg(pl.col("value").var(), pl.len())
    np.testing.assert_allclose(parts.m2 / (parts.n - 1), want["value"], rtol=1e-10)


def cli_csv(capsys, argv: list[str]) -> str:
    assert main(argv) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def test_cli_workers_and_scheduler_print_the_same_bytes(store, client, capsys):
    path = str(store.path)
    here = cli_csv(capsys, ["dla", path, "--mean", "--format", "csv"])
    assert pl.read_csv(io.StringIO(here))["n"].unique().to_list() == [store.n_examples]
    assert cli_csv(capsys, ["dla", path, "--mean", "--format", "csv", "--workers", "2"]) == here
    address = client.scheduler.address
    split_here = cli_csv(capsys, ["breakdown", path, "--group-by", "carry_2", "--format", "csv"])
    assert cli_csv(capsys, ["breakdown", path, "--group-by", "carry_2", "--format", "csv", "--scheduler",
                            address]) == split_here
    for argv in (["logit-lens", path], ["attention", path, "--group-by", "k_role"],
                 ["neurons", path, "--layers", "1", "--top-k", "2"]):
        assert cli_csv(capsys, [*argv, "--format", "csv", "--scheduler", address]) == \
            cli_csv(capsys, [*argv, "--format", "csv"])


def test_cli_refuses_an_unreachable_scheduler_in_one_line(store, capsys):
    assert main(["dla", str(store.path), "--scheduler", "tcp://127.0.0.1:1", "--format", "csv"]) != 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cannot reach the Dask scheduler at 'tcp://127.0.0.1:1'" in err, err
    assert main(["dla", str(store.path), "--scheduler", "x", "--workers", "2"]) != 0
    assert "pass one" in capsys.readouterr().err
    with pytest.raises(ClusterError):
        connect("tcp://127.0.0.1:1", timeout=1)


@pytest.mark.parametrize("address", ["inproc://nowhere", "garbage", "tcp://127.0.0.1:1"])
def test_a_failed_connect_leaves_dask_on_its_own_scheduler(store, address):
    """A failed connect registers no client: dask computes here afterwards, with or without a default client."""
    import dask
    from dask_guard import dask_state

    before = dask_state()
    with pytest.raises(ClusterError, match="cannot reach the Dask scheduler"):
        connect(address, timeout=1)
    assert dask_state() == before  # not a client that never connected (computes would wait on it forever)
    assert dask.config.get("scheduler", None) == before[0]
    ds = store.to_xarray(["blocks.0.mlp.hook_post"])  # computes here afterwards
    assert_sum(ds["blocks.0.mlp.hook_post"].sum("example").values, store.read("blocks.0.mlp.hook_post"))


def test_connect_leaves_the_users_default_client_the_default(store, client):
    """With the user's own default Client, a failed connect (and a connect closed after use) leaves it the
    default: later computes go to it, not to a client that never connected (which stalled a CI run)."""
    import dask
    from dask.distributed import Client, default_client
    from dask_guard import dask_state

    assert dask_state() == (None, None)  # the fixture's client is not made the default either
    with Client(client.scheduler.address, set_as_default=True) as mine:
        assert dask.config.get("scheduler") == "dask.distributed" and default_client() is mine
        with pytest.raises(ClusterError, match="cannot reach the Dask scheduler at 'inproc://nowhere'"):
            connect("inproc://nowhere", timeout=1)
        assert dask_state() == ("dask.distributed", mine)
        ours = connect(client.scheduler.address)
        assert dask_state() == ("dask.distributed", mine)
        assert ours.submit(sum, [1, 2], pure=False).result() == 3
        ours.close()
        assert dask_state() == ("dask.distributed", mine)
        ds = store.to_xarray(["blocks.0.mlp.hook_post"])
        got = ds["blocks.0.mlp.hook_post"].sum("example").values  # on `mine`'s (the fixture's) workers
    assert_sum(got, store.read("blocks.0.mlp.hook_post"))
    assert dask_state() == (None, None)


def test_to_xarray_reads_what_the_store_reads(store):
    ds = store.to_xarray()
    assert set(ds.data_vars) == set(store.hooks)
    z = "blocks.1.attn.hook_z"
    assert ds[z].dims == tuple(store.hook_info(z).dims) and ds[z].chunks[0] == (16, 16, 8)
    for name in store.hooks:
        np.testing.assert_array_equal(ds[name].values, store.read(name))
    assert ds["carry_2"].values.tolist() == store.examples["carry_2"].to_list()
    picked = ds[z].sel(example_id=[7, 3]).values
    np.testing.assert_array_equal(picked, store.read(z)[[7, 3]])
    carry = ds[z].where(ds["carry_2"], drop=True).mean("example").values
    want = store.read(z)[store.examples["carry_2"].to_numpy()].astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(carry, want, rtol=1e-5)


def test_to_xarray_on_the_cluster_reopens_the_store(store, client):
    from dask.distributed import get_task_stream

    ds = store.to_xarray(["blocks.0.mlp.hook_post"])
    with get_task_stream(client) as tasks:
        got = ds["blocks.0.mlp.hook_post"].sum("example").compute(scheduler=client).values
    assert {t["worker"] for t in tasks.data} <= set(client.scheduler_info()["workers"])
    assert len(tasks.data) >= 3  # the workers read the chunks (3 of them)
    assert_sum(got, store.read("blocks.0.mlp.hook_post"))


def test_to_xarray_without_xarray_names_the_extra(store, monkeypatch):
    from actstore.errors import XarrayExtraError

    with pytest.raises(actstore.errors.UnknownHookError, match="closest stored"):
        store.to_xarray(["blocks.0.attn.hook_zz"])
    monkeypatch.setitem(sys.modules, "xarray", None)  # as on an install without the xarray extra
    with pytest.raises(XarrayExtraError, match=r"pip install 'actstore\[xarray\]'"):
        store.to_xarray()


@pytest.mark.slow  # a moto server and a second cluster: ~20 s on a quiet machine, 65 s under load
def test_an_s3_store_is_reopened_by_the_workers(store):
    """Workers open an s3:// store (moto on 127.0.0.1) from its URL and read it checked, as here."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from dask.distributed import Client, LocalCluster
    from s3_server import s3_server

    with s3_server() as bucket:  # before the workers start: they inherit its endpoint
        import s3fs

        url = f"{bucket}/cluster/store"
        s3fs.S3FileSystem(skip_instance_cache=True).put(str(store.path), url, recursive=True)
        remote = actstore.open_store(url)
        spec = GroupSpec(by=("carry_2",))
        want = summarise(store, Job(dla_plan, {"level": "layer"}), spec)
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                          silence_logs=50) as cluster, Client(cluster) as c:
            same(summarise(remote, Job(dla_plan, {"level": "layer"}), spec, client=c), want)
            same(attention(remote, group_by=["k_role"], client=c), attention(store, group_by=["k_role"]))
            got = remote.to_xarray(["blocks.1.attn.hook_z"])["blocks.1.attn.hook_z"].sum("example").compute()
        assert_sum(got.values, store.read("blocks.1.attn.hook_z"))


def test_attention_and_neuron_breakdowns_are_identical_on_the_cluster(store, client, capsys):
    """Raw attention and neuron rows summarised per chunk: the cluster's table is the local one, bit for bit,
    and the CLI's --scheduler prints the same bytes (the groups and n of the whole-table breakdown)."""
    for table, spec in [("attention", GroupSpec(by=("carry_2",))),
                        ("neurons", GroupSpec(by=("a",), value="activation"))]:
        same(streamed.summary(store, table, None, spec), streamed.summary(store, table, None, spec, client))
    path, address = str(store.path), client.scheduler.address
    for of, whole in [("attention", breakdown(attention(store), "carry_2", store)),
                      ("neurons", breakdown(neurons(store), "carry_2", store, value="projection"))]:
        argv = ["breakdown", path, "--group-by", "carry_2", "--of", of, "--format", "csv"]
        here = cli_csv(capsys, argv)
        assert cli_csv(capsys, [*argv, "--scheduler", address]) == here
        keys = [c for c in whole.columns if c not in ("mean", "std", "ci_low", "ci_high")]
        assert_frame_equal(pl.read_csv(io.StringIO(here), schema=whole.schema).select(keys), whole.select(keys))
    assert main(["breakdown", path, "--group-by", "carry_2", "--input", path, "--workers", "2"]) != 0
    assert "--input FILE is read here" in capsys.readouterr().err


def test_workers_read_on_their_own_threads_and_memory_stores_are_refused(store, client, tmp_path):
    from actstore.query.executor import worker_threads

    assert client.submit(worker_threads, pure=False).result() == 1  # single-threaded workers read inline
    assert worker_threads() == 2  # here: the reading pool
    url = f"memory://actstore-cluster-{tmp_path.name}/store"
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.put(str(store.path), url.removeprefix("memory://"), recursive=True)
    try:
        mem = actstore.open_store(url)
        assert mem.n_examples == store.n_examples
        with pytest.raises(ClusterError, match="lives in this process.s memory, which Dask workers cannot open"):
            summarise(mem, Job(dla_plan, {"level": "layer"}), GroupSpec(), client=client)
    finally:
        fs.rm(url.removeprefix("memory://"), recursive=True)


def _worker_env() -> tuple[str | None, str | None]:
    import os

    return os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.environ.get("OMP_NUM_THREADS")


def _polars_threads() -> int:
    return pl.thread_pool_size()


def test_our_local_cluster_keeps_glibc_trimming_default_and_one_thread(monkeypatch):

    from actstore.query.executor import LocalClient

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)  # an earlier cluster here may have set it
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with LocalClient(1) as c:
        assert c.submit(_worker_env, pure=False).result() == (None, "1")
        assert c.submit(_polars_threads, pure=False).result() == 1  # no polars pool beside the worker's thread
        assert _worker_env() == (None, None)  # this process's environment is left as it was
