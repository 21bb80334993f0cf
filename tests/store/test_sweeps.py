"""Intervention sweeps stored in a store (actstore.store.sweeps), no model involved: parts and
commit records written by SweepWriter on the synthetic store, resumed after the last committed
part, read back only when complete and checked, and every kind of damage named on read
(StoreCorruptError) and by `verify`.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest
from synthetic_store import N

from actstore.errors import StoreCorruptError
from actstore.store import open_store
from actstore.store.sweeps import (
    COMMITS_DIR, COMPLETE, ROW_SCHEMA, SPEC, SWEEPS, SweepWriter, canonical, checked_parts, commit_file, list_sweeps,
    part_file, read_sweep, sweep_id, sweep_problems,
)
from actstore.store.verify import verify

PART = 3


def spec(**changes) -> dict:
    d = {"kind": "patch", "hook": "z", "grain": "head", "start": 0, "stop": N, "pos": None, "mode": "denoise",
         "method": None, "mean_over": None, "metrics": ["logit_diff"], "receivers": None, "receiver_input": None,
         "seed": 0, "batch": 2, "rows": 8, "part": PART, "format": 1}
    d.update(changes)
    d["n_parts"] = -(-(d["stop"] - d["start"]) // d["part"])
    return d


def ranges(d: dict) -> list[tuple[int, int]]:
    return [(a, min(a + d["part"], d["stop"])) for a in range(d["start"], d["stop"], d["part"])]


def rows(d: dict, start: int, stop: int) -> pl.DataFrame:
    """Known rows for examples [start, stop): two heads, value = example id + head / 10."""
    ex = np.repeat(np.arange(start, stop), 2)
    head = np.tile([0, 1], stop - start)
    n = ex.shape[0]
    return pl.DataFrame({
        "sweep": [sweep_id(d)] * n, "kind": ["patch"] * n, "hook": ["z"] * n, "layer": np.zeros(n, np.int64),
        "head": head, "pos": [None] * n, "role": [None] * n, "example_id": ex, "answer_idx": np.zeros(n, np.int64),
        "metric": ["logit_diff"] * n, "value": (ex + head / 10).astype(np.float32),
        "clean": np.ones(n, np.float32), "corrupted": np.zeros(n, np.float32),
    }, schema=ROW_SCHEMA)


def write(root, d: dict, parts: int | None = None) -> SweepWriter:
    w = SweepWriter(root, d, ranges(d), open_store(root).ledger.store_sha256)
    for k in range(w.committed, len(w.ranges) if parts is None else parts):
        w.write_part(k, rows(d, *w.ranges[k]))
    return w


def sha(root) -> str:
    return open_store(root).ledger.store_sha256


def test_a_complete_sweep_reads_back_its_rows(synthetic):
    d = spec()
    w = write(synthetic, d)
    assert w.complete and w.committed == d["n_parts"] == 4
    sid = sweep_id(d)
    assert sid == w.sweep and len(sid) == 16
    assert (synthetic / SWEEPS / sid / SPEC).read_bytes() == canonical(d)
    got = read_sweep(synthetic, sid, sha(synthetic))
    assert got.schema == pl.Schema(ROW_SCHEMA)
    assert got["example_id"].to_list() == list(np.repeat(np.arange(N), 2))
    np.testing.assert_array_equal(got["value"].to_numpy(), (np.repeat(np.arange(N), 2) + np.tile([0, .1], N))
                                  .astype(np.float32))
    (info,) = list_sweeps(synthetic)
    assert (info.sweep, info.n_parts, info.committed, info.complete) == (sid, 4, 4, True)
    report = verify(synthetic)
    assert report.problems == [] and not any(sid in n for n in report.notes)


def test_an_interrupted_sweep_resumes_after_its_last_committed_part(synthetic, tmp_path):
    d = spec()
    whole = tmp_path / "whole"
    shutil.copytree(synthetic, whole)
    write(whole, d)
    w = write(synthetic, d, parts=2)
    assert not w.complete
    sid = sweep_id(d)
    (info,) = list_sweeps(synthetic)
    assert (info.committed, info.complete) == (2, False)
    with pytest.raises(StoreCorruptError, match="not complete"):
        read_sweep(synthetic, sid, sha(synthetic))
    report = verify(synthetic)  # unfinished is a note, not damage
    assert report.problems == [] and any(sid in n and "unfinished" in n for n in report.notes)
    # a part file written but never committed (a crash before its record) is redone
    part_file(synthetic, sid, 2).write_bytes(b"half a parquet file")
    again = SweepWriter(synthetic, d, ranges(d), sha(synthetic))
    assert again.committed == 2
    with pytest.raises(RuntimeError, match="out of order"):
        again.write_part(3, rows(d, *again.ranges[3]))
    for k in (2, 3):
        again.write_part(k, rows(d, *again.ranges[k]))
    assert again.complete
    for k in range(4):  # byte for byte what the uninterrupted sweep wrote
        assert part_file(synthetic, sid, k).read_bytes() == part_file(whole, sid, k).read_bytes()
        assert commit_file(synthetic, sid, k).read_bytes() == commit_file(whole, sid, k).read_bytes()
    assert (synthetic / SWEEPS / sid / COMPLETE).read_bytes() == (whole / SWEEPS / sid / COMPLETE).read_bytes()


def test_a_damaged_part_in_the_committed_prefix_is_redone_with_everything_after_it(synthetic):
    d = spec()
    write(synthetic, d, parts=3)
    sid = sweep_id(d)
    data = bytearray(part_file(synthetic, sid, 1).read_bytes())
    data[len(data) // 2] ^= 0xFF
    part_file(synthetic, sid, 1).write_bytes(bytes(data))
    w = SweepWriter(synthetic, d, ranges(d), sha(synthetic))
    assert w.committed == 1
    assert not commit_file(synthetic, sid, 2).exists()  # records after the prefix are dropped


def test_another_store_record_starts_the_sweep_over(synthetic):
    d = spec()
    write(synthetic, d, parts=2)
    w = SweepWriter(synthetic, d, ranges(d), "0" * 64)
    assert w.committed == 0


def flip_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def edit_spec(path) -> None:
    d = json.loads(path.read_text())
    d["mode"] = "noise"
    path.write_bytes(canonical(d))


def edit_record(path) -> None:  # a consistent-looking record for other bytes: complete.json no longer agrees
    d = json.loads(path.read_text())
    d["file"] = [d["file"][0], "0" * 64]
    path.write_bytes(canonical(d))


@pytest.mark.parametrize(("damage", "target", "named"), [
    ("flip", "part-00001.parquet", "part-00001.parquet"),
    ("delete", "part-00002.parquet", "part-00002.parquet"),
    ("delete", f"{COMMITS_DIR}/00001.json", f"{COMMITS_DIR}/00001.json"),
    ("edit_record", f"{COMMITS_DIR}/00003.json", f"{COMMITS_DIR}/00003.json"),
    ("flip", COMPLETE, COMPLETE),
    ("edit_spec", SPEC, SPEC),
    ("delete", SPEC, SPEC),
])
def test_damage_to_a_complete_sweep_is_named_on_read_and_by_verify(synthetic, damage, target, named):
    d = spec()
    write(synthetic, d)
    sid = sweep_id(d)
    path = synthetic / SWEEPS / sid / target
    harm = {"flip": flip_byte, "delete": lambda p: p.unlink(), "edit_spec": edit_spec, "edit_record": edit_record}
    harm[damage](path)
    with pytest.raises(StoreCorruptError, match=f"sweep {sid}") as e:
        checked_parts(synthetic, sid, sha(synthetic))
    assert named in str(e.value)
    report = verify(synthetic)
    if target == SPEC and damage == "delete":  # indistinguishable from a sweep killed before its spec
        assert any(sid in n for n in report.notes)
    else:
        assert any(sid in p and named in p for p in report.problems), report.problems


def test_a_sweep_read_against_another_store_record_is_refused(synthetic):
    d = spec()
    write(synthetic, d)
    with pytest.raises(StoreCorruptError, match="another store record"):
        read_sweep(synthetic, sweep_id(d), "f" * 64)


def test_stray_entries_under_interventions_are_verify_problems(synthetic):
    d = spec()
    write(synthetic, d)
    base = synthetic / SWEEPS
    (base / "notes").mkdir()
    (base / "README.txt").write_text("mine")
    assert [s.sweep for s in list_sweeps(synthetic)] == [sweep_id(d)]  # readers skip them
    problems, _ = sweep_problems(synthetic, sha(synthetic))
    assert sorted(problems) == [f"{SWEEPS}/README.txt is not a sweep directory",
                                f"{SWEEPS}/notes is not a sweep directory"]
    assert set(problems) <= set(verify(synthetic).problems)


def test_a_sweep_copied_under_another_id_is_refused(synthetic):
    d = spec()
    write(synthetic, d)
    other = "0123456789abcdef"
    shutil.copytree(synthetic / SWEEPS / sweep_id(d), synthetic / SWEEPS / other)
    with pytest.raises(StoreCorruptError, match=f"sweep {other}: {SPEC} does not match"):
        list_sweeps(synthetic)
    assert any(other in p for p in verify(synthetic).problems)


def test_a_file_named_like_a_sweep_is_a_verify_problem_not_a_crash(synthetic):
    d = spec()
    write(synthetic, d)
    (synthetic / SWEEPS / "0123456789abcdef").write_text("not a directory")
    assert [s.sweep for s in list_sweeps(synthetic)] == [sweep_id(d)]
    problems, _ = sweep_problems(synthetic, sha(synthetic))
    assert any("0123456789abcdef" in p for p in problems), problems
