"""Named directions saved in a store: `<store>/directions/<name>.json`, each with a digest record.

A direction is a residual-stream vector [d_model] a user or a query derived (brackets'
'unbalanced' direction through the final LayerNorm, a pre-head direction through a head's OV, a
top singular vector) and wants to read again by name. The file is JSON, so it reads anywhere:

    {"name": ..., "d_model": ..., "vector": [float, ...], "final_ln": false,
     "info": {how it was made: kind, parameters, fit quality}, "created": ISO time}

`final_ln` says how queries read it: false (the default) as is, against the residual stream
before the final LayerNorm; true like an unembedding column (centred, divided by the stored
final LayerNorm scale). Floats are written with Python's repr, so a vector reads back bit for bit.

Written like the derived cache (store/cache.py): a temporary file renamed into place, then its
sha256 record `<name>.json.sha256`. Unlike a cached table, a direction cannot be recomputed on
demand, so a file its record does not vouch for is an error when read (StoreCorruptError) and
a problem for `actstore verify` (`direction_problems`).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from actstore.errors import InvalidParameterError, StoreCorruptError, StoreWriteError
from actstore.store.cache import check_file, read_checked, record_path, write_checked
from actstore.store.fs import RemotePath, StorePath, children, store_path

DIRECTIONS = "directions"
NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
RESERVED = ("answer", "diff")  # the built-in logit directions of the queries
SUFFIX = ".json"


@dataclass(frozen=True)
class SavedDirection:
    """A named direction as read from a store."""

    name: str
    vector: np.ndarray  # [d_model] float64
    final_ln: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    created: str = ""

    @property
    def norm(self) -> float:
        return float(np.linalg.norm(self.vector))


def directions_dir(root: str | os.PathLike | RemotePath) -> StorePath:
    return store_path(root) / DIRECTIONS


def check_name(name: Any) -> str:
    """`name` if it can name a direction (a letter, then letters, digits, '_', '.', '-'; at most 64)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name.endswith(SUFFIX):
        raise InvalidParameterError(f"direction name {name!r}: use a letter, then letters, digits, '_', '.' or '-' "
                                    f"(at most 64 characters)")
    if name in RESERVED:
        raise InvalidParameterError(f"direction name {name!r} is reserved for the built-in logit direction; "
                                    f"choose another")
    return name


def _path(root: str | os.PathLike | RemotePath, name: str) -> StorePath:
    return directions_dir(root) / f"{check_name(name)}{SUFFIX}"


def save_direction(root: str | os.PathLike | RemotePath, name: str, vector: Any, *, final_ln: bool = False,
                   info: dict[str, Any] | None = None, overwrite: bool = False) -> SavedDirection:
    """Save `vector` [d_model] as direction `name` of the store at `root`.

    An existing direction of that name is kept (InvalidParameterError) unless overwrite=True.
    OS refusals (a read-only store, a full disk) are StoreWriteError; nothing is left half-written.
    """
    path = _path(root, name)
    vec = np.asarray(vector)
    if vec.ndim != 1 or not vec.size or not np.issubdtype(vec.dtype, np.number):
        raise InvalidParameterError(f"direction {name!r}: expected a numeric vector [d_model], got shape "
                                    f"{tuple(vec.shape)} ({vec.dtype})")
    vec = vec.astype(np.float64)
    if not np.isfinite(vec).all():
        raise InvalidParameterError(f"direction {name!r} holds NaN or infinite values")
    if path.exists() and not overwrite:
        raise InvalidParameterError(f"store already has a direction named {name!r}; pick another name or "
                                    "overwrite it (--force)")
    doc = {"name": name, "d_model": int(vec.size), "vector": [float(x) for x in vec], "final_ln": bool(final_ln),
           "info": _jsonable(info or {}), "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    data = (json.dumps(doc, indent=1) + "\n").encode()

    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    try:
        path.parent.mkdir(exist_ok=True)
        write_checked(path, write)
    except OSError as e:
        raise StoreWriteError(f"cannot save direction {name!r} in {str(path.parent)!r}: "
                              f"{e.strerror or e}") from None
    return _from_doc(doc, path)


def load_direction(root: str | os.PathLike | RemotePath, name: str) -> SavedDirection:
    """Direction `name` of the store at `root`; a one-line error naming the saved ones if there is none."""
    path = _path(root, name)
    if not path.is_file():
        saved = ", ".join(direction_names(root)) or "none"
        raise InvalidParameterError(f"store {str(store_path(root))!r} has no direction named {name!r} "
                                    f"(saved: {saved}); make one with `actstore direction fit-ln / through-ov / save`")
    data = read_checked(path)
    if data is None:
        why = check_file(path) or "it changed while being read"
        raise StoreCorruptError(f"direction {name!r} ({path}): {why}; save it again")
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise StoreCorruptError(f"direction {name!r} ({path}) is not valid JSON ({e}); save it again") from None
    return _from_doc(doc, path)


def direction_names(root: str | os.PathLike | RemotePath) -> list[str]:
    """Names of the directions saved in the store at `root`, sorted."""
    folder = directions_dir(root)
    try:
        files = [p for p in children(folder, f"*{SUFFIX}") if p.is_file()]
    except OSError:
        return []
    return [p.name[: -len(SUFFIX)] for p in files if NAME_RE.fullmatch(p.name[: -len(SUFFIX)])]


def list_directions(root: str | os.PathLike | RemotePath) -> list[SavedDirection]:
    """Every saved direction of the store at `root` (StoreCorruptError for one that fails its check)."""
    return [load_direction(root, name) for name in direction_names(root)]


def remove_direction(root: str | os.PathLike | RemotePath, name: str) -> None:
    """Delete direction `name` (its record first, so a half-removed direction is never vouched for)."""
    path = _path(root, name)
    if not path.is_file():
        raise InvalidParameterError(f"store {str(store_path(root))!r} has no direction named {name!r}")
    try:
        record_path(path).unlink(missing_ok=True)
        path.unlink()
    except OSError as e:
        raise StoreWriteError(f"cannot remove direction {name!r}: {e.strerror or e}") from None


def direction_problems(root: str | os.PathLike | RemotePath) -> list[str]:
    """One line per saved direction whose digest record is missing or disagrees with it, or whose
    contents are malformed (for `actstore verify`); empty when every direction checks out."""
    out = []
    for name in direction_names(root):
        path = directions_dir(root) / f"{name}{SUFFIX}"
        why = check_file(path)
        if why is None:
            try:
                load_direction(root, name)
            except (StoreCorruptError, InvalidParameterError) as e:
                why = str(e)
        if why is not None:
            out.append(f"direction {DIRECTIONS}/{path.name}: {why}")
    return out


def _from_doc(doc: Any, path: StorePath) -> SavedDirection:
    try:
        vec = np.asarray(doc["vector"], dtype=np.float64)
        if vec.ndim != 1 or vec.size != int(doc["d_model"]) or not np.isfinite(vec).all():
            raise ValueError("vector is not d_model finite numbers")
        return SavedDirection(str(doc["name"]), vec, bool(doc.get("final_ln", False)), dict(doc.get("info") or {}),
                              str(doc.get("created", "")))
    except (KeyError, TypeError, ValueError) as e:
        raise StoreCorruptError(f"direction file {path} is malformed ({e}); save it again") from None


def _jsonable(x: Any) -> Any:
    """`x` with numpy scalars / arrays as plain Python values (non-finite floats as None)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        return _jsonable(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
