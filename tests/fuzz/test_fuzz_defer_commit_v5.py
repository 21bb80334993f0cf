"""What a SIGKILL leaves while the deferred writer has written chunk k+1's files and chunk k's commit is still
pending: chunks k and k+1 without records (k whole, k+1 torn), temporary files of the part and record writes,
and Zarr's `<chunk>.<uuid>.partial` of the array write cut short. The rerun must end with exactly the files
of an uninterrupted ingest, byte for byte.

Found by review (V, session 5): the resume rewrote the chunks but left Zarr's `.partial` file (up to a whole
chunk of garbage) in the store for good; fixed in ingest/shards.py discard_chunks."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "ingest"))
from helpers import tree_bytes  # noqa: E402
from tiny_models import tiny_model  # noqa: E402

import actstore  # noqa: E402

KW = dict(chunk=8, batch=8, quiet=True)
N = 40  # five chunks


@pytest.fixture(scope="module")
def model():
    return tiny_model("addition")


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory) -> Path:
    return actstore.ingest("addition", model, N, 0, tmp_path_factory.mktemp("ref") / "s", **KW).path


@pytest.mark.parametrize("k", [0, 2])
def test_a_kill_between_a_write_and_the_previous_commit_resumes_to_the_same_files(model, reference, tmp_path, k):
    root = shutil.copytree(reference, tmp_path / "s")
    for j in range(k, N // 8):
        (root / f"_commits/{j:05d}.json").unlink()
    (root / "_commits/complete.json").unlink()
    (root / f"_commits/.{k:05d}.json.tmp").write_bytes(b'{"chunk": ')  # the record's write cut short
    (root / f"meta/examples/.part-{k + 1:05d}.parquet.tmp").write_bytes(b"PAR1")
    for hook in sorted((root / "acts").iterdir())[:2]:
        leaf = next(p for p in (hook / "c" / str(k + 1)).rglob("*") if p.is_file())
        leaf.write_bytes(leaf.read_bytes()[: leaf.stat().st_size // 2])  # chunk k+1 torn
        (leaf.parent / f"{leaf.name}.{'ab' * 16}.partial").write_bytes(b"\0" * 100)
    assert actstore.open_store(root).n_examples == 8 * k
    actstore.ingest("addition", model, N, 0, root, **KW)
    got, want = tree_bytes(root), tree_bytes(reference)
    assert sorted(set(got) ^ set(want)) == []
    assert [name for name in want if got[name] != want[name]] == []
