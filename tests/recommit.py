"""Forge a committed store for tests: after a test edits one file of a chunk, redo that chunk's commit record
and the completion record so every integrity check passes, as a buggy writer or another tool could leave it.

    recommit(root, chunk, rel, n_chunks) -> None
        chunk `chunk`'s record names `rel`'s new digest; the completion record is rewritten for `n_chunks`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from actstore.store.commits import file_digest, read_commit, write_commit
from actstore.store.integrity import write_complete_record


def recommit(root: Path, chunk: int, rel: str, n_chunks: int) -> None:
    record = read_commit(root, chunk)
    if record is None:
        raise FileNotFoundError(f"chunk {chunk} of {root} has no commit record to redo")
    write_commit(root, dataclasses.replace(record, files={**record.files, rel: file_digest(root / rel)}))
    (root / "_commits/complete.json").unlink()
    write_complete_record(root, n_chunks)
