"""commits.file_digest: size, sha256 and crc32c tail of a file, read block by block into one buffer."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from actstore.errors import StoreCorruptError
from actstore.store import commits


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, (1 << 20) - 1, 1 << 20, (1 << 20) + 2, 3 * (1 << 20) + 7])
def test_digest_matches_the_bytes_across_block_edges(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    got = commits.file_digest(path, fsync=True, tail=True)
    assert got == [size, hashlib.sha256(data).hexdigest(), data[-4:].hex()]
    assert commits.file_digest(path) == got[:2]
    assert got == commits.bytes_digest_list(data, tail=True)


def test_small_blocks_keep_the_tail_when_the_last_block_is_short(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commits, "_DIGEST_BLOCK", 8)
    data = bytes(range(19))  # blocks of 8, 8, 3: the tail spans the last two
    path = tmp_path / "f"
    path.write_bytes(data)
    assert commits.file_digest(path, tail=True) == [19, hashlib.sha256(data).hexdigest(), data[-4:].hex()]


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreCorruptError, match="not a regular file"):
        commits.file_digest(tmp_path)
