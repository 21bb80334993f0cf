"""The store's filesystem seam: a store is addressed by a local path or an fsspec URL.

A local path (or `file://` URL) stays a `pathlib.Path`, and every local guarantee holds as before
(flock lock file, fsync, os.replace, FIFOs and devices refused where a file belongs): the read path
of a local store pays nothing for remote support. Any other URL (`s3://bucket/prefix`,
`memory://name`) becomes a `RemotePath`, which offers the part of the Path API the store modules
use (`/`, name, parent, exists, glob, unlink, ...) over an fsspec filesystem, plus whole-object
reads and writes. The store modules branch on `isinstance(path, RemotePath)` only where the
protocol differs:

    local                               object store
    temporary file + fsync + rename     one PUT (atomic: readers see the old object or the new one)
    flock on a sibling lock file        a sibling lock object created by a conditional PUT
    directories made and fsynced        none (prefixes exist while objects do)

Credentials and endpoints come from fsspec's usual sources (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
~/.aws, ...) or from `storage_options`, passed to the filesystem as they are.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar, Union, cast

from zarr.storage import FsspecStore

from actstore.errors import ActstoreError, InvalidParameterError, RemoteExtraError, RemoteStoreError

S3_EXTRA = "pip install 'actstore[s3]'"
LOCAL_PROTOCOLS = ("file", "local")
# a remote writer's options that differ from fsspec's defaults: s3fs caches directory listings,
# which would hide a chunk another process committed since; any given option wins
_DEFAULTS: dict[str, dict[str, Any]] = {"s3": {"use_listings_cache": False}, "s3a": {"use_listings_cache": False}}
# 's3:/bucket/x' or '://x': a URL with a slash or the protocol missing, not a local directory 's3:'
_URLISH = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/(?!/)|://")
_create_lock = threading.Lock()  # a conditional create on a filesystem that is not a server (memory://)


F = TypeVar("F", bound=Callable[..., Any])


def remote_error(url: str, e: BaseException) -> RemoteStoreError:
    """One line for a failure of the remote filesystem itself (unreachable endpoint, bad credentials)."""
    return RemoteStoreError(f"{url}: the storage server failed ({type(e).__name__}: {_first(e)}); check the "
                            "endpoint and credentials (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... or storage_options)")


def _guarded(method: F) -> F:
    """OSErrors pass (FileNotFoundError means absent); any other failure of the filesystem library
    (botocore's EndpointConnectionError, ...) becomes one RemoteStoreError line."""
    @functools.wraps(method)
    def run(self: "RemotePath", *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (OSError, ActstoreError):
            raise
        except Exception as e:  # noqa: BLE001 - each library has its own error types
            raise remote_error(self.url, e) from None
    return run  # type: ignore[return-value]


class GuardedFsspecStore(FsspecStore):
    """Zarr's FsspecStore whose reads and writes fail as RemoteStoreError, not a library's own error."""

    async def get(self, key: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().get(key, *args, **kwargs)
        except (OSError, ActstoreError, ValueError):
            raise
        except Exception as e:  # noqa: BLE001
            raise remote_error(self._url(key), e) from None

    # set by a chunk writer: called with (object path, bytes, the filesystem's PUT response) after each PUT, so
    # the writer can digest what it sent instead of reading it back (store/writer.py); None on a copy zarr makes
    on_put: Callable[[str, bytes, Any], None] | None = None

    async def set(self, key: str, *args: Any, **kwargs: Any) -> None:
        try:
            if self.on_put is not None and len(args) == 1 and not kwargs and not self.read_only:
                data = args[0].to_bytes()  # a whole object (no byte range): put it here to keep the response
                if not self._is_open:
                    await self._open()
                path = f"{self.path.rstrip('/')}/{key.lstrip('/')}"
                self.on_put(path, data, await self.fs._pipe_file(path, data))
                return
            await super().set(key, *args, **kwargs)
        except (OSError, ActstoreError, ValueError):
            raise
        except Exception as e:  # noqa: BLE001
            raise remote_error(self._url(key), e) from None

    def _url(self, key: str) -> str:
        return f"{self.fs.unstrip_protocol(self.path)}/{key}"


class RemotePath:
    """A file or prefix on an fsspec filesystem, addressed like a Path (`root / "acts" / hook`).

    str() is the URL (`s3://bucket/store/acts`); it pickles as (URL, storage_options), so a worker
    process reopens the same filesystem. There is no __fspath__: handing one to `open()` or `os`
    is a TypeError, never a local file of that name.
    """

    __slots__ = ("fs", "path", "storage_options")

    def __init__(self, fs: Any, path: str, storage_options: dict[str, Any] | None = None) -> None:
        self.fs = fs
        self.path = path.rstrip("/") or path
        self.storage_options = dict(storage_options or {})

    # --- naming -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return str(self.fs.unstrip_protocol(self.path))

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"RemotePath({self.url!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (store_path, (self.url, "store", self.storage_options))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and (other.url, other.path) == (self.url, self.path)

    def __hash__(self) -> int:
        return hash(self.url)

    def __truediv__(self, other: str | os.PathLike[str]) -> "RemotePath":
        return self.joinpath(other)

    def joinpath(self, *parts: str | os.PathLike[str]) -> "RemotePath":
        path = self.path
        for part in parts:
            path = f"{path.rstrip('/')}/{os.fspath(part).strip('/')}"
        return RemotePath(self.fs, path, self.storage_options)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def stem(self) -> str:
        return PurePosixPath(self.name).stem

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    @property
    def parent(self) -> "RemotePath":
        if "/" in self.path.strip("/"):
            head = self.path.rsplit("/", 1)[0]
        else:  # memory:///name sits under the root '/'; s3://bucket has no parent
            head = "/" if self.path.startswith("/") and self.path != "/" else self.path
        return RemotePath(self.fs, head, self.storage_options)

    def with_name(self, name: str) -> "RemotePath":
        return self.parent / name

    def relative_to(self, other: "RemotePath") -> PurePosixPath:
        base = other.path.rstrip("/") + "/"
        if not self.path.startswith(base):
            raise ValueError(f"{self.url} is not under {other.url}")
        return PurePosixPath(self.path[len(base):])

    # --- queries ------------------------------------------------------------------------------

    @_guarded
    def exists(self) -> bool:
        return bool(self.fs.exists(self.path))

    @_guarded
    def is_file(self) -> bool:
        return bool(self.fs.isfile(self.path))

    @_guarded
    def is_dir(self) -> bool:
        return bool(self.fs.isdir(self.path))

    @_guarded
    def iterdir(self) -> list["RemotePath"]:
        try:
            names = self.fs.ls(self.path, detail=False)
        except FileNotFoundError:
            return []
        return [RemotePath(self.fs, str(n), self.storage_options) for n in sorted(names)
                if str(n).rstrip("/") != self.path]

    def glob(self, pattern: str) -> list["RemotePath"]:
        """Entries directly under this prefix whose name matches `pattern` (no '/' in it)."""
        return [p for p in self.iterdir() if fnmatch.fnmatchcase(p.name, pattern)]

    @_guarded
    def rglob(self, pattern: str) -> list["RemotePath"]:
        """Every object (not prefix) under this prefix whose name matches `pattern`."""
        try:
            found = self.fs.find(self.path)
        except FileNotFoundError:
            return []
        return [RemotePath(self.fs, str(f), self.storage_options) for f in sorted(found)
                if fnmatch.fnmatchcase(str(f).rsplit("/", 1)[-1], pattern)]

    @_guarded
    def stat(self) -> os.stat_result:
        """An os.stat_result whose st_size is the object's size (other fields 0)."""
        size = int(self.fs.size(self.path))
        return os.stat_result((0o100644, 0, 0, 1, 0, 0, size, 0, 0, 0))

    @_guarded
    def total_bytes(self) -> int:
        """Bytes of every object under this prefix (one listing)."""
        try:
            found = self.fs.find(self.path, detail=True)
        except FileNotFoundError:
            return 0
        return sum(int(v.get("size") or 0) for v in found.values())

    # --- reads and writes ---------------------------------------------------------------------

    @_guarded
    def read_bytes_or_none(self) -> bytes | None:
        """The object's bytes, or None if there is none."""
        try:
            return bytes(self.fs.cat_file(self.path))
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            return None

    def read_bytes(self) -> bytes:
        data = self.read_bytes_or_none()
        if data is None:
            raise FileNotFoundError(self.url)
        return data

    @_guarded
    def write_bytes(self, data: bytes) -> int:
        """Put the object in one request: readers see the old object or the new one, never a part."""
        self.fs.pipe_file(self.path, bytes(data))
        return len(data)

    @_guarded
    def put(self, data: bytes) -> Any:
        """write_bytes that returns the filesystem's response (S3: put_object's, with the ETag; None where the
        filesystem gives none)."""
        return self.fs.pipe_file(self.path, bytes(data))

    @_guarded
    def create_exclusive(self, data: bytes) -> bool:
        """Create the object only if none exists (S3: a PUT with If-None-Match: *); False if one did."""
        try:
            if getattr(self.fs, "async_impl", False):
                self.fs.pipe_file(self.path, bytes(data), mode="create")
            else:
                with _create_lock:  # no server to arbitrate: this process is the only writer there is
                    self.fs.pipe_file(self.path, bytes(data), mode="create")
        except FileExistsError:
            return False
        except TypeError:  # a filesystem whose pipe_file has no mode="create": no lock can be held there
            raise RemoteStoreError(f"{self.url}: {type(self.fs).__name__} cannot create an object only if it is "
                                   "absent, so actstore cannot hold a store's write lock there; write the store "
                                   "to a local path or s3://") from None
        return True

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to do: a prefix exists while an object under it does."""

    @_guarded
    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.rm_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    @_guarded
    def unlink_many(self, objects: list["RemotePath"]) -> None:
        """Delete `objects` (which must exist) of this filesystem in as few requests as it allows (S3: one
        bulk delete per 1000), in no particular order."""
        if objects:
            self.fs.rm([o.path for o in objects])

    @_guarded
    def rmtree(self) -> None:
        """Remove every object under this prefix (the root zarr.json first, so the prefix stops
        being a store before its files go)."""
        meta = self / "zarr.json"
        meta.unlink(missing_ok=True)
        try:
            self.fs.rm(self.path, recursive=True)
        except FileNotFoundError:
            pass


StorePath = Union[Path, RemotePath]


def is_remote(path: object) -> bool:
    return isinstance(path, RemotePath)


def relative(path: StorePath, root: StorePath) -> str:
    """`path` relative to `root`, '/'-separated: the key of a file in the store's records."""
    if isinstance(path, RemotePath) and isinstance(root, RemotePath):
        return str(path.relative_to(root))
    if isinstance(path, Path) and isinstance(root, Path):
        return str(path.relative_to(root))
    raise TypeError(f"{path} and {root} are not on the same filesystem")


def children(path: StorePath, pattern: str = "*") -> list[StorePath]:
    """Entries directly under `path` whose names match `pattern`, sorted by name (none if absent)."""
    try:
        found: list[StorePath] = list(path.glob(pattern))
    except OSError:
        return []
    return sorted(found, key=str)


def split_url(text: str) -> tuple[str, str] | None:
    """(protocol, rest) of an fsspec URL, or None for a plain local path."""
    proto, sep, rest = text.partition("://")
    if not sep or not proto or not all(c.isalnum() or c in "+-." for c in proto):
        return None
    return proto.lower(), rest


def store_path(path: "str | os.PathLike[str] | RemotePath", what: str = "store",
               storage_options: dict[str, Any] | None = None) -> StorePath:
    """A local Path (checked: not empty, valid UTF-8) or a RemotePath for an fsspec URL.

    InvalidParameterError for an empty path, a path that is not UTF-8, or an unknown protocol;
    RemoteExtraError (naming the extra to install) where the protocol's package is missing.
    """
    if isinstance(path, RemotePath):
        return path
    text = os.fsdecode(path)
    if not text.strip():
        raise InvalidParameterError(f"{what} path is empty; name a directory")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidParameterError(f"{what} path {text!r} is not valid UTF-8; rename it or choose "
                                    "another") from None
    parts = split_url(text) if isinstance(path, str) else None
    if parts is None and isinstance(path, str) and _URLISH.match(text):
        raise InvalidParameterError(f"{what} {text!r} looks like a URL with a '/' missing (PROTOCOL://...); write "
                                    f"the URL in full, or ./{text} for a local directory of that name")
    proto, rest = parts if parts is not None else ("file", text)
    if proto in LOCAL_PROTOCOLS:
        if storage_options:
            raise InvalidParameterError(f"{what} {text!r} is local: storage_options apply to remote URLs only")
        return Path(path) if parts is None else Path(rest)
    if not rest.strip("/"):
        raise InvalidParameterError(f"{what} URL {text!r} names no bucket or prefix; e.g. {proto}://bucket/store")
    if "?" in rest:  # s3fs reads ?versionId=... as an object version, other filesystems as part of the key
        raise InvalidParameterError(f"{what} URL {text!r} has a query string; name the store by bucket and prefix "
                                    "alone (filesystem options go in storage_options)")
    if any(seg in ("", ".", "..") for seg in rest.strip("/").split("/")):  # keys hold them literally: another store
        raise InvalidParameterError(f"{what} URL {text!r} has an empty, '.' or '..' path segment, which an object "
                                    f"store keeps literally; name the prefix plainly, e.g. {proto}://bucket/dir/store")
    return RemotePath(*_filesystem(proto, text, storage_options), storage_options)


def _filesystem(proto: str, url: str, storage_options: dict[str, Any] | None) -> tuple[Any, str]:
    import fsspec  # noqa: PLC0415 (local stores never need it)

    options = {**_DEFAULTS.get(proto, {}), **(storage_options or {})}
    try:
        fs, path = fsspec.url_to_fs(url, **options)
    except ImportError as e:
        extra = S3_EXTRA if proto in ("s3", "s3a") else f"the package fsspec names for {proto}://"
        raise RemoteExtraError(f"{url}: {proto}:// stores need an extra package ({_first(e)}): "
                               f"{extra}") from None
    except ValueError as e:
        raise InvalidParameterError(f"{url}: unknown storage protocol {proto!r} ({_first(e)}); use a local path, "
                                    "s3://bucket/prefix or memory://name") from None
    except TypeError as e:
        raise InvalidParameterError(f"{url}: storage_options not accepted ({_first(e)})") from None
    except OSError as e:  # e.g. zip:// with no archive: the URL names no filesystem a store can live on
        raise InvalidParameterError(f"{url}: {proto}:// cannot hold a store here ({_first(e)}); use a local path, "
                                    "s3://bucket/prefix or memory://name") from None
    return fs, str(path)


def zarr_store(path: StorePath, read_only: bool,
               on_put: Callable[[str, bytes, Any], None] | None = None) -> Any:
    """A Zarr v3 store rooted at `path` (a LocalStore, or an FsspecStore over the same filesystem, calling
    `on_put` after each object it puts)."""
    from zarr.storage import LocalStore  # noqa: PLC0415

    if isinstance(path, RemotePath):
        store = cast(GuardedFsspecStore, GuardedFsspecStore.from_url(path.url, storage_options=_options(path),
                                                                     read_only=read_only))
        store.on_put = on_put
        return store
    return LocalStore(path, read_only=read_only)


def _options(path: RemotePath) -> dict[str, Any]:
    proto = split_url(path.url)
    return {**_DEFAULTS.get(proto[0] if proto else "", {}), **path.storage_options}


def arrow_filesystem(path: RemotePath) -> Any:
    """A pyarrow filesystem over the same fsspec filesystem (Arrow and DuckDB read the parts through it)."""
    from pyarrow.fs import FSSpecHandler, PyFileSystem  # noqa: PLC0415

    return PyFileSystem(FSSpecHandler(path.fs))


def _first(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


__all__ = ["RemotePath", "StorePath", "is_remote", "store_path", "relative", "children", "zarr_store",
           "arrow_filesystem", "split_url"]
