"""Ingest into an S3 store (a real moto server on 127.0.0.1) without needless requests: a PUT whose ETag
proves the bytes is not read back, a fresh store deletes nothing, a resume deletes only what its
uncommitted chunks left; the store's bytes (commit records and their digests included) equal a local
ingest's either way."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest
from tiny_models import tiny_model

import actstore
from actstore.store.commits import bytes_digest_list, put_digest
from actstore.store.layout import meta_tables

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
from s3_server import s3_server  # noqa: E402

ARGS = dict(task="addition", n=40, seed=3, chunk=16, batch=8, quiet=True, model_spec="tiny:addition")


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    with s3_server() as url:
        yield url


@pytest.fixture(scope="module")
def local_ref(tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("ref") / "store"
    actstore.ingest(model=tiny_model("addition"), out=out, **ARGS)
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def remote_tree(url: str) -> dict[str, bytes]:
    fs, root = fsspec.url_to_fs(url, use_listings_cache=False)
    return {f[len(root) + 1:]: fs.cat_file(f) for f in sorted(fs.find(root))}


@pytest.fixture
def requests(monkeypatch) -> list[tuple[str, list[str]]]:
    """Every request s3fs sends, as (operation, keys), while the real server answers it."""
    import s3fs

    seen: list[tuple[str, list[str]]] = []
    send = s3fs.S3FileSystem._call_s3

    async def recorded(self, method, *args, **kwargs):
        keys = [o["Key"] for o in kwargs["Delete"]["Objects"]] if method == "delete_objects" else [kwargs.get("Key")]
        seen.append((method, [k for k in keys if k]))
        return await send(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", recorded)
    return seen


def chunk_keys(keys: list[str]) -> list[str]:
    return [k for k in keys if "/acts/" in k and "/c/" in k or "/meta/" in k]


def files_per_chunk(url: str) -> int:
    manifest = actstore.open_store(url).manifest
    return len(manifest.hooks) + len(meta_tables(manifest))


def test_a_fresh_store_is_written_without_reading_back_or_deleting(s3, local_ref, requests):
    url = f"{s3}/fresh/store"
    actstore.ingest(model=tiny_model("addition"), out=url, **ARGS)
    reads = [k for m, keys in requests if m in ("get_object", "head_object") for k in keys]
    assert chunk_keys(reads) == []  # every chunk file's PUT was proved by its ETag
    deleted = [k for m, keys in requests if m.startswith("delete") for k in keys]
    assert deleted == ["fresh/.store.lock"]  # nothing existed to discard; the lock goes at the end
    puts = chunk_keys([k for m, keys in requests if m == "put_object" for k in keys])
    assert len(puts) == len(set(puts)) == 3 * files_per_chunk(url)  # each file once
    assert remote_tree(url) == local_ref  # commit records with the digests a local ingest records


def test_a_resume_deletes_only_what_the_uncommitted_chunk_left(s3, local_ref, requests):
    url = f"{s3}/resume/store"
    actstore.ingest(model=tiny_model("addition"), out=url, **ARGS)
    fs, root = fsspec.url_to_fs(url, use_listings_cache=False)
    fs.rm_file(f"{root}/_commits/00002.json")  # chunk 2's files stay, as after a crash before its commit
    fs.rm_file(f"{root}/_commits/complete.json")
    left = sorted(k.removeprefix("actstore-test/") for k in fs.find(root) if "/c/2/" in k or "part-00002" in k)
    requests.clear()
    assert actstore.ingest(model=tiny_model("addition"), out=url, **ARGS).finished
    deleted = [k for m, keys in requests if m.startswith("delete") for k in keys]
    assert sorted(deleted) == sorted([*left, "resume/.store.lock"]) and len(left) == files_per_chunk(url)
    assert remote_tree(url) == local_ref


def test_put_digest_needs_the_etag_of_exactly_those_bytes():
    data = b"\x00chunk bytes\x12\x34\x56\x78"
    md5 = hashlib.md5(data).hexdigest()
    assert put_digest(data, {"ETag": f'"{md5}"'}) == bytes_digest_list(data)
    assert put_digest(data, {"ETag": f'"{md5}"'}, tail=True) == [len(data), hashlib.sha256(data).hexdigest(),
                                                                 "12345678"]
    for response in ({"ETag": f'"{hashlib.md5(data[:-1]).hexdigest()}"'},  # the server holds other bytes
                     {"ETag": f'"{md5}-2"'},  # a multipart upload's ETag is no MD5 of the object
                     {"ETag": '"0123456789abcdef0123456789abcdef"'},  # SSE-KMS: an opaque ETag
                     {}, None):  # a filesystem that says nothing (memory://)
        assert put_digest(data, response) is None
