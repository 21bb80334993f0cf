"""Direct chunk reads (store/chunk_read.py): the same values as Zarr's read, and every check kept."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from synthetic_store import CHUNK, N, synthetic_manifest, synthetic_meta
from zarr.codecs import BytesCodec, TransposeCodec
from zarr.storage import LocalStore

import actstore
from actstore.errors import StoreCorruptError
from actstore.store.chunk_read import _CAST_BLOCK, ChunkLayout, read_rows, to_float32
from actstore.store.commits import file_digest
from actstore.store.layout import DEFAULT_CODEC, compressors
from actstore.store.manifest import HookInfo
from actstore.store.writer import ChunkWriter, create_store

Z = "blocks.0.attn.hook_z"
CODECS = {"blosc": dict(DEFAULT_CODEC), "zstd": {"name": "zstd", "level": 1, "checksum": "crc32c"},
          "none": {"name": "none", "checksum": "crc32c"}}
# every row range shape: within a chunk, exactly one chunk, across boundaries, into the short last chunk
RANGES = [(0, N), (0, CHUNK), (CHUNK, 2 * CHUNK), (1, 3), (3, 9), (2, N), (8, N), (9, 10), (0, 1)]


def write_store(path: Path, codec: dict, dtype: str = "float16") -> tuple[Path, np.ndarray]:
    """A synthetic store (3 chunks of 4 examples, the last short) of one hook_z array in `codec` / `dtype`."""
    shape = (N, 5, 2, 3)
    m = synthetic_manifest(codec=codec, dtype=dtype,
                           hooks=(HookInfo(Z, "all", ("example", "pos", "head", "d_head"), shape, dtype),))
    values = np.random.default_rng(1).normal(size=shape).astype(dtype)
    create_store(path, m, {"embed.W_E": np.ones((3, 6), dtype=np.float32)})
    w = ChunkWriter(path, m)
    for k, start in enumerate(range(0, N, CHUNK)):
        stop = min(start + CHUNK, N)
        w.write_chunk(k, {Z: values[start:stop]}, synthetic_meta(start, stop))
    return path, values


def both(store, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """(direct read, read through Zarr) of rows [start, stop) of hook_z."""
    direct = store.read(Z, start, stop)
    store.direct_reads = False
    try:
        return direct, store.read(Z, start, stop)
    finally:
        store.direct_reads = True


@pytest.mark.parametrize("codec", sorted(CODECS))
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_direct_reads_give_zarrs_bytes(tmp_path, codec, dtype):
    path, values = write_store(tmp_path / "s", CODECS[codec], dtype)
    store = actstore.open_store(path)
    assert store._layout(Z) is not None  # the direct path is taken for every codec a store writes
    for start, stop in RANGES:
        direct, via_zarr = both(store, start, stop)
        assert direct.dtype == via_zarr.dtype == np.dtype(dtype)
        assert direct.shape == via_zarr.shape == (stop - start, 5, 2, 3)
        assert direct.tobytes() == via_zarr.tobytes() == values[start:stop].tobytes()
        assert direct.flags.writeable and direct.flags.c_contiguous


def test_a_store_without_crc32c_reads_through_zarr(tmp_path):
    path, values = write_store(tmp_path / "s", {"name": "blosc", "cname": "lz4", "checksum": "none"})
    store = actstore.open_store(path)
    assert store._layout(Z) is None  # no crc32c to check a chunk's body against: Zarr and the sha256 record
    np.testing.assert_array_equal(store.read(Z, 3, 9), values[3:9])


@pytest.mark.parametrize("dtype", ["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
                                   "float16", "float32", "float64"])
@pytest.mark.parametrize("codec", sorted(CODECS))
def test_read_rows_matches_zarr_for_every_dtype(tmp_path, dtype, codec):
    """read_rows on a plain Zarr array (records made from its files) returns what Zarr does."""
    rng = np.random.default_rng(2)
    values = (rng.random((11, 3, 4)) * 200 - 100).astype(dtype)
    arr = zarr.create_array(LocalStore(tmp_path / "a"), name="x", shape=values.shape, chunks=(4, 3, 4), dtype=dtype,
                            compressors=compressors(CODECS[codec]), fill_value=0)
    arr[:] = values
    layout = ChunkLayout.of(arr.metadata.to_dict())
    assert layout is not None and layout.dtype == np.dtype(dtype)
    records = {f"x/{p.relative_to(tmp_path / 'a' / 'x').as_posix()}": file_digest(p, tail=True)
               for p in (tmp_path / "a" / "x" / "c").rglob("*") if p.is_file()}
    for start, stop in [(0, 11), (1, 10), (4, 8), (10, 11), (5, 6)]:
        got = read_rows(layout, tmp_path / "a", "x", start, stop, records.get)
        assert got is not None and got.dtype == values.dtype
        assert got.tobytes() == np.asarray(arr[start:stop]).tobytes()


def test_read_rows_reads_through_zarr_for_unrecorded_chunks_and_bad_ranges(tmp_path):
    path, _ = write_store(tmp_path / "s", CODECS["blosc"])
    store = actstore.open_store(path)
    layout = store._layout(Z)
    assert read_rows(layout, path, f"acts/{Z}", 0, 4, lambda rel: None) is None  # no record: Zarr's own checks
    assert read_rows(layout, path, f"acts/{Z}", 0, 4, lambda rel: [1, "ab"]) is None  # sha256 record, no tail
    assert read_rows(layout, path, f"acts/{Z}", 0, N + 1, store.ledger.expected) is None  # past the array
    assert read_rows(layout, path, f"acts/{Z}", 3, 3, store.ledger.expected) is None


def _chunk(path: Path, k: int) -> Path:
    return path / "acts" / Z / "c" / str(k) / "0" / "0" / "0"


def _flip(f: Path, offset: int) -> None:
    data = bytearray(f.read_bytes())
    data[offset] ^= 0x10
    f.write_bytes(bytes(data))


@pytest.mark.parametrize("codec", sorted(CODECS))
@pytest.mark.parametrize("damage", ["flip_body", "flip_tail", "truncate", "swap", "delete", "extend"])
def test_damaged_chunks_are_refused_naming_the_file(tmp_path, codec, damage):
    path, _ = write_store(tmp_path / "s", CODECS[codec])
    f = _chunk(path, 1)
    if damage == "flip_body":  # same size and recorded tail: only the crc32c of the body catches it
        _flip(f, f.stat().st_size // 2)
    elif damage == "flip_tail":
        _flip(f, f.stat().st_size - 1)
    elif damage == "truncate":
        f.write_bytes(f.read_bytes()[:-7])
    elif damage == "swap":  # another chunk's valid bytes in this chunk's place
        shutil.copyfile(_chunk(path, 0), f)
    elif damage == "delete":
        f.unlink()
    else:
        f.write_bytes(f.read_bytes() + b"\0")
    store = actstore.open_store(path)
    np.testing.assert_array_equal(store.read(Z, 0, 4), both(store, 0, 4)[1])  # chunk 0 is still fine
    for start, stop in [(4, 8), (3, 5), (0, N)]:
        with pytest.raises(StoreCorruptError, match=f"chunk file acts/{Z}/c/1/0/0/0"):
            store.read(Z, start, stop)


def test_a_fifo_in_a_chunks_place_is_refused_without_blocking(tmp_path):
    path, _ = write_store(tmp_path / "s", CODECS["blosc"])
    f = _chunk(path, 2)
    f.unlink()
    os.mkfifo(f)
    with pytest.raises(StoreCorruptError, match="c/2/0/0/0 is not a regular file"):
        actstore.open_store(path).read(Z, 8, N)


def test_a_body_that_does_not_decode_to_the_chunk_is_refused(tmp_path):
    """A chunk whose bytes pass every checksum but hold another shape (its records rewritten to match)."""
    path, _ = write_store(tmp_path / "s", CODECS["blosc"])
    store = actstore.open_store(path)
    layout = store._layout(Z)
    short = zarr.create_array(LocalStore(tmp_path / "o"), name="x", shape=(4, 5, 2, 2), chunks=(4, 5, 2, 2),
                              dtype="float16", compressors=compressors(CODECS["blosc"]))
    short[:] = 1
    other = tmp_path / "o" / "x" / "c" / "0" / "0" / "0" / "0"
    record = {f"acts/{Z}/c/0/0/0/0": file_digest(other, tail=True)}
    shutil.copyfile(other, _chunk(path, 0))
    with pytest.raises(StoreCorruptError, match=r"c/0/0/0/0 does not decode to a chunk of \(4, 5, 2, 3\) float16"):
        read_rows(layout, path, f"acts/{Z}", 0, 4, record.get)


@pytest.mark.parametrize("change", ["sharded", "transposed", "big_endian", "no_crc32c", "v2_keys", "two_chunk_axes",
                                    "other_compressor", "string_dtype"])
def test_layouts_the_direct_path_does_not_decode_have_none(tmp_path, change):
    arr = zarr.create_array(LocalStore(tmp_path), name="x", shape=(8, 6), chunks=(4, 6), dtype="float32",
                            compressors=compressors(DEFAULT_CODEC))
    meta = arr.metadata.to_dict()
    assert ChunkLayout.of(meta) is not None
    meta["codecs"] = list(meta["codecs"])
    if change == "sharded":
        meta["codecs"] = [{"name": "sharding_indexed", "configuration": {}}]
    elif change == "transposed":
        meta["codecs"] = [TransposeCodec(order=(1, 0)).to_dict(), *meta["codecs"]]
    elif change == "big_endian":
        meta["codecs"][0] = BytesCodec(endian="big").to_dict()
    elif change == "no_crc32c":
        meta["codecs"] = meta["codecs"][:-1]
    elif change == "v2_keys":
        meta["chunk_key_encoding"] = {"name": "v2", "configuration": {"separator": "."}}
    elif change == "two_chunk_axes":
        meta["chunk_grid"]["configuration"]["chunk_shape"] = [4, 3]
    elif change == "other_compressor":
        meta["codecs"][1] = {"name": "gzip", "configuration": {"level": 1}}
    else:
        meta["data_type"] = "string"
    assert ChunkLayout.of(meta) is None


def test_to_float32_is_numpy_cast_across_its_blocks() -> None:
    """A float16 array longer than one conversion block (and not a multiple of it), contiguous and
    strided: bit for bit numpy's cast, shape kept."""
    every = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    n = -(-(every.size + _CAST_BLOCK + 4) // 7) * 7  # every value, then more than a block, rows of 7
    half = np.resize(every, n).reshape(-1, 7, 1)
    for a in (half, half[:, 2:5], half[::3]):
        out = to_float32(a)
        assert out.shape == a.shape and out.dtype == np.float32 and out.flags.c_contiguous
        np.testing.assert_array_equal(out.view(np.uint32), a.astype(np.float32).view(np.uint32))
    assert to_float32(half[:0]).shape == (0, 7, 1)


def test_transient_reads_reuse_one_buffer_per_thread(tmp_path, monkeypatch):
    """Within transient_reads a thread's reads are views of one buffer it keeps (the same values as a
    plain read); outside, and for a read bigger than TRANSIENT_KEEP, each read is a new array."""
    from actstore.store import chunk_read

    path, values = write_store(tmp_path / "s", CODECS["blosc"])
    store = actstore.open_store(path)
    plain = [store.read(Z, 0, CHUNK), store.read(Z, CHUNK, 2 * CHUNK)]
    assert not np.shares_memory(*plain)
    with chunk_read.transient_reads():
        first = store.read(Z, 0, CHUNK)
        np.testing.assert_array_equal(first, values[:CHUNK])
        second = store.read(Z, CHUNK, 2 * CHUNK)
        assert np.shares_memory(first, second)  # the first read's values are gone: the caller copies them out
        np.testing.assert_array_equal(second, values[CHUNK:2 * CHUNK])
        np.testing.assert_array_equal(store.read(Z, 1, N), values[1:])  # across chunks, into a bigger buffer
        monkeypatch.setattr(chunk_read, "TRANSIENT_KEEP", 8)
        big = store.read(Z, 0, N)
        assert not np.shares_memory(big, store.read(Z, 0, N))
        np.testing.assert_array_equal(big, values)
    assert not np.shares_memory(store.read(Z, 0, CHUNK), store.read(Z, 0, CHUNK))


def test_to_float32_by_arithmetic_is_numpy_cast_for_every_finite_value() -> None:
    """Blocks with no inf or NaN take the arithmetic path (no lookup table): every finite float16 bit
    pattern (subnormals and both zeros included), contiguous and strided, bit for bit numpy's cast."""
    every = np.arange(1 << 16, dtype=np.uint16)
    finite = every[(every & 0x7C00) != 0x7C00].view(np.float16)  # 63488 values: two whole blocks less 2048
    for a in (finite.reshape(-1, 8), finite.reshape(-1, 8)[:, 1:6], finite[::-1].reshape(-1, 4)[::2]):
        np.testing.assert_array_equal(to_float32(a).view(np.uint32), a.astype(np.float32).view(np.uint32))
