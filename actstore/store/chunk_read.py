"""Direct chunk reads of a local store's activation arrays: file -> checks -> decompress -> array.

For the arrays a store writes (chunked along the example axis only; codecs `bytes` little-endian,
then blosc, zstd or nothing, then crc32c), reading a row range through Zarr costs several times
the work itself (async store calls, the codec pipeline's thread hops, a copy into the output).
This module does the same decode on the calling thread, with every check Zarr's checked read
makes: the file is a regular file of the size and crc32c tail its commit record says, and the
crc32c of the rest of the file equals that tail. Whole chunks decompress straight into the
output array.

`ChunkLayout.of(metadata)` describes an array whose zarr.json this path decodes, and is None for
any other (sharding, transpose, big-endian data, v2 chunk keys, no crc32c, chunks across another
axis): the caller then reads through Zarr. It is made from the array's metadata document as
checked against its record, so nothing here trusts an unchecked file.
"""

from __future__ import annotations

import mmap
import os
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
from numcodecs import Blosc, Zstd

from actstore.errors import StoreCorruptError

# data types whose zarr v3 name is also their numpy name (a store writes float16 / float32)
_DTYPES = frozenset({"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                     "float16", "float32", "float64"})
_TAIL = 4  # bytes of the crc32c codec's checksum, little-endian, at the end of every chunk file

# decodes a chunk's compressed body into `out` (C-contiguous, exactly the chunk's bytes)
Decoder = Callable[[np.ndarray, np.ndarray], None]


@dataclass(frozen=True)
class ChunkLayout:
    """How to decode the chunks of one array straight from their files.

    shape:      the array's shape [example, ...]
    chunk_rows: examples per chunk (every chunk spans the other axes whole)
    dtype:      little-endian numpy dtype of the stored values
    decode:     the compressor's decoder, or None for uncompressed chunks
    separator:  the chunk key separator ('c/3/0/0' or 'c.3.0.0')
    """

    shape: tuple[int, ...]
    chunk_rows: int
    dtype: np.dtype
    decode: Decoder | None
    separator: str

    @classmethod
    def of(cls, metadata: dict[str, Any]) -> "ChunkLayout | None":
        """The layout for an array's zarr.json document (as a dict), or None if this path cannot decode it."""
        try:
            return cls._of(metadata)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError):
            return None

    @classmethod
    def _of(cls, m: dict[str, Any]) -> "ChunkLayout | None":
        if m.get("zarr_format") != 3 or m.get("node_type") != "array" or m.get("storage_transformers"):
            return None
        shape = tuple(int(s) for s in m["shape"])
        grid = m["chunk_grid"]
        chunks = tuple(int(c) for c in grid["configuration"]["chunk_shape"])
        if grid["name"] != "regular" or not shape or len(chunks) != len(shape) or chunks[1:] != shape[1:] \
                or chunks[0] < 1:
            return None
        keys = m["chunk_key_encoding"]
        separator = (keys.get("configuration") or {}).get("separator", "/")
        if keys["name"] != "default" or separator not in ("/", "."):
            return None
        if not isinstance(m["data_type"], str) or m["data_type"] not in _DTYPES:
            return None
        dtype = np.dtype(m["data_type"]).newbyteorder("<")
        codecs = [(c["name"], c.get("configuration") or {}) if isinstance(c, dict) else (c, {}) for c in m["codecs"]]
        if len(codecs) not in (2, 3) or codecs[0][0] != "bytes" or codecs[-1][0] != "crc32c":
            return None
        if dtype.itemsize > 1 and codecs[0][1].get("endian", "little") != "little":
            return None
        decode = _decoder(codecs[1][0]) if len(codecs) == 3 else None
        if len(codecs) == 3 and decode is None:
            return None
        return cls(shape, chunks[0], dtype, decode, separator)

    @property
    def chunk_shape(self) -> tuple[int, ...]:
        return (self.chunk_rows, *self.shape[1:])

    def key(self, chunk: int) -> str:
        """The chunk's key under its array ('c/3/0/0')."""
        return self.separator.join(["c", str(chunk), *["0"] * (len(self.shape) - 1)])


def _decoder(name: str) -> Decoder | None:
    if name == "blosc":  # the blosc header says everything decompression needs
        return _blosc_into
    if name == "zstd":
        return _zstd_into
    return None


_BLOSC, _ZSTD = Blosc(), Zstd()


def _blosc_into(body: np.ndarray, out: np.ndarray) -> None:
    # blosc fills a larger buffer than it needs without a word: the header's size must be the chunk's
    if len(body) < 16 or int.from_bytes(body[4:8], "little") != out.nbytes:
        raise ValueError(f"its blosc header does not describe {out.nbytes} bytes")
    _BLOSC.decode(body, out=out)


def _zstd_into(body: np.ndarray, out: np.ndarray) -> None:
    data = _ZSTD.decode(body)  # a copy: zstd frames need not record their size up front
    if len(data) != out.nbytes:
        raise ValueError(f"it decompresses to {len(data)} bytes, not {out.nbytes}")
    out.reshape(-1).view(np.uint8)[:] = np.frombuffer(data, dtype=np.uint8)


# every float16 bit pattern's float32 value, as numpy converts it (NaN payloads and signed zeros included)
_HALF_TO_SINGLE = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
# values converted per block: a block's int16 copy and float32 output (768 KB) stay in a core's L2 cache
# (1 MB here) across the passes below, and np.take's intp index copy stays small (one of a whole answer
# array's size was fresh memory every call, whose page faults slowed every read in the process). Blocks of
# 2**15 values made seven numpy calls per 64 KB: their overhead (and a GIL hand-off each, beside the other
# reading thread) cost more than the arithmetic (zoo:addition's answers: 2.8 against 1.4 ms per hook)
_CAST_BLOCK = 1 << 17
# float16 -> float32 by arithmetic: the sign-extended bits shifted left by 13 put the float16 exponent and
# mantissa in float32's fields (sign extension leaves three copies of the sign above the exponent: masked
# off), which reads as the value times 2**-112 for every finite float16, subnormals included; times
# 2**112 is then exact. inf and NaN (exponent 31) are told apart on the float16 bits first: as int16 +inf / NaN
# are at least 0x7C00 (nothing finite is), as uint16 -inf / NaN at least 0xFC00 (two max passes over 2-byte
# values: 9 against 24 us per 2**17 values for max and min over the float32 block).
_SHIFT, _KEEP, _SCALE = 13, np.int32(-0x70000001), np.float32(2.0 ** 112)  # _KEEP: 0x8FFFFFFF
_POS_INF_NAN, _NEG_INF_NAN = 0x7C00, 0xFC00
_SUBNORMAL = np.array([1 << _SHIFT], dtype=np.int32).view(np.float32)  # float16 2**-24, scaled down
_SUBNORMAL_VALUE = np.float32(2.0 ** -24)


def _exact_in_this_thread() -> bool:
    """Whether float32 multiplication here keeps subnormal inputs (a thread whose MXCSR has
    denormals-are-zero set, as some -ffast-math libraries leave it, would zero them)."""
    return bool(np.multiply(_SUBNORMAL, _SCALE)[0] == _SUBNORMAL_VALUE)


def to_float32(array: np.ndarray) -> np.ndarray:
    """`array` (any strides: e.g. a view of the answer positions in a decoded chunk) as a new C-contiguous
    float32 array, bit for bit what `astype(np.float32)` gives: float16 through `float32_into`, any other
    dtype through astype."""
    if array.dtype != np.float16:
        return array.astype(np.float32)
    out = np.empty(array.shape, dtype=np.float32)
    float32_into(array, out)
    return out


def float32_into(array: np.ndarray, out: np.ndarray) -> None:
    """Write float16 `array` (any strides) into float32 `out` (C-contiguous, the same shape), bit for bit
    what `astype(np.float32)` gives (NaN payloads included): through the arithmetic above, _CAST_BLOCK
    values at a time (numpy's float16 cast is a scalar loop, ~6x slower here; the lookup table ~1.3x),
    with the lookup table of numpy's own conversion for a block holding inf or NaN and in a thread that
    flushes subnormals."""
    if array.size == 0:
        return
    src, dst = (array.reshape(1), out.reshape(1)) if array.ndim == 0 else (array, out)
    rows = max(1, _CAST_BLOCK // max(1, src[0].size))  # blocks of whole rows (axis 0): views, never copies
    exact = _exact_in_this_thread()
    bits = thread_scratch("float32_into", min(rows, src.shape[0]) * src[0].size * 2).view(np.int16)
    for r in range(0, src.shape[0], rows):
        part, block = src[r:r + rows], dst[r:r + rows]
        half = bits[:part.size].reshape(part.shape)
        np.copyto(half, part.view(np.int16))  # the gather (a strided view) into a small contiguous buffer
        if exact and not (half.max() >= _POS_INF_NAN or half.view(np.uint16).max() >= _NEG_INF_NAN):
            word = block.view(np.int32)
            np.copyto(word, half)  # sign-extended as it widens (the shift widening as it shifts: ~15% slower)
            np.left_shift(word, _SHIFT, out=word)
            np.bitwise_and(word, _KEEP, out=word)
            np.multiply(block, _SCALE, out=block)
        else:
            np.take(_HALF_TO_SINGLE, half.view(np.uint16), out=block, mode="clip")  # clip: no bounds check needed


def read_rows(layout: ChunkLayout, root: Path, array_rel: str, start: int, stop: int,
              expected: Callable[[str], Any]) -> np.ndarray | None:
    """Rows [start, stop) of the array at `root / array_rel`: [stop - start, *shape[1:]] in `layout.dtype`.

    expected(rel) gives the record of a chunk file (`rel` relative to `root`, as the ledger names
    files): [size, sha256, crc32c tail hex]. None if some chunk has no such record (the caller reads
    through Zarr, which checks it its own way). StoreCorruptError naming the file if a chunk is
    missing, not a regular file, or differs from its record or its checksum.
    None also for rows outside [0, shape[0]) or an empty range. Within transient_reads, a view of the
    thread's reused buffer.
    """
    if not 0 <= start < stop <= layout.shape[0]:
        return None
    first, last = start // layout.chunk_rows, (stop - 1) // layout.chunk_rows
    records = []
    for k in range(first, last + 1):
        rel = f"{array_rel}/{layout.key(k)}"
        want = expected(rel)
        if not isinstance(want, (list, tuple)) or len(want) != 3:
            return None
        records.append((k, rel, want))
    out = _output((stop - start, *layout.shape[1:]), layout.dtype)
    scratch: np.ndarray | None = None
    for k, rel, want in records:
        c0 = k * layout.chunk_rows
        lo, hi = max(start, c0), min(stop, c0 + layout.chunk_rows)
        if (lo, hi) == (c0, c0 + layout.chunk_rows):  # a whole chunk: decoded in place
            decode_chunk(layout, root, rel, want, out[lo - start:hi - start])
        else:
            if scratch is None:
                scratch = np.empty(layout.chunk_shape, dtype=layout.dtype)
            decode_chunk(layout, root, rel, want, scratch)
            out[lo - start:hi - start] = scratch[lo - c0:hi - c0]
    return out


# per thread: whether read_rows decodes into the thread's reused buffer (see transient_reads), and the
# buffers it keeps (its chunk files' bytes, transient_reads' output)
_THREAD = threading.local()
# bytes of each buffer a thread keeps at most: a bigger read gets its own
TRANSIENT_KEEP = 32 << 20


@contextmanager
def transient_reads() -> Iterator[None]:
    """Within this block, read_rows on this thread returns a view of one buffer the thread keeps and
    reuses (up to TRANSIENT_KEEP bytes), valid only until the thread's next read: for a caller that
    copies what it needs out at once (the scan's gather at the answer positions). A new array of a
    chunk's size per read was fresh memory on some queries: thousands of page faults per query
    (5138 per zoo:list_update DLA in one run), which slowed the reads beside them."""
    before = getattr(_THREAD, "transient", False)
    _THREAD.transient = True
    try:
        yield
    finally:
        _THREAD.transient = before


def _output(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-contiguous array for read_rows: in transient_reads, a view of the thread's buffer."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if not getattr(_THREAD, "transient", False) or nbytes > TRANSIENT_KEEP:
        return np.empty(shape, dtype=dtype)
    return _kept("output", nbytes).view(dtype).reshape(shape)


def thread_scratch(name: str, nbytes: int) -> np.ndarray:
    """[nbytes] uint8: this thread's reused buffer `name` (see _kept) for work that is done with it before the
    thread's next use of the same name; a new array where it is bigger than a thread keeps."""
    return _kept(f"scratch {name}", nbytes) if nbytes <= TRANSIENT_KEEP else np.empty(nbytes, dtype=np.uint8)


def _kept(name: str, nbytes: int) -> np.ndarray:
    """[nbytes] uint8, writable, page-aligned: this thread's buffer `name` (at most TRANSIENT_KEEP bytes), made
    bigger when it must be. Each is a mapping of its own, outside malloc's heap: a long-lived chunk-sized block
    inside the heap made glibc hand the memory around it back and fault it in anew (4000 page faults per plain
    zoo:addition read), and a file read into malloc's usual 16 bytes past a page boundary ran 3x slower here
    (the kernel's copy on this AMD EPYC VM: 6.5 against 1.9 ms for 6.6 MB)."""
    buffer = getattr(_THREAD, name, None)
    if buffer is None or buffer.size < nbytes:
        buffer = _private_map(nbytes)
        setattr(_THREAD, name, buffer)
    return buffer[:nbytes]


def _private_map(nbytes: int) -> np.ndarray:
    """[nbytes] uint8, writable, page-aligned, zero-filled: an anonymous mapping of its own, private: mmap's
    default MAP_SHARED would share it with a forked child, whose reads would overwrite it."""
    return np.frombuffer(mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS), dtype=np.uint8)


def decode_chunk(layout: ChunkLayout, root: Path, rel: str, want: Any, out: np.ndarray) -> None:
    """Decode chunk file `root / rel` into `out` [chunk_rows, ...] (C-contiguous), after checking its size
    and crc32c tail against `want` ([size, sha256, tail hex]) and its crc32c against the tail."""
    body, tail = _read_checked(root, rel, int(want[0]), str(want[2]))
    if google_crc32c.extend(0, body) != int.from_bytes(tail, "little"):
        raise _corrupt(root, rel, "fails its crc32c check (its bytes changed)")
    try:
        if layout.decode is None:
            if len(body) != out.nbytes:
                raise ValueError(f"it holds {len(body)} bytes, not {out.nbytes}")
            out.reshape(-1).view(np.uint8)[:] = np.frombuffer(body, dtype=np.uint8)
        else:
            layout.decode(body, out)
    except (ValueError, RuntimeError, TypeError, MemoryError) as e:
        raise _corrupt(root, rel, f"does not decode to a chunk of {layout.chunk_shape} {layout.dtype} ({e})") from None


def _read_checked(root: Path, rel: str, size: int, tail_hex: str) -> tuple[np.ndarray, bytes]:
    """(body [size - 4] uint8, read-only: a view of the thread's kept buffer, valid until its next read; the
    4-byte tail) of chunk file `root / rel`, which must be a regular file of `size` bytes ending in
    `tail_hex`; StoreCorruptError otherwise."""
    path = root / rel
    try:  # O_NONBLOCK: opening a FIFO planted where a chunk belongs must not block
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise _corrupt(root, rel, "is missing") from None
    except OSError as e:
        raise _corrupt(root, rel, f"cannot be read ({e.strerror})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):  # before open(): a directory's descriptor is an IsADirectoryError there
        os.close(fd)
        raise _corrupt(root, rel, "is not a regular file")
    with open(fd, "rb", buffering=0) as f:
        if info.st_size != size or size < _TAIL:
            raise _corrupt(root, rel, "differs from its record (checksum mismatch)")
        # the thread's kept buffer (a new bytes object per file was fresh memory on some reads, 2500 page
        # faults per zoo:list_update file); a bigger file than it keeps gets a mapping of its own
        data = _kept("body", size) if size <= TRANSIENT_KEEP else _private_map(size)
        view, got = data.data, 0
        while got < size and (n := f.readinto(view[got:])):
            got += n
    body = data[:size - _TAIL]
    body.setflags(write=False)  # google_crc32c reads read-only buffers only (and holds the GIL for them: ~0.3 ms
    tail = data[size - _TAIL:size].tobytes()  # per 6.6 MB, against thousands of page faults for new bytes)
    if got != size or tail.hex() != tail_hex:
        raise _corrupt(root, rel, "differs from its record (checksum mismatch)")
    return body, tail


def _corrupt(root: Path, rel: str, what: str) -> StoreCorruptError:
    return StoreCorruptError(f"store {str(root)!r} is corrupt: chunk file {rel} {what}; run `actstore verify {root}`")
