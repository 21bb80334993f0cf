"""Sweeps on a real Dask LocalCluster (2 worker processes, started with OMP_NUM_THREADS=1) store the
same table and the same bytes as the local run: exact patching, mean ablation (means from the
store and from a model pass), resampling, attribution patching (a backward pass: thread-count
sensitive) and path patching; a sweep killed after its first part resumes on the cluster to the
local bytes; `actstore ablate --scheduler` (and `--workers 2`, slow); what a cluster cannot run is
refused in one line."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import actstore
from actstore.cli import main
from actstore.errors import ClusterError, InvalidParameterError
from actstore.interventions import ablate, attribution_patch, patch, path_patch
from actstore.store.sweeps import COMMITS_DIR, COMPLETE, SWEEPS

N, PART = 16, 8  # two parts of 8 examples: both workers get one
pytestmark = pytest.mark.usefixtures("cluster_guard")  # a stall fails with every stack (tests/dask_guard.py)


@pytest.fixture(scope="module")
def stores(_templates, tmp_path_factory) -> tuple[Path, Path]:
    """Two copies of the zoo:addition store (24 examples, z and pattern stored): local and cluster runs."""
    base = tmp_path_factory.mktemp("iv-cluster")
    out = base / "local", base / "cluster"
    for path in out:
        shutil.copytree(_templates("addition"), path)
    return out


def part_files(root: Path, sweep: str) -> dict[str, bytes]:
    base = root / SWEEPS / sweep
    files = {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}
    assert "spec.json" in files and COMPLETE in files and len(files) == 2 + 2 * 2  # spec, complete, 2 parts + records
    return files


SWEEPS_RUN: dict[str, Callable[..., pl.DataFrame]] = {
    "patch": lambda s, **kw: patch(s, "resid_pre", "layer,pos", **kw),
    "patch_head_pos": lambda s, **kw: patch(s, "z", "head,pos", pos="c0,c1", mode="noise", **kw),
    "mean_stored": lambda s, **kw: ablate(s, "z", "head", method="mean", mean_over="role", **kw),
    "mean_model_pass": lambda s, **kw: ablate(s, "attn_out", "layer", method="mean", mean_over="label:carry_1",
                                              **kw),
    "resample": lambda s, **kw: ablate(s, "resid_post", "layer", method="resample", seed=3, **kw),
    "path_logits": lambda s, **kw: path_patch(s, "logits", **kw),
    "path_heads": lambda s, **kw: path_patch(s, "1.0,1.2", "k", **kw),
}


@pytest.mark.parametrize("kind", list(SWEEPS_RUN))
def test_a_sweep_on_the_cluster_stores_the_local_bytes(stores, client, kind):
    local, remote = stores
    run = SWEEPS_RUN[kind]
    here = run(local, examples=N, part=PART, batch=4)
    there = run(remote, examples=N, part=PART, batch=4, client=client)
    assert here.height > 0 and here["example_id"].n_unique() == N
    assert here["value"].is_nan().sum() == 0
    assert_frame_equal(here, there, check_exact=True)
    assert part_files(local, here["sweep"][0]) == part_files(remote, there["sweep"][0])


def test_attribution_patching_runs_at_the_drivers_thread_count(stores, client):
    """A backward pass's float sums depend on torch's thread count (here 1 vs 2 threads differ in
    the last bits of attribution patching): the workers (started at 1 thread) run the parts at the
    driver's count, so a driver at 2 threads gets its own bytes back."""
    import torch

    local, remote = stores
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        here = attribution_patch(local, "z", "head,pos", examples=N, part=PART, batch=4)
        there = attribution_patch(remote, "z", "head,pos", examples=N, part=PART, batch=4, client=client)
    finally:
        torch.set_num_threads(before)
    assert here.height == 2 * 3 * 14 * N * 4 * 4  # layers x heads x positions x examples x answers x metrics
    assert_frame_equal(here, there, check_exact=True)
    assert part_files(local, here["sweep"][0]) == part_files(remote, there["sweep"][0])


def test_a_killed_sweep_resumes_on_the_cluster_to_the_local_bytes(stores, client, tmp_path):
    """Part 0 committed (by a local run), part 1 lost: the cluster computes part 1 only."""
    local, _ = stores
    here = ablate(local, "z", "head,pos", method="zero", examples=N, part=PART)
    sid = here["sweep"][0]
    want = part_files(local, sid)
    killed = tmp_path / "killed"
    shutil.copytree(local, killed)
    sweep = killed / SWEEPS / sid
    for name in (f"{COMMITS_DIR}/00001.json", COMPLETE, "part-00001.parquet"):
        (sweep / name).unlink()
    (sweep / "part-00000.parquet").touch()  # any rewrite of part 0 would change its mtime
    mtime = (sweep / "part-00000.parquet").stat().st_mtime_ns
    there = ablate(killed, "z", "head,pos", method="zero", examples=N, part=PART, client=client)
    assert_frame_equal(here, there, check_exact=True)
    assert part_files(killed, sid) == want
    assert (sweep / "part-00000.parquet").stat().st_mtime_ns == mtime


def test_a_model_object_or_a_store_in_memory_is_refused_before_anything_is_written(stores, client):
    from iv_helpers import tiny_model

    _, remote = stores
    before = sorted(p.name for p in (remote / SWEEPS).iterdir()) if (remote / SWEEPS).exists() else []
    with pytest.raises(InvalidParameterError, match="each worker loads the model from its spec"):
        patch(remote, "z", "head", examples=N, part=PART, model=tiny_model(), client=client)
    after = sorted(p.name for p in (remote / SWEEPS).iterdir()) if (remote / SWEEPS).exists() else []
    assert after == before
    mem = actstore.ingest("addition", "zoo:addition", 8, 1, "memory://iv-cluster-refused", dtype="float32", chunk=8,
                          quiet=True)
    with pytest.raises(InvalidParameterError, match="memory: Dask workers cannot read it"):
        ablate(mem, "z", "head", method="zero", client=client)


def test_a_cluster_without_workers_is_one_error_not_a_hang(stores):
    from dask.distributed import Client, LocalCluster

    _, remote = stores
    before = sweep_files(remote / SWEEPS)
    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as cluster, Client(cluster) as empty:
        with pytest.raises(ClusterError, match="has no workers; start some"):
            ablate(remote, "z", "head", method="zero", examples=N, part=PART, client=empty)
    assert sweep_files(remote / SWEEPS) == before  # nothing written


def run_cli(argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 0
    return capsys.readouterr().out


def cli_matches_local(local: Path, path: Path, capsys, cluster_args: list[str]) -> None:
    """`actstore ablate` on a copy of `local` with `cluster_args` prints and stores what it does locally."""
    shutil.copytree(local, path)
    shutil.rmtree(path / SWEEPS, ignore_errors=True)
    argv = ["--hook", "z", "--grain", "head", "--method", "mean", "--examples", "12", "--part", "6", "--quiet",
            "--format", "csv", "--per-example"]
    here = run_cli(["ablate", str(local), *argv], capsys)
    there = run_cli(["ablate", str(path), *argv, *cluster_args], capsys)
    assert here == there and len(here.splitlines()) == 1 + 2 * 3 * 12 * 4 * 4  # header + layers x heads x ... rows
    (sid,) = [p.name for p in (path / SWEEPS).iterdir()]
    assert len(list((path / SWEEPS / sid).glob("part-*.parquet"))) == 2
    assert sweep_files(local / SWEEPS / sid) == sweep_files(path / SWEEPS / sid)


def sweep_files(base: Path) -> dict[str, bytes]:
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


def test_cli_scheduler_prints_and_stores_what_a_local_run_does(stores, client, tmp_path, capsys):
    cli_matches_local(stores[0], tmp_path / "cli", capsys, ["--scheduler", client.scheduler.address])


@pytest.mark.slow  # starts and stops its own LocalCluster (about 30 s here, most of it importing torch twice)
def test_cli_workers_2_prints_and_stores_what_a_local_run_does(stores, tmp_path, capsys):
    cli_matches_local(stores[0], tmp_path / "cli", capsys, ["--workers", "2"])
