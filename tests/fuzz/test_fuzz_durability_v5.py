"""Durability of a chunk before its commit record: the record must reach the disk only after every file it
names is durable, names included. fsync of a new file makes its bytes durable, not its directory entry
(POSIX: fsync the directory too), so after a power cut a record could name a chunk file whose entry was lost.
On ext4 and XFS the later fsync of `_commits/` commits the journal with the earlier entries, so a process kill
(the crash tests) never shows it; another filesystem (or a power cut in between) could.

Found by review (V, session 5); fixed in session 6: the writer fsyncs each directory that got a new entry for
the chunk (store/commits.new_entry_dirs), once per chunk, after the files and before the record.
The test observes the real fsync and rename calls (it wraps, never replaces, them)."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path


sys.path.insert(0, str(Path(__file__).parents[1] / "ingest"))
from tiny_models import tiny_model  # noqa: E402

import actstore  # noqa: E402
from actstore.store.commits import read_commit  # noqa: E402


def test_each_chunk_file_and_its_directory_are_fsynced_before_its_record(tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []  # ('fsync', path) and ('record', path), in the order they happened
    lock = threading.Lock()
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        real_fsync(fd)
        with lock:
            events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))

    def replace(src, dst, **kw) -> None:
        real_replace(src, dst, **kw)
        if Path(dst).parent.name == "_commits":
            with lock:
                events.append(("record", str(Path(dst).resolve())))

    out = (tmp_path / "s").resolve()
    model = tiny_model("addition")
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    actstore.ingest("addition", model, 24, 0, out, chunk=8, batch=8, quiet=True)
    monkeypatch.undo()
    missing = []
    for k in range(3):
        record = read_commit(out, k)
        assert record is not None
        put = events.index(("record", str(out / "_commits" / f"{k:05d}.json")))
        synced = {path for what, path in events[:put] if what == "fsync"}
        for rel in record.files:
            for need in (out / rel, (out / rel).parent):
                if str(need) not in synced:
                    missing.append(str(need.relative_to(out)))
    assert missing == []
