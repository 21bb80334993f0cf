"""verify: a clean store passes; each kind of damage is found and named by array/table and chunk."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import zarr

from actstore import open_store
from actstore.errors import IncompleteStoreWarning, StoreCorruptError, StoreNotFoundError
from actstore.store.commits import commit_path, file_digest, read_commit
from actstore.store.integrity import write_complete_record
from actstore.store.verify import verify

Z1 = "acts/blocks.1.attn.hook_z/c/1/0/0/0"


def flip_byte(path, at=-20):
    data = bytearray(path.read_bytes())
    data[at] ^= 0x10
    path.write_bytes(bytes(data))


def test_clean_store_passes_with_a_real_decomposition(real_store):
    report = verify(real_store)
    assert report.ok, report.problems
    assert (report.committed_chunks, report.n_chunks, report.n_examples) == (3, 3, 40)
    d = report.decomposition
    assert d["status"] == "checked" and d["n_answers"] == 160
    assert 0 < d["max_abs_error"] < 0.1 and 0 < d["worst_error"] < d["tolerance"]  # float16 rounding
    assert 0 < d["worst_ratio"] < 0.5  # per-answer rounding bound (x2 safety): real errors sit well inside
    assert report.lines()[-1] == "OK"


def test_flipped_byte_in_an_array_chunk_is_named(real_store):
    flip_byte(real_store / Z1)
    report = verify(real_store)
    assert report.problems == [f"acts/blocks.1.attn.hook_z chunk 1: checksum of {Z1} differs from its commit record"]


def test_zarr_crc32c_catches_damage_even_without_the_commit_record(real_store):
    flip_byte(real_store / Z1)
    rec = read_commit(real_store, 1)
    rec.files[Z1] = file_digest(real_store / Z1)  # records that agree with the damaged file
    commit_path(real_store, 1).write_text(rec.to_json())
    write_complete_record(real_store, 3)
    report = verify(real_store)
    assert len(report.problems) == 1
    assert report.problems[0].startswith("acts/blocks.1.attn.hook_z chunk 1:") and "checksum" in report.problems[0]


def test_swapped_chunk_with_valid_crc_is_caught(real_store):
    src = real_store / "acts/blocks.0.mlp.hook_post/c/0/0/0"
    shutil.copy(src, real_store / "acts/blocks.0.mlp.hook_post/c/1/0/0")
    assert verify(real_store).problems == [
        "acts/blocks.0.mlp.hook_post chunk 1: checksum of acts/blocks.0.mlp.hook_post/c/1/0/0 "
        "differs from its commit record"]


def test_wrong_values_with_consistent_checksums_fail_the_decomposition(real_store):
    """Rewrite chunk 2 of an MLP with other values and a matching commit record: only the decomposition can tell."""
    arr = zarr.open_array(real_store / "acts/blocks.1.mlp.hook_post", mode="r+")
    arr[32:40] = arr[32:40] * 1.5
    rel = "acts/blocks.1.mlp.hook_post/c/2/0/0"
    rec = read_commit(real_store, 2)
    rec.files[rel] = file_digest(real_store / rel)
    commit_path(real_store, 2).write_text(rec.to_json())
    write_complete_record(real_store, 3)
    report = verify(real_store)
    assert len(report.problems) == 1
    assert re.match(r"decomposition chunk 2: components miss the stored logit of example 3\d answer \d by ",
                    report.problems[0])


def test_missing_and_damaged_meta_parts(real_store):
    (real_store / "meta/tokens/part-00000.parquet").unlink()
    flip_byte(real_store / "meta/outputs/part-00002.parquet", at=40)
    problems = verify(real_store).problems
    assert "meta/tokens chunk 0: file meta/tokens/part-00000.parquet is missing" in problems
    assert ("meta/outputs chunk 2: checksum of meta/outputs/part-00002.parquet "
            "differs from its commit record") in problems


def test_commit_records_out_of_order_and_bad_metadata(real_store):
    commit_path(real_store, 1).unlink()
    meta = real_store / "acts/blocks.0.attn.hook_z/zarr.json"
    d = json.loads(meta.read_text())
    d["dimension_names"] = ["example", "pos", "h", "d_head"]
    meta.write_text(json.dumps(d))
    report = verify(real_store)
    assert report.committed_chunks == 1 and report.n_examples == 16
    assert any("commit record(s) for chunk(s) [2] follow uncommitted chunk 1" in p for p in report.problems)
    assert any(p.startswith("array acts/blocks.0.attn.hook_z: dimension_names") for p in report.problems)


def test_damaged_weight_is_named(real_store):
    flip_byte(real_store / "params/unembed.W_U/c.0.0")
    problems = verify(real_store).problems
    assert problems and problems[0].startswith("weight params/unembed.W_U: unreadable")


def test_partial_store_verifies_committed_chunks_only(real_store, real_store_template):
    (real_store / "_commits/complete.json").unlink()  # an ingest stopped before its last commit
    commit_path(real_store, 2).unlink()
    (real_store / "acts/blocks.0.attn.hook_z/c/2/0/0/0").unlink()  # in flight: not checked
    report = verify(real_store)
    assert report.ok and report.committed_chunks == 2 and report.decomposition["n_answers"] == 128
    assert not report.passed and report.lines()[-1].startswith("INCOMPLETE: 2/3 chunks committed, all intact")
    with pytest.warns(IncompleteStoreWarning, match="holds 32 of 40 examples"):
        partial = open_store(real_store)
    assert partial.n_examples == 32 and not partial.finished and not partial.complete
    assert open_store(real_store_template).finished


def test_deleted_last_commit_record_of_a_finished_store_is_bad(real_store):
    commit_path(real_store, 2).unlink()
    report = verify(real_store)
    assert not report.passed
    assert "the ingest finished, but commit record _commits/00002.json is missing" in report.problems
    with pytest.raises(StoreCorruptError, match="commit record _commits/00002.json is missing"):
        open_store(real_store)


def test_synthetic_store_skips_the_decomposition(synthetic):
    report = verify(synthetic)
    assert report.ok and report.decomposition["status"] == "skipped"


def test_not_a_store():
    with pytest.raises(StoreNotFoundError):
        verify("/nonexistent/store")


def test_info_sizes_and_ratio(real_store):
    from actstore.store.info import format_info, store_info

    info = store_info(real_store)
    store = open_store(real_store)
    assert info["n_examples"] == 40 and info["committed_chunks"] == 3
    z = next(a for a in info["arrays"] if a.name == "blocks.0.attn.hook_z")
    assert z.raw_bytes == 40 * 14 * 2 * 16 * 2  # example x pos x head x d_head x float16
    files = (real_store / "acts/blocks.0.attn.hook_z/c").rglob("*")
    assert z.disk_bytes == sum(f.stat().st_size for f in files if f.is_file())
    assert info["acts_raw_bytes"] == sum(h.example_bytes for h in store.manifest.hooks) * 40
    assert info["compression_ratio"] == pytest.approx(info["acts_raw_bytes"] / info["acts_disk_bytes"])
    text = format_info(info)
    assert "40 of 40 committed (3/3 chunks of 16)" in text and "blocks.0.attn.hook_z" in text
    assert np.isfinite(info["compression_ratio"])


def test_damaged_cached_table_is_a_note_not_a_failure(real_store):
    open_store(real_store).sql("SELECT count(*) FROM dla").fetchall()  # caches dla in derived/
    cached = next((real_store / "derived").glob("dla-*.parquet"))
    flip_byte(cached, at=len(cached.read_bytes()) // 2)
    report = verify(real_store)
    assert report.passed  # never used as it is: the next query recomputes it
    notes = [ln for ln in report.lines() if ln.startswith("NOTE: ")]
    assert len(notes) == 1 and f"derived/{cached.name}" in notes[0] and report.lines()[-1] == "OK"


def test_edited_manifest_and_array_metadata_are_bad(real_store):
    root = json.loads((real_store / "zarr.json").read_text())
    root["attributes"]["actstore"]["width"] += 1  # queries would read a wrong pos axis
    (real_store / "zarr.json").write_text(json.dumps(root))
    with pytest.raises(StoreCorruptError, match="manifest .* was changed after the store was created"):
        open_store(real_store)
    assert "the manifest (zarr.json) was changed after the store was created" in verify(real_store).problems


def test_dropped_crc32c_codec_is_bad(real_store):
    meta = real_store / "acts/blocks.0.mlp.hook_post/zarr.json"
    d = json.loads(meta.read_text())
    d["codecs"] = [c for c in d["codecs"] if c["name"] != "crc32c"]
    d["fill_value"] = 1.0
    meta.write_text(json.dumps(d))
    problems = verify(real_store).problems
    assert any(p.startswith("array metadata acts/blocks.0.mlp.hook_post/zarr.json differs from its record")
               for p in problems)
    with pytest.raises(StoreCorruptError, match="metadata file acts/blocks.0.mlp.hook_post/zarr.json differs"):
        open_store(real_store).read("blocks.0.mlp.hook_post")


def test_deleted_chunks_and_weights_are_errors_on_read_and_in_verify(real_store):
    (real_store / "acts/blocks.0.mlp.hook_post/c/1/0/0").unlink()
    (real_store / "params/blocks.0.attn.W_Q/c.0.0.0").unlink()
    store = open_store(real_store)
    with pytest.raises(StoreCorruptError, match="chunk file acts/blocks.0.mlp.hook_post/c/1/0/0 is missing"):
        store.read("blocks.0.mlp.hook_post", 16, 32)
    assert store.read("blocks.0.mlp.hook_post", 0, 16).shape[0] == 16  # other chunks still read
    with pytest.raises(StoreCorruptError, match="weight file params/blocks.0.attn.W_Q/c.0.0.0 is missing"):
        store.param("blocks.0.attn.W_Q")
    problems = verify(real_store).problems
    assert "acts/blocks.0.mlp.hook_post chunk 1: file acts/blocks.0.mlp.hook_post/c/1/0/0 is missing" in problems
    assert any(p.startswith("weight params/blocks.0.attn.W_Q: unreadable") for p in problems)


def test_weights_are_rehashed_against_the_manifest(real_store):
    """A weight rewritten with its records updated to match still fails the recomputed weights_sha256."""
    from actstore.store.integrity import write_store_record

    arr = zarr.open_array(real_store / "params/blocks.1.attn.W_O", mode="r+")
    arr[...] = arr[...] * 2
    m = open_store(real_store).manifest
    write_store_record(real_store, m)  # consistent records: only the recomputed digest can tell
    store_sha = file_digest(real_store / "_commits/store.json")[1]
    for k in range(3):
        rec = read_commit(real_store, k)
        commit_path(real_store, k).write_text(rec.to_json().replace(rec.store, store_sha))
    write_complete_record(real_store, 3)
    problems = verify(real_store).problems
    assert any("do not hash to the manifest's weights_sha256" in p for p in problems), problems


def test_lost_completion_record_alone_reads_the_same_and_says_so(real_store):
    before = open_store(real_store).read("blocks.0.attn.hook_z")
    (real_store / "_commits/complete.json").unlink()  # as an ingest stopped after its last commit
    with pytest.warns(IncompleteStoreWarning, match="has all 40 examples committed but no completion record"):
        store = open_store(real_store)
    np.testing.assert_array_equal(store.read("blocks.0.attn.hook_z"), before)
    report = verify(real_store)
    assert report.ok and not report.passed and report.lines()[-1].startswith("INCOMPLETE: 3/3 chunks")
