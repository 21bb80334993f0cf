"""commits.new_entry_dirs: the directories whose entries change when a file is created with its missing parents
(what the writer fsyncs before a chunk's commit record)."""

from __future__ import annotations

from actstore.store.commits import new_entry_dirs


def test_missing_parents_and_the_directory_they_are_made_in(tmp_path):
    (tmp_path / "c").mkdir()
    target = tmp_path / "c" / "3" / "0" / "0"
    assert new_entry_dirs(target) == [tmp_path / "c" / "3" / "0", tmp_path / "c" / "3", tmp_path / "c"]


def test_existing_parent_only(tmp_path):
    (tmp_path / "part").mkdir()
    assert new_entry_dirs(tmp_path / "part" / "part-00001.parquet") == [tmp_path / "part"]
