"""Deferred commits (ChunkWriter(defer_commit=True), what every local ingest uses) when the committer thread
fails: a commit record that cannot be written (its temporary file's name taken by a directory) for a middle
chunk, for the last chunk, or for the completion record is one StoreWriteError line, with no hang; the chunks
committed before it stay committed, nothing uncommitted is left, and the same ingest rerun once the fault is
gone makes exactly the bytes of an uninterrupted ingest."""

from __future__ import annotations

import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "ingest"))
from helpers import tree_bytes  # noqa: E402
from tiny_models import tiny_model  # noqa: E402

import actstore  # noqa: E402
from actstore.errors import IncompleteStoreWarning, StoreWriteError  # noqa: E402
from actstore.store.commits import commit_files, commit_path  # noqa: E402
from actstore.store.verify import verify  # noqa: E402

KW = dict(hooks=["blocks.0.attn.hook_z", "blocks.1.hook_resid_post"], chunk=8, batch=4, quiet=True)
N = 36  # chunks 0..4, the last of 4 examples
LAST = 4


@pytest.fixture(scope="module")
def model():
    return tiny_model("addition")


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory) -> Path:
    return actstore.ingest("addition", model, N, 0, tmp_path_factory.mktemp("ref") / "s", **KW).path


@pytest.fixture(autouse=True)
def no_hang() -> Iterator[None]:
    def hung(*_: object) -> None:
        raise TimeoutError("the ingest hung after its committer failed")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def crashed_at(reference: Path, dest: Path, first: int) -> Path:
    """A copy of the reference as a crash before chunk `first`'s commit leaves it (later chunks' files too)."""
    root = shutil.copytree(reference, dest)
    (root / "_commits/complete.json").unlink()
    for k in range(first, LAST + 1):
        commit_path(root, k).unlink()
    return root


@pytest.mark.parametrize("failing", [1, LAST], ids=["middle", "last"])
def test_a_commit_that_cannot_be_written_is_one_line_and_resumes(model, reference, tmp_path, failing):
    root = crashed_at(reference, tmp_path / "s", 1)
    blocker = root / "_commits" / f".{commit_path(root, failing).name}.tmp"
    blocker.mkdir()
    with pytest.raises(StoreWriteError) as e:
        actstore.ingest("addition", model, N, 0, root, **KW)
    text = str(e.value)
    assert "\n" not in text and "resume" in text, text
    assert commit_files(root) == list(range(failing))  # the records before it, none after
    # what is committed is whole and checked; the chunks after it left no file behind
    with pytest.warns(IncompleteStoreWarning):
        partial = actstore.open_store(root)
    assert partial.n_examples == failing * 8
    assert partial.examples["example_id"].to_list() == list(range(failing * 8))
    for k in range(failing, LAST + 1):
        assert not list(root.glob(f"meta/*/part-{k:05d}.parquet")), k
        assert not [p for p in root.glob(f"acts/*/c/{k}/**/*") if p.is_file()], k
    assert [p for p in root.glob(f"acts/*/c/{failing - 1}/**/*") if p.is_file()]  # the pattern finds chunks
    blocker.rmdir()
    actstore.ingest("addition", model, N, 0, root, **KW)
    assert tree_bytes(root) == tree_bytes(reference)


def test_a_completion_record_that_cannot_be_written_is_one_line(model, reference, tmp_path):
    root = crashed_at(reference, tmp_path / "s", 3)
    blocker = root / "_commits" / ".complete.json.tmp"
    blocker.mkdir()
    with pytest.raises(StoreWriteError) as e:
        actstore.ingest("addition", model, N, 0, root, **KW)
    assert "\n" not in str(e.value)
    assert commit_files(root) == list(range(LAST + 1)) and not (root / "_commits/complete.json").exists()
    blocker.rmdir()
    actstore.ingest("addition", model, N, 0, root, **KW)
    assert tree_bytes(root) == tree_bytes(reference) and verify(root).passed
