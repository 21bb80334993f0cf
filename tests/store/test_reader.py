"""The store read API (open_store / Store) on a synthetic store written through the writer."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from synthetic_store import CHUNK, N, synthetic_values, write_synthetic

from actstore import open_store
from actstore.errors import (InvalidParameterError, StoreFormatError, StoreNotFoundError, UnknownColumnError,
                             UnknownHookError)
from actstore.store.writer import ChunkWriter


def test_read_api(synthetic):
    store = open_store(synthetic)
    values = synthetic_values()
    assert store.path == synthetic and store.n_examples == N and store.complete
    assert store.chunk_size == CHUNK and store.n_answers == 2
    assert list(store.chunks()) == [(0, 4), (4, 8), (8, 10)]
    assert store.hooks == ["blocks.0.attn.hook_z", "blocks.0.attn.hook_pattern"]
    assert store.config["n_heads"] == 2
    info = store.hook_info("blocks.0.attn.hook_pattern")
    assert (info.positions, info.dims, info.shape, info.dtype) == (
        "answer", ("example", "head", "answer", "key_pos"), (N, 2, 2, 5), "float16")
    np.testing.assert_array_equal(store.read("blocks.0.attn.hook_z"), values["blocks.0.attn.hook_z"])
    np.testing.assert_array_equal(store.read("blocks.0.attn.hook_pattern", 3, 9),
                                  values["blocks.0.attn.hook_pattern"][3:9])
    assert store.read("blocks.0.attn.hook_z", 5, 5).shape == (0, 5, 2, 3)
    assert store.param_names == ["blocks.0.attn.W_O", "embed.W_E"]
    np.testing.assert_array_equal(store.param("embed.W_E"), np.arange(18, dtype=np.float32).reshape(3, 6))
    assert store.param("blocks.0.attn.W_O").dtype == np.float32
    assert store.examples["example_id"].to_list() == list(range(N)) and "label" in store.examples.columns
    assert store.tokens.height == N * 5 and store.tokens["role"].null_count() == 2 * N
    assert store.outputs.height == 2 * N
    assert store.derived_dir == synthetic / "derived"


def test_meta_columns_read_part_by_part(synthetic):
    store = open_store(synthetic)
    cols = store.meta_table("examples", ["label", "example_id"])
    assert cols.columns == ["label", "example_id"]
    assert cols.equals(store.examples.select("label", "example_id"))
    parts = list(store.meta_parts("examples", ["example_id"]))
    assert [p.height for p in parts] == [4, 4, 2]  # one per committed chunk
    assert [p["example_id"].to_list() for p in parts] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(UnknownColumnError, match="meta/examples has no column 'lable'"):
        store.meta_table("examples", ["lable"])
    assert "examples" in vars(store)  # loaded by the comparison above: selected from, the same rows
    assert store.meta_table("examples", ["label", "example_id"]).equals(cols)
    with pytest.raises(UnknownColumnError, match="meta/examples has no column 'lable'"):
        store.meta_table("examples", ["lable"])


def test_bad_reads_name_what_to_fix(synthetic):
    store = open_store(synthetic)
    with pytest.raises(UnknownHookError, match=r"hook_zz.*closest stored: blocks\.0\.attn\.hook_z"):
        store.hook_info("blocks.0.attn.hook_zz")
    with pytest.raises(InvalidParameterError, match=r"rows \[8, 12\) are outside the 10 committed"):
        store.read("blocks.0.attn.hook_z", 8, 12)
    with pytest.raises(InvalidParameterError, match="start must be an integer"):
        store.read("blocks.0.attn.hook_z", 1.5)
    with pytest.raises(InvalidParameterError, match="no weight 'embed.W_e'.*closest: embed.W_E"):
        store.param("embed.W_e")


def test_readers_see_committed_chunks_only(tmp_path):
    path = write_synthetic(tmp_path / "s", chunks=2)
    store = open_store(path)
    assert store.n_examples == 8 and not store.complete and list(store.chunks()) == [(0, 4), (4, 8)]
    assert store.examples.height == 8 and store.outputs["example_id"].max() == 7
    with pytest.raises(InvalidParameterError, match="outside the 8 committed"):
        store.read("blocks.0.attn.hook_z", 0, 10)
    # chunk 2 written but not committed: still invisible
    values = synthetic_values()
    from synthetic_store import synthetic_meta

    w = ChunkWriter(path, store.manifest)
    for name, arr in w.arrays.items():
        arr[8:10] = values[name][8:10]
    assert open_store(path).n_examples == 8
    w.write_chunk(2, {h: v[8:10] for h, v in values.items()}, synthetic_meta(8, 10))
    assert store.n_examples == 8  # a snapshot
    assert store.refresh().n_examples == 10 and open_store(path).examples.height == 10


def test_empty_store_has_typed_empty_tables(tmp_path):
    store = open_store(write_synthetic(tmp_path / "s", chunks=0))
    assert store.n_examples == 0 and list(store.chunks()) == []
    assert store.examples.height == 0 and "example_id" in store.examples.columns
    assert store.outputs.columns[:2] == ["example_id", "answer_idx"]
    assert store.read("blocks.0.attn.hook_z").shape == (0, 5, 2, 3)


def test_open_errors(tmp_path):
    with pytest.raises(StoreNotFoundError, match="does not exist"):
        open_store(tmp_path / "nowhere")
    with pytest.raises(StoreNotFoundError, match="not an actstore store"):
        open_store(tmp_path)
    (tmp_path / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
    with pytest.raises(StoreFormatError, match="not an actstore store"):
        open_store(tmp_path)
    (tmp_path / "zarr.json").write_text("{not json")
    with pytest.raises(StoreFormatError, match="not valid Zarr"):
        open_store(tmp_path)


def test_xarray_reads_the_arrays(synthetic):
    xr = pytest.importorskip("xarray")
    ds = xr.open_zarr(synthetic / "acts", consolidated=False)
    z = ds["blocks.0.attn.hook_z"]
    assert z.dims == ("example", "pos", "head", "d_head")
    np.testing.assert_array_equal(z.values, synthetic_values()["blocks.0.attn.hook_z"])
    w = xr.open_zarr(synthetic / "params", consolidated=False)["blocks.0.attn.W_O"]
    assert w.dims == ("head", "d_head", "d_model")


def test_reading_needs_no_torch_or_transformer_lens(synthetic):
    code = (
        "import sys, actstore\n"
        f"s = actstore.open_store({str(synthetic)!r})\n"
        "s.read('blocks.0.attn.hook_z'); s.param('embed.W_E'); s.examples; s.tokens; s.outputs\n"
        "from actstore.store.verify import verify; from actstore.store.info import store_info\n"
        f"assert verify({str(synthetic)!r}).ok; store_info({str(synthetic)!r})\n"
        "bad = [m for m in ('torch', 'transformer_lens') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_part_with_other_example_ids_is_refused_when_a_scan_reaches_it(tmp_path, monkeypatch):
    import polars as pl
    import synthetic_store

    from actstore.errors import StoreCorruptError
    from actstore.query.chunks import ExampleIndex

    made = synthetic_store.synthetic_meta

    def shifted(start: int, stop: int):  # chunk 1's examples table says 5..8 (committed and recorded as written)
        meta = made(start, stop)
        if start == CHUNK:
            meta["examples"] = meta["examples"].with_columns(pl.col("example_id") + 1)
        return meta

    monkeypatch.setattr(synthetic_store, "synthetic_meta", shifted)
    store = open_store(synthetic_store.write_synthetic(tmp_path / "s"))
    index = ExampleIndex(store)
    assert index.rows(0, CHUNK).example_id.tolist() == list(range(CHUNK))  # the parts before it read fine
    with pytest.raises(StoreCorruptError, match=r"meta/examples part 1: example_id is not 4\.\.7 in order"):
        index.rows(CHUNK, 2 * CHUNK)
