"""Writing files the user named (-o, reports, charts, datasets, trained weights) atomically.

`atomic_output(path)` hands out an open binary file beside the target under a unique hidden
name and renames it over the target only once everything is written and synced, so a full disk,
a read-only directory, a name too long or a crash never leaves a partial or 0-byte file behind.
OS failures become one `OutputWriteError` line naming the path and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from actstore.errors import InvalidParameterError, OutputWriteError

ADVICE = {
    errno.ENOSPC: "free some space or write elsewhere",
    errno.EDQUOT: "free some space or write elsewhere",
    errno.EROFS: "choose a writable directory",
    errno.EACCES: "choose a writable directory",
    errno.EPERM: "choose a writable directory",
    errno.ENAMETOOLONG: "use a shorter name",
    errno.EISDIR: "give a file path, not a directory",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
}

_OS_ERROR_TEXT = re.compile(r"\(os error (\d+)\)")


def check_output_path(path: str | os.PathLike, what: str = "-o") -> Path:
    """`path` as a Path if a file can be created there; an error naming `what` if not.

    Refuses an empty path, an existing directory, and a parent that is missing or not a directory
    (InvalidParameterError), and a path the OS rejects, e.g. too long (OutputWriteError).
    A symbolic link resolves to its target, so the link itself is kept.
    """
    text = os.fspath(path)
    if not text:
        raise InvalidParameterError(f"{what} is empty; give a file path")
    try:
        out = Path(text)
        if out.is_symlink():
            out = Path(os.path.realpath(out))
        is_dir, parent = out.is_dir(), out.parent
        parent_exists, parent_is_dir = parent.exists(), parent.is_dir()
    except OSError as e:
        raise write_error(text, what, e) from None
    if is_dir:
        raise InvalidParameterError(f"cannot write {what} {text!r}: it is a directory; give a file path inside it")
    if not parent_exists:
        raise InvalidParameterError(f"cannot write {what} {text!r}: directory {str(parent)!r} does not exist; "
                                    "create it first")
    if not parent_is_dir:
        raise InvalidParameterError(f"cannot write {what} {text!r}: {str(parent)!r} is not a directory")
    return out


def is_utf8(path: str | os.PathLike) -> bool:
    """False for a path holding bytes that are not UTF-8 (Python keeps them as surrogate escapes)."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def write_error(path: str | os.PathLike, what: str, err: BaseException) -> OutputWriteError:
    """One OutputWriteError line for an OS failure `err` while writing `path`."""
    code = getattr(err, "errno", None) or _errno_in_text(str(err))
    reason = os.strerror(code) if code else (getattr(err, "strerror", None) or str(err).splitlines()[0])
    advice = ADVICE.get(code or -1)
    error = OutputWriteError(f"cannot write {what} {os.fspath(path)!r}: {reason}" + (f"; {advice}" if advice else ""))
    error.errno = code or errno.EIO
    return error


def is_os_failure(err: BaseException) -> bool:
    """True for an OSError, or a library error that wraps one (polars reports '(os error N)')."""
    return isinstance(err, OSError) or _errno_in_text(str(err)) is not None


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, what: str = "-o") -> Iterator[BinaryIO]:
    """Yield a binary file to write `path`'s content into; on success it replaces `path` atomically.

    On any failure the temporary file is removed; OS failures (disk full, read-only, ...) become
    an OutputWriteError naming `path`. An existing non-regular target (/dev/null, a FIFO) is
    written directly.
    """
    out = check_output_path(path, what)
    if out.exists() and not stat.S_ISREG(out.stat().st_mode):
        with _converted(path, what), open(out, "wb") as f:
            yield f
        return
    tmp = out.with_name(f".{out.name[:80]}.{secrets.token_hex(4)}.tmp")
    try:
        with _converted(path, what):
            with open(tmp, "xb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, out)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


@contextlib.contextmanager
def _converted(path: str | os.PathLike, what: str) -> Iterator[None]:
    try:
        yield
    except OutputWriteError:
        raise
    except Exception as e:
        if is_os_failure(e):
            raise write_error(path, what, e) from None
        raise


def _errno_in_text(text: str) -> int | None:
    m = _OS_ERROR_TEXT.search(text)
    return int(m.group(1)) if m else None


__all__ = ["atomic_output", "check_output_path", "is_os_failure", "is_utf8", "write_error"]
