"""Stores at fsspec URLs: a real moto S3 server on 127.0.0.1 and fsspec's memory://.

A remote ingest writes the same bytes as a local one; reads, verify, DLA, SQL and the report
agree with the local store; a damaged object is named; a killed remote ingest leaves its lock
(refused with the unlock command), then resumes to the same bytes; a second writer is refused.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
from polars.testing import assert_frame_equal

import actstore
from actstore import query
from actstore.cli import main
from actstore.errors import (InvalidParameterError, RemoteStoreError, StoreCorruptError, StoreExistsError,
                             StoreLockedError, StoreNotFoundError)
from actstore.store.fs import RemotePath, store_path
from actstore.store.directions import direction_problems, load_direction, save_direction
from actstore.store.lock import store_lock
from actstore.store.open import is_store
from actstore.store.verify import verify
from actstore.store.writer import KILL_ENV

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS / "ingest"))
from conformance import StoreConformance  # noqa: E402
from crash_driver import ARGS as CRASH_ARGS  # noqa: E402
from s3_server import s3_server  # noqa: E402
from tiny_models import tiny_model  # noqa: E402

ARGS = dict(task="addition", n=40, seed=3, chunk=16, batch=8, quiet=True, model_spec="tiny:addition")


@pytest.fixture(scope="module")
def s3():
    with s3_server() as url:
        yield url


@pytest.fixture(scope="module")
def local_ref(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "store"
    actstore.ingest(model=tiny_model("addition"), out=out, **ARGS)
    return out


@pytest.fixture(scope="module")
def s3_store(s3) -> str:
    url = f"{s3}/main/store"
    actstore.ingest(model=tiny_model("addition"), out=url, **ARGS)
    return url


def local_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not str(p.relative_to(root)).startswith("derived")}


def remote_tree(url: str) -> dict[str, bytes]:
    fs, root = fsspec.url_to_fs(url)
    root = root.rstrip("/")
    return {f[len(root) + 1:]: fs.cat_file(f) for f in sorted(fs.find(root))
            if not f[len(root) + 1:].startswith("derived")}


def copy_remote(src: str, dst: str) -> None:
    fs, a = fsspec.url_to_fs(src)
    _, b = fsspec.url_to_fs(dst)
    for f in fs.find(a):
        fs.pipe_file(b + f[len(a):], fs.cat_file(f))


def test_remote_ingest_writes_the_bytes_a_local_ingest_writes(s3_store, local_ref):
    local, remote = local_tree(local_ref), remote_tree(s3_store)
    assert sorted(remote) == sorted(local)
    assert "_commits/00002.json" in remote and "_commits/complete.json" in remote
    assert [k for k in remote if local[k] != remote[k]] == []
    fs, root = fsspec.url_to_fs(s3_store)
    assert not fs.exists(root.rsplit("/", 1)[0] + "/.store.lock")  # released after the ingest


def test_reads_dla_and_sql_agree_with_the_local_store(s3_store, local_ref):
    remote, local = actstore.open_store(s3_store), actstore.open_store(local_ref)
    assert isinstance(remote.path, RemotePath) and remote.url == s3_store
    assert remote.n_examples == local.n_examples == 40
    for hook in local.hooks:
        np.testing.assert_array_equal(remote.read(hook, 10, 33), local.read(hook, 10, 33))
    np.testing.assert_array_equal(remote.param("unembed.W_U"), local.param("unembed.W_U"))
    assert_frame_equal(remote.outputs, local.outputs)
    assert_frame_equal(query.dla(remote), query.dla(local))
    q = ("SELECT component, avg(value) AS v, count(*) AS n FROM dla JOIN examples USING (example_id) "
         "GROUP BY component ORDER BY component")
    got, want = remote.sql(q).pl(), local.sql(q).pl()
    assert got.height > 5 and got["n"].to_list() == want["n"].to_list()
    np.testing.assert_allclose(got["v"].to_numpy(), want["v"].to_numpy(), rtol=1e-6)
    assert remote.sql("SELECT count(*) FROM tokens").fetchall() == local.sql("SELECT count(*) FROM tokens").fetchall()
    fs, root = fsspec.url_to_fs(s3_store)
    cached = sorted(f for f in fs.find(root + "/derived") if f.endswith(".parquet"))
    # the dla view cached in the bucket, and the store's answer facts (query/store_facts.py), each with its record
    assert [f.rsplit("/", 1)[1].split("-")[0] for f in cached] == ["answer_facts", "dla"]
    assert all(fs.exists(f + ".sha256") for f in cached)


def test_sql_over_a_remote_store_stays_sandboxed(s3_store):
    store = actstore.open_store(s3_store)
    with pytest.raises(actstore.errors.QueryError, match="refused"):
        store.sql(f"SELECT * FROM read_parquet('{s3_store}/meta/examples/part-00000.parquet')")
    with pytest.raises(actstore.errors.QueryError, match="refused"):
        store.sql("COPY examples TO 'x.parquet'")


def test_verify_passes_then_names_a_corrupted_object(s3, s3_store):
    report = verify(s3_store)
    assert report.passed and report.decomposition["status"] == "checked", report.lines()
    bad = f"{s3}/corrupt-{uuid.uuid4().hex[:6]}/store"
    copy_remote(s3_store, bad)
    hook = actstore.open_store(bad).hooks[0]
    fs, root = fsspec.url_to_fs(bad)
    chunk = f"{root}/acts/{hook}/c/1/0/0"
    data = bytearray(fs.cat_file(chunk))
    data[len(data) // 2] ^= 0xFF
    fs.pipe_file(chunk, bytes(data))
    report = verify(bad)
    assert not report.passed
    assert any(f"acts/{hook} chunk 1" in p and f"acts/{hook}/c/1/0/0" in p for p in report.problems), report.problems
    with pytest.raises(StoreCorruptError):
        actstore.open_store(bad).read(hook, 16, 32)
    np.testing.assert_array_equal(actstore.open_store(bad).read(hook, 0, 16),
                                  actstore.open_store(s3_store).read(hook, 0, 16))  # other chunks still read
    fs.rm_file(f"{root}/meta/outputs/part-00002.parquet")
    problems = verify(bad).problems
    assert any("meta/outputs chunk 2" in p and "missing" in p for p in problems), problems


def test_report_of_a_remote_store_is_written_locally(s3_store, tmp_path):
    from actstore.charts.report import build_report

    out = build_report(actstore.open_store(s3_store), tmp_path / "report.html")
    text = Path(out).read_text()
    assert Path(out).stat().st_size > 10_000 and s3_store in text


def test_a_second_writer_is_refused(s3, s3_store):
    with store_lock(store_path(s3_store)):
        with pytest.raises(StoreLockedError, match="actstore unlock"):
            actstore.ingest(model=tiny_model("addition"), out=s3_store, **ARGS)
    assert actstore.open_store(s3_store).n_examples == 40  # untouched
    lock = store_path(f"{s3}/race/.store.lock")
    assert isinstance(lock, RemotePath)
    wins: list[bool] = []
    threads = [threading.Thread(target=lambda: wins.append(lock.create_exclusive(b"x"))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 5 + [True]  # the conditional PUT lets exactly one through


def test_interrupted_remote_ingest_is_locked_until_unlocked_then_redoes_the_uncommitted_chunk(s3, s3_store, local_ref,
                                                                                              capsys):
    """What a writer killed after chunk 2's files but before its commit object leaves: the files,
    no commit object, no completion record, and its lock object (the real kill: the slow test below)."""
    url = f"{s3}/resume-{uuid.uuid4().hex[:6]}/store"
    copy_remote(s3_store, url)
    fs, root = fsspec.url_to_fs(url)
    fs.rm_file(f"{root}/_commits/00002.json")
    fs.rm_file(f"{root}/_commits/complete.json")
    fs.pipe_file(root.rsplit("/", 1)[0] + "/.store.lock", b'{"host": "gone", "pid": 1, "since": "then"}\n')
    with pytest.warns(actstore.errors.IncompleteStoreWarning):
        assert actstore.open_store(url).n_examples == 32
    with pytest.raises(StoreLockedError, match=f"pid 1 on gone.*actstore unlock {url}"):
        actstore.ingest(model=tiny_model("addition"), out=url, **ARGS)
    assert main(["unlock", url]) == 0
    assert "removed lock object" in capsys.readouterr().err
    assert main(["unlock", url]) == 0 and "not locked" in capsys.readouterr().err
    store = actstore.ingest(model=tiny_model("addition"), out=url, **ARGS)
    assert store.n_examples == 40 and store.finished
    assert remote_tree(url) == local_tree(local_ref)


@pytest.mark.slow
def test_killed_remote_ingest_is_locked_until_unlocked_then_resumes_to_the_same_bytes(s3, tmp_path, capsys):
    url = f"{s3}/crash/store"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS / "ingest"), os.environ.get("PYTHONPATH", "")]))
    env[KILL_ENV] = "2:meta"  # chunk 2's arrays and parts are written, its commit object is not
    proc = subprocess.run([sys.executable, str(TESTS / "ingest" / "crash_driver.py"), url], env=env,
                          capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    fs, root = fsspec.url_to_fs(url)
    assert fs.exists(f"{root}/meta/examples/part-00002.parquet") and not fs.exists(f"{root}/_commits/00002.json")
    with pytest.warns(actstore.errors.IncompleteStoreWarning):
        assert actstore.open_store(url).n_examples == 32
    with pytest.raises(StoreLockedError, match=f"actstore unlock {url}"):
        actstore.ingest(model=tiny_model("addition"), out=url, **CRASH_ARGS)
    assert main(["unlock", url]) == 0
    assert "removed lock object" in capsys.readouterr().err
    assert main(["unlock", url]) == 0 and "not locked" in capsys.readouterr().err
    store = actstore.ingest(model=tiny_model("addition"), out=url, **CRASH_ARGS)
    assert store.n_examples == CRASH_ARGS["n"] and store.finished
    ref = tmp_path / "ref"
    actstore.ingest(model=tiny_model("addition"), out=ref, **CRASH_ARGS)
    assert remote_tree(url) == local_tree(ref)


def test_memory_urls_ingest_verify_query_and_pickle(local_ref):
    url = f"memory://actstore-{uuid.uuid4().hex[:8]}/store"
    try:
        store = actstore.ingest(model=tiny_model("addition"), out=url, **ARGS)
        assert verify(url).passed
        assert_frame_equal(store.examples, actstore.open_store(local_ref).examples)
        again = pickle.loads(pickle.dumps(store))  # as a worker process reopens it
        assert again.url == store.url and again.n_examples == 40
        np.testing.assert_array_equal(again.read(again.hooks[-1]), store.read(store.hooks[-1]))
        assert store.sql("SELECT sum(length) FROM examples").fetchall() == \
            actstore.open_store(local_ref).sql("SELECT sum(length) FROM examples").fetchall()
        vec = np.linspace(-1.0, 1.0, store.arch.d_model)
        save_direction(store.path, "probe", vec, info={"kind": "test"})
        np.testing.assert_array_equal(load_direction(url, "probe").vector, vec)  # bit for bit, read back by URL
        assert direction_problems(store.path) == [] and verify(url).passed
        fs = fsspec.filesystem("memory")
        fs.pipe_file(url.removeprefix("memory:/") + "/directions/probe.json", b'{"vector": [0]}')
        assert any("probe.json" in p for p in direction_problems(store.path))  # its digest record disagrees
        with store_lock(store.path), pytest.raises(StoreLockedError):  # one writer per store here too
            with store_lock(store_path(url)):
                pass
    finally:
        fsspec.filesystem("memory").rm(url.removeprefix("memory:/"), recursive=True)


def test_a_store_at_a_url_is_reused_at_its_n_and_not_grown():
    url = f"memory://actstore-{uuid.uuid4().hex[:8]}/store"
    args = {**ARGS, "n": 20}
    try:
        first = actstore.ingest(model=tiny_model("addition"), out=url, **args)
        again = actstore.ingest(model=tiny_model("addition"), out=url, **args)  # the same run: served as it is
        assert again.n_examples == first.n_examples == 20
        with pytest.raises(StoreExistsError) as e:
            actstore.ingest(model=tiny_model("addition"), out=url, **{**args, "n": 30})
        msg = str(e.value)
        assert "holds 20 examples of this run" in msg and "growth is local only" in msg and "\n" not in msg
        assert actstore.open_store(url).n_examples == 20 and verify(url).passed  # left as it was
    finally:
        fsspec.filesystem("memory").rm(url.removeprefix("memory:/"), recursive=True)


def test_storage_options_travel_with_the_store(s3, s3_store):
    opts = {"endpoint_url": os.environ["AWS_ENDPOINT_URL"], "key": "testing", "secret": "testing"}
    store = actstore.open_store(s3_store, storage_options=opts)
    assert isinstance(store.path, RemotePath) and store.path.storage_options["endpoint_url"] == opts["endpoint_url"]
    again = pickle.loads(pickle.dumps(store))
    assert again.path.storage_options == store.path.storage_options
    assert_frame_equal(again.outputs, store.outputs)
    with pytest.raises(InvalidParameterError, match="local"):
        actstore.open_store("/tmp/x", storage_options=opts)


def test_bad_urls_are_one_clear_error(s3):
    with pytest.raises(StoreNotFoundError, match="no store at"):
        actstore.open_store(f"{s3}/nothing/here")
    with pytest.raises(InvalidParameterError, match="unknown storage protocol"):
        actstore.open_store("nosuchproto://a/b")
    with pytest.raises(InvalidParameterError, match="bucket root"):
        actstore.ingest(model=tiny_model("addition"), out=s3, **ARGS)


def test_cli_reads_and_ingests_s3_urls(s3, s3_store, capsys):
    assert main(["verify", s3_store]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["info", s3_store]) == 0
    assert f"store      {s3_store}" in capsys.readouterr().out
    assert main(["sql", s3_store, "SELECT count(*) AS n FROM outputs"]) == 0
    assert "160" in capsys.readouterr().out  # 40 examples x 4 answers
    url = f"{s3}/cli/store"
    assert main(["ingest", "--task", "addition", "--model", "zoo:addition", "--n", "8", "--out", url, "--quiet"]) == 0
    capsys.readouterr()
    assert actstore.open_store(url).n_examples == 8
    assert main(["unlock", "/tmp/some/local/store"]) == 2
    assert "nothing to unlock" in capsys.readouterr().err


def test_s3_without_s3fs_names_the_extra():
    code = ("import sys; sys.modules['s3fs'] = None\n"
            "from actstore.cli import main\n"
            "sys.exit(main(['info', 's3://bucket/store']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "pip install 'actstore[s3]'" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_an_unreachable_endpoint_is_one_error_line():
    opts = {"endpoint_url": "http://127.0.0.1:9", "key": "x", "secret": "y",  # loopback, nothing listens
            "config_kwargs": {"retries": {"max_attempts": 1}}}
    with pytest.raises(RemoteStoreError, match="s3://bucket/store/zarr.json: the storage server failed .*endpoint"):
        actstore.open_store("s3://bucket/store", storage_options=opts)


@pytest.fixture(scope="module")
def memory_store():
    url = f"memory://actstore-{uuid.uuid4().hex[:8]}/conformance"
    actstore.ingest(model=tiny_model("addition"), out=url, **ARGS)
    yield url
    fsspec.filesystem("memory").rm(url.removeprefix("memory:/"), recursive=True)


class TestMemoryUrlStore(StoreConformance):
    """The on-disk contract, through a URL: a store ingested to memory://."""

    @pytest.fixture()
    def store_path(self, memory_store) -> str:
        return memory_store


def test_intervention_sweeps_are_written_into_a_url_store_and_read_back():
    from actstore.interventions.api import patch

    url = f"memory://actstore-{uuid.uuid4().hex[:8]}/sweeps"
    model = tiny_model("addition")
    try:
        store = actstore.ingest(model=model, out=url, **{**ARGS, "n": 24})
        rows = patch(store, "resid_pre", "layer", model=model, examples=8)
        again = actstore.open_store(url)
        assert again.sql("SELECT count(*) FROM interventions").fetchall() == [(rows.height,)]
        assert_frame_equal(patch(again, "resid_pre", "layer", model=model, examples=8), rows)  # read back, not rerun
        assert verify(url).passed
    finally:
        fsspec.filesystem("memory").rm(url.removeprefix("memory:/"), recursive=True)


def test_overwrite_foreign_prefix_and_a_cut_short_upload_at_a_url(local_ref):
    base = f"memory://actstore-{uuid.uuid4().hex[:8]}"
    fs = fsspec.filesystem("memory")
    root = base.removeprefix("memory:/")
    model = tiny_model("addition")
    try:
        url = f"{base}/s"
        actstore.ingest(model=model, out=url, **{**ARGS, "seed": 9})
        with pytest.raises(actstore.errors.StoreExistsError, match="another run"):
            actstore.ingest(model=model, out=url, **ARGS)
        actstore.ingest(model=model, out=url, overwrite=True, **ARGS)  # the root zarr.json goes first, then the rest
        assert remote_tree(url) == local_tree(local_ref)
        fs.pipe_file(f"{root}/foreign/notes.txt", b"not a store")
        with pytest.raises(actstore.errors.StoreExistsError, match="is not an actstore store"):
            actstore.ingest(model=model, out=f"{base}/foreign", **ARGS)
        assert fs.cat_file(f"{root}/foreign/notes.txt") == b"not a store"  # left alone
        for rel, data in local_tree(local_ref).items():  # an upload cut short: everything but the root zarr.json
            if rel.startswith(("acts/", "params/", "_commits/store.json")):
                fs.pipe_file(f"{root}/cut/{rel}", data)
        assert not is_store(f"{base}/cut")
        actstore.ingest(model=model, out=f"{base}/cut", **ARGS)  # removed, then created whole
        assert remote_tree(f"{base}/cut") == local_tree(local_ref)
    finally:
        fs.rm(root, recursive=True)
