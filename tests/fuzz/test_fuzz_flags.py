"""Hostile values of the distributed flags (--shard I/N, --workers N, --scheduler ADDRESS) and of store URLs:
each is one error line and exit 2 before any work, and nothing is created."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from actstore.cli import main
from actstore.errors import InvalidParameterError
from actstore.ingest.shards import parse_shard
from actstore.store.fs import RemotePath, store_path

INGEST = ["ingest", "--task", "addition", "--model", "zoo:addition", "--n", "16", "--quiet"]
CPUS = os.cpu_count() or 1


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and ": error: " in err[0] and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize("text", ["", " ", "3/2", "2/2", "0/0", "1/0", "a/b", "1/2/3", "0/-2", "1.0/2", "0 / 2",
                                  "\u00bd/2", "\u0660/\u0662", "0/\uff12", "0/2147483648", "0/" + "9" * 300])
def test_bad_shards_are_refused(text):
    with pytest.raises(InvalidParameterError, match="--shard must be I/N"):
        parse_shard(text)


@pytest.mark.parametrize("pair", [(0, 2, 3), 5, (1, 1), (-1, 2), (True, 2), ("0", "2")])
def test_bad_shard_pairs_are_refused(pair):
    with pytest.raises(InvalidParameterError, match="shard"):
        parse_shard(pair)  # type: ignore[arg-type]


def test_good_shards_parse():
    assert parse_shard(" 1/2 ") == (1, 2) and parse_shard("0/2147483647") == (0, 2147483647)
    assert parse_shard(None) == (0, 1) and parse_shard((3, 4)) == (3, 4)


def test_a_non_ascii_shard_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "store"
    assert main([*INGEST, "--out", str(out), "--shard", "\u0660/\u0662"]) == 2
    assert "--shard must be I/N" in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["0", "-1", str(CPUS + 1), "10" * 20, "x", ""])
@pytest.mark.parametrize("command", [["dla", "STORE", "--mean"], INGEST + ["--out", "STORE"]])
def test_workers_outside_one_to_the_cpu_count_are_refused_before_any_cluster(tmp_path, capsys, command, value):
    argv = [str(tmp_path / "store") if a == "STORE" else a for a in command]
    assert main([*argv, "--workers", value]) == 2
    line = one_error_line(capsys)
    assert "--workers" in line and (f"1..{CPUS}" in line or "integer" in line)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("address", ["", " ", "garbage", "http://127.0.0.1:1", "inproc://nothing", "tcp://[::1"])
def test_ingest_with_a_bad_scheduler_is_one_line_and_writes_nothing(tmp_path, capsys, address):
    assert main([*INGEST, "--out", str(tmp_path / "store"), "--scheduler", address]) == 2
    line = one_error_line(capsys)
    assert "--scheduler is empty" in line or f"cannot reach the Dask scheduler at {address!r}" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("url", ["s3:/bucket/x", "://x", "memory://a//b", "memory://a/../b", "memory://a/./b",
                                 "s3://bucket/x/..", "s3://bucket//x", "s3://bucket/x?versionId=3",
                                 "memory://x?y=1", "zip://x"])
def test_odd_urls_are_refused(url):
    with pytest.raises(InvalidParameterError, match="URL|cannot hold a store"):
        store_path(url)


def test_plain_urls_and_paths_still_resolve():
    assert store_path("./s3:/x") == Path("s3:/x")  # a local directory named like a URL, said plainly
    assert store_path("file:///tmp/a//b") == Path("/tmp/a/b")
    assert isinstance(store_path("memory://fuzz-x/"), RemotePath)
    assert str(store_path("memory://fuzz-x/store/")) == "memory:///fuzz-x/store"


@pytest.mark.parametrize("out", ["s3:/bucket/x", "://x"])
def test_a_url_with_a_slash_missing_creates_no_local_directory(tmp_path, monkeypatch, capsys, out):
    monkeypatch.chdir(tmp_path)
    assert main([*INGEST, "--out", out]) == 2
    assert "looks like a URL" in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("url", ["memory://a//b", "s3://bucket/x?versionId=3", "s3://bucket", "s3://bucket/"])
def test_unlock_refuses_odd_urls_and_bucket_roots_in_one_line(capsys, url):
    """A bucket root holds no store (ingest refuses one), so no lock of one can be left: it said 'not locked'."""
    assert main(["unlock", url]) == 2
    assert "URL" in one_error_line(capsys)


@pytest.mark.parametrize("change", [{"--task": "nosuch"}, {"--n": "0"}, {"--out": "memory://fuzz-workers/store"},
                                    {"--param": "digits=0"}], ids=["task", "n", "url", "param"])
def test_ingest_on_workers_refuses_what_every_worker_would_before_starting_a_cluster(tmp_path, capsys, change):
    """Each used to start the cluster and have every worker fail (the nanny's log lines on stderr); a
    memory:// store was written into a worker's memory and lost."""
    flags = {"--task": "addition", "--model": "zoo:addition", "--n": "16", "--out": str(tmp_path / "store"),
             "--workers": "1", **change}
    assert main(["ingest", "--quiet", *[x for kv in flags.items() for x in kv]]) == 2
    line = one_error_line(capsys)
    assert any(word in line for word in ("nosuch", "n must be", "is a URL", "digits"))
    assert list(tmp_path.iterdir()) == []
