"""The manifest: everything that defines a store, kept in the root group's attributes.

A frozen dataclass with no I/O. `identity()` is what must match for a rerun of an ingest to
resume into an existing store; the package version and the decomposition check (a measured
number, not an input) are recorded but not part of it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from actstore.errors import StoreFormatError
from actstore.store.arch import Arch

# 2: store record, manifest digest and completion record in _commits/; 3: examples made in blocks seeded from
# (seed, block) (actstore.datasets.base), so format-2 stores hold other examples for the same seed
FORMAT_VERSION = 3
POSITIONS = ("all", "answer")
DTYPES = ("float16", "float32")
MANIFEST_KEY = "actstore"  # key of the manifest in the root group's attributes


@dataclass(frozen=True)
class HookInfo:
    """One stored hook: its TransformerLens name, axis names, full shape and stored dtype.

    positions is 'all' (the pos / query_pos axis holds every position) or 'answer' (that axis
    is `answer`, entry j holding the example's answer position j).
    """

    name: str
    positions: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "positions": self.positions, "dims": list(self.dims),
                "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "HookInfo":
        return cls(name=str(d["name"]), positions=str(d["positions"]), dims=tuple(d["dims"]),
                   shape=tuple(int(s) for s in d["shape"]), dtype=str(d["dtype"]))

    @property
    def example_bytes(self) -> int:
        """Uncompressed bytes of one example's row."""
        size = {"float16": 2, "float32": 4}[self.dtype]
        for s in self.shape[1:]:
            size *= s
        return size


@dataclass(frozen=True)
class Manifest:
    """What a store holds and how it was made.

    model_spec:    the model as the user named it ('zoo:addition', a path, or a label)
    model_config:  TransformerLens config fields (n_layers, n_heads, d_model, ...)
    processing:    weight processing applied before ingest (fold_ln, center_writing_weights, ...)
    task, task_params, seed, n: the dataset, regenerable from these alone
    n_answers, width: answer positions per example; the padded sequence length
    hooks:         stored hooks, in storage order
    chunk, batch:  examples per Zarr chunk along axis 0; examples per forward pass
    codec:         the Zarr codec chain of the activation arrays (as recorded in the manifest)
    decomposition: result of the first-batch check that the components sum to the logits
    weights_sha256: digest of the model's parameters (same spec, other weights: another run)
    top_k:         tokens kept per answer in meta/topk (0: none); None for a store written before the
                   top-k table existed (left out of the stored manifest, so its digest is unchanged)
    outputs:       whether meta/outputs (and meta/topk) were written; False for an ingest that kept no
                   outputs (its forward passes stopped after the deepest stored hook; top_k is then 0)
    twins:         False when an ingest with outputs skipped the corrupted twins' forward pass (the
                   meta/outputs corrupted_* columns are null); True otherwise, and for stores written
                   before the option (left out of the stored manifest while True, so their digest is unchanged)
    """

    model_spec: str
    model_config: dict[str, Any]
    processing: dict[str, Any]
    model_dtype: str
    task: str
    task_params: dict[str, Any]
    seed: int
    n: int
    n_answers: int
    width: int
    hooks: tuple[HookInfo, ...]
    dtype: str
    chunk: int
    batch: int
    codec: dict[str, Any]
    decomposition: dict[str, Any] | None = None
    package_version: str = ""
    format_version: int = FORMAT_VERSION
    weights_sha256: str = ""
    top_k: int | None = None
    outputs: bool = True
    twins: bool = True

    # fields recorded but not compared when deciding whether a rerun may resume
    NON_IDENTITY = ("decomposition", "package_version")

    @property
    def n_chunks(self) -> int:
        return -(-self.n // self.chunk)

    def hook(self, name: str) -> HookInfo | None:
        return next((h for h in self.hooks if h.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["hooks"] = [h.to_dict() for h in self.hooks]
        if self.top_k is None:  # a store from before meta/topk: its manifest never had the field
            del d["top_k"]
        if self.twins:  # the default, and every store from before the option: never written
            del d["twins"]
        return _plain(d)

    @classmethod
    def from_dict(cls, d: Any) -> "Manifest":
        """Build and validate a manifest from its stored dict; StoreFormatError if it is not one."""
        if not isinstance(d, dict):
            raise StoreFormatError(f"manifest must be a mapping, got {type(d).__name__}")
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise StoreFormatError(
                f"store format version {version!r} is not supported by this actstore (reads version "
                f"{FORMAT_VERSION}); re-ingest with this version"
            )
        names = {f.name for f in fields(cls)}
        optional = ("decomposition", "package_version", "weights_sha256", "top_k", "outputs", "twins")
        missing = sorted(n for n in names if n not in d and n not in optional)
        if missing:
            raise StoreFormatError(f"manifest lacks field(s) {', '.join(missing)}")
        try:
            kw = {k: v for k, v in d.items() if k in names}
            kw["hooks"] = tuple(HookInfo.from_dict(h) for h in d["hooks"])
            m = cls(**kw)
        except (KeyError, TypeError, ValueError) as e:
            raise StoreFormatError(f"manifest is malformed ({e})") from None
        m.validate()
        return m

    def validate(self) -> None:
        """Raise StoreFormatError unless the fields are consistent."""
        def bad(msg: str) -> StoreFormatError:
            return StoreFormatError(f"manifest: {msg}")

        for name in ("seed", "n", "n_answers", "width", "chunk", "batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "seed" else 1):
                raise bad(f"{name} must be a {'non-negative' if name == 'seed' else 'positive'} integer, got {v!r}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int)
                                       or self.top_k < 0):
            raise bad(f"top_k must be a non-negative integer, got {self.top_k!r}")
        if not isinstance(self.outputs, bool):
            raise bad(f"outputs must be true or false, got {self.outputs!r}")
        if not isinstance(self.twins, bool):
            raise bad(f"twins must be true or false, got {self.twins!r}")
        if not self.outputs and not self.twins:
            raise bad("twins is false but the store keeps no outputs (twins applies to outputs only: must be true)")
        if not self.outputs and self.top_k:
            raise bad(f"top_k is {self.top_k} but the store keeps no outputs (top_k must be 0)")
        if self.dtype not in DTYPES:
            raise bad(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if not isinstance(self.model_config, dict):
            raise bad(f"model_config must be a mapping, got {type(self.model_config).__name__}")
        Arch.from_config(self.model_config)  # StoreFormatError naming the malformed field
        seen: set[str] = set()
        for h in self.hooks:
            if h.name in seen:
                raise bad(f"hook {h.name!r} listed twice")
            seen.add(h.name)
            if h.positions not in POSITIONS:
                raise bad(f"hook {h.name!r}: positions must be one of {POSITIONS}, got {h.positions!r}")
            if len(h.dims) != len(h.shape) or not h.dims or h.dims[0] != "example":
                raise bad(f"hook {h.name!r}: dims {h.dims} do not match shape {h.shape} with 'example' first")
            if h.shape[0] != self.n:
                raise bad(f"hook {h.name!r}: first axis {h.shape[0]} differs from n={self.n}")
            if h.dtype not in DTYPES:
                raise bad(f"hook {h.name!r}: dtype {h.dtype!r} not one of {DTYPES}")

    def identity(self) -> dict[str, Any]:
        """The fields a resumed ingest must share with the store it resumes."""
        d = self.to_dict()
        for k in self.NON_IDENTITY:
            d.pop(k, None)
        return d

    def differences(self, other: "Manifest") -> list[str]:
        """Names of identity fields that differ between two manifests."""
        a, b = self.identity(), other.identity()
        return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def _plain(v: Any) -> Any:
    """JSON-ready copy: tuples to lists, numpy scalars to Python, dict keys to str."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if hasattr(v, "item") and callable(v.item) and not isinstance(v, (str, bytes)):
        return v.item()
    if hasattr(v, "__dataclass_fields__"):
        return _plain(asdict(v))
    return v


__all__ = ["FORMAT_VERSION", "DTYPES", "POSITIONS", "MANIFEST_KEY", "HookInfo", "Manifest"]
