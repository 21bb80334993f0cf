"""Where things live inside a store directory, and how arrays are encoded.

```
<store>/zarr.json                          root group; attributes["actstore"] = manifest
<store>/acts/<hook>/                       Zarr v3 arrays [example, ...], chunked along example
<store>/params/<name>/                     Zarr v3 float32 weights of the processed model
<store>/meta/<table>/part-<chunk>.parquet  one Parquet part per chunk (examples, tokens, outputs; topk
                                           where the manifest's top_k > 0)
<store>/_commits/<chunk>.json              commit record of a chunk, written last
<store>/derived/                           cached query results
```
"""

from __future__ import annotations

from typing import Any

import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from actstore.errors import StoreCorruptError, StoreFormatError
from actstore.store.fs import StorePath

ACTS, PARAMS, META, COMMITS, DERIVED = "acts", "params", "meta", "_commits", "derived"
META_TABLES = ("examples", "tokens", "outputs")  # every store has a part of each per committed chunk
# tables a store has only where its manifest says so (see `meta_tables`); stores written before
# them lack them, and readers show them empty there
OPTIONAL_META_TABLES = ("topk",)

# Chosen by measurement on GPT-2-small-shaped fp16 activations (z, pattern, mlp post; 2 cores):
# blosc-lz4+shuffle wrote 307 MB/s, read 887 MB/s, ratio 1.13; zstd-1 180 / 553 MB/s, ratio 1.25;
# blosc-lz4+bitshuffle 227 / 734, 1.22; no compression 275 / 1117. Activations are near-random
# bits, so the fastest writer wins. Every chain ends with crc32c, checked on every read.
DEFAULT_CODEC: dict[str, Any] = {"name": "blosc", "cname": "lz4", "clevel": 5, "shuffle": "shuffle",
                                 "checksum": "crc32c"}

# axis names of the weights a query reads, by the TransformerLens state-dict suffix
PARAM_DIMS: dict[str, tuple[str, ...]] = {
    "W_E": ("d_vocab", "d_model"),
    "W_pos": ("n_ctx", "d_model"),
    "W_Q": ("head", "d_model", "d_head"), "W_K": ("head", "d_model", "d_head"),
    "W_V": ("head", "d_model", "d_head"), "W_O": ("head", "d_head", "d_model"),
    "b_Q": ("head", "d_head"), "b_K": ("head", "d_head"), "b_V": ("head", "d_head"),
    "b_O": ("d_model",),
    "W_in": ("d_model", "d_mlp"), "W_gate": ("d_model", "d_mlp"), "b_in": ("d_mlp",),
    "W_out": ("d_mlp", "d_model"), "b_out": ("d_model",),
    "W_U": ("d_model", "d_vocab_out"), "b_U": ("d_vocab_out",),
    "w": ("d_model",), "b": ("d_model",),
}


def meta_tables(manifest: Any) -> tuple[str, ...]:
    """The meta tables every committed chunk of this store has a part of: META_TABLES, plus topk
    where the manifest's top_k is positive (a store written before top-k has top_k None), less
    outputs where the manifest's outputs is false (readers show it empty, with its columns)."""
    base = META_TABLES if getattr(manifest, "outputs", True) else tuple(t for t in META_TABLES if t != "outputs")
    return (*base, *(("topk",) if getattr(manifest, "top_k", None) else ()))


def acts_path(root: StorePath, hook: str) -> StorePath:
    return root / ACTS / hook


def part_path(root: StorePath, table: str, chunk: int) -> StorePath:
    return root / META / table / f"part-{chunk:05d}.parquet"


def commit_path(root: StorePath, chunk: int) -> StorePath:
    return root / COMMITS / f"{chunk:05d}.json"


def chunk_ranges(n: int, chunk: int) -> list[tuple[int, int]]:
    """[start, stop) example ranges of every chunk; the last may be partial."""
    return [(s, min(s + chunk, n)) for s in range(0, n, chunk)]


def chunk_file(root: StorePath, hook: str, chunk: int, ndim: int) -> StorePath:
    """The file holding chunk `chunk` of an activation array (default v3 key encoding)."""
    return acts_path(root, hook).joinpath("c", str(chunk), *(["0"] * (ndim - 1)))


def as_array(group: zarr.Group, prefix: str, name: str, root: StorePath) -> zarr.Array:
    """Array `name` of the store's `prefix` group (acts or params); StoreCorruptError if a group stands there."""
    node = group[name]
    if not isinstance(node, zarr.Array):
        raise StoreCorruptError(f"store {str(root)!r} is corrupt: {prefix}/{name} is a group, not an array; "
                                f"run `actstore verify {root}`")
    return node


def param_dims(name: str, ndim: int) -> tuple[str, ...]:
    """Axis names of a weight from its name, or generic ones ('dim0', ...) if unknown."""
    dims = PARAM_DIMS.get(name.rsplit(".", 1)[-1])
    if dims is None or len(dims) != ndim:
        return tuple(f"dim{i}" for i in range(ndim))
    return dims


def compressors(codec: dict[str, Any]) -> list[Any]:
    """The Zarr codecs after `bytes` for a codec spec such as DEFAULT_CODEC."""
    name = codec.get("name")
    if name == "blosc":
        chain: list[Any] = [BloscCodec(cname=codec.get("cname", "lz4"), clevel=int(codec.get("clevel", 5)),
                                       shuffle=codec.get("shuffle", "shuffle"))]
    elif name == "zstd":
        chain = [ZstdCodec(level=int(codec.get("level", 1)))]
    elif name == "none":
        chain = []
    else:
        raise StoreFormatError(f"unknown codec {name!r}; use 'blosc', 'zstd' or 'none'")
    if codec.get("checksum", "crc32c") == "crc32c":
        chain.append(Crc32cCodec())
    return chain
