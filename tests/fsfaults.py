"""Real filesystem faults for tests: a tiny full disk and a read-only directory, no mocks.

Each run happens in a private user + mount namespace (`unshare --user --map-root-user --mount`),
where an empty directory of the caller's gets a fresh tmpfs: `size_kb` small for a disk that fills
up, or mounted read-only. Root cannot write past either (unlike chmod), and nothing leaks: the
mount disappears with the namespace. Because it does, each result lists the files left on the
mount, read inside the namespace just after the command.

API (paths in `args` may use the placeholder "{fs}" for the mount point):

    run_cli_on_small_fs(args, size_kb, copy_in=(), timeout=300) -> FsRun
        `actstore ARGS` with "{fs}" on a tmpfs of `size_kb` KiB.
    run_cli_on_readonly_dir(args, copy_in=(), timeout=300) -> FsRun
        `actstore ARGS` with "{fs}" a read-only tmpfs (holding `copy_in`, if given).
    run_on_fs(steps, size_kb=..., readonly=False, copy_in=(), timeout=300) -> list[FsRun]
        several commands (argv lists) in turn on one mount; a `Remount(size_kb=..., readonly=...)`
        step between them grows, shrinks or freezes it (e.g. fill the disk, then free space, resume).
    UNSHARE_SKIP_REASON: None where namespaces work here, else why not;
    requires_unshare: a pytest mark skipping a test with that reason.

FsRun is a subprocess.CompletedProcess (text stdout/stderr, returncode) plus `files`: {relative
path: size in bytes} of every file under the mount after the command, and `error_lines`.
`copy_in` paths (files or directories) are copied onto the mount before the first command (and
count against `size_kb`); they appear in `files` under their base names.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

PLACEHOLDER = "{fs}"
BALLAST = ".fsfaults-ballast"


@dataclass(frozen=True)
class Remount:
    """A step of `run_on_fs` that remounts the tmpfs: a new size and/or read-only (or writable again)."""

    size_kb: int | None = None
    readonly: bool = False


class FsRun(subprocess.CompletedProcess):
    """A finished command on the fault filesystem, with the files it left there."""

    def __init__(self, args: list[str], returncode: int, stdout: str, stderr: str, files: dict[str, int]):
        super().__init__(args, returncode, stdout, stderr)
        self.files = files

    @property
    def error_lines(self) -> list[str]:
        """Non-empty stderr lines (progress bars drawn with carriage returns count as one each)."""
        return [line for line in self.stderr.splitlines() if line.strip()]


@functools.cache
def unshare_skip_reason() -> str | None:
    """None if a user + mount namespace with a tmpfs can be made here, else the reason it cannot."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "fs-fault tests need util-linux `unshare` and `mount`, which are not installed"
    with tempfile.TemporaryDirectory() as d:
        probe = ["unshare", "--user", "--map-root-user", "--mount", "mount", "-t", "tmpfs", "-o", "size=16k", "none", d]
        try:
            done = subprocess.run(probe, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"fs-fault tests need user namespaces: {e}"
    if done.returncode != 0:
        return f"fs-fault tests need unprivileged user + mount namespaces: {done.stderr.strip() or done.returncode}"
    return None


UNSHARE_SKIP_REASON = unshare_skip_reason()
requires_unshare = pytest.mark.skipif(UNSHARE_SKIP_REASON is not None, reason=UNSHARE_SKIP_REASON or "")


def cli_argv(args: Sequence[str]) -> list[str]:
    """The argv that runs `actstore ARGS` with this interpreter."""
    return [sys.executable, "-m", "actstore.cli", *args]


def run_cli_on_small_fs(args: Sequence[str], size_kb: int, copy_in: Sequence[str | os.PathLike] = (),
                        free_kb: int | None = None, timeout: float = 300) -> FsRun:
    """`actstore ARGS` where "{fs}" is a tmpfs of `size_kb` KiB holding copies of `copy_in`;
    with `free_kb`, a ballast file then fills it up to `free_kb` KiB of free space."""
    return run_on_fs([cli_argv(args)], size_kb=size_kb, copy_in=copy_in, free_kb=free_kb, timeout=timeout)[0]


def run_cli_on_readonly_dir(args: Sequence[str], copy_in: Sequence[str | os.PathLike] = (),
                            timeout: float = 300) -> FsRun:
    """`actstore ARGS` where "{fs}" is a read-only tmpfs (holding copies of `copy_in`)."""
    return run_on_fs([cli_argv(args)], readonly=True, copy_in=copy_in, timeout=timeout)[0]


def run_on_fs(steps: Sequence[Sequence[str] | Remount], size_kb: int = 64 * 1024, readonly: bool = False,
              copy_in: Sequence[str | os.PathLike] = (), free_kb: int | None = None,
              timeout: float = 300) -> list[FsRun]:
    """Run each argv of `steps` in turn with "{fs}" on one tmpfs; `Remount` steps change the mount.

    `copy_in` is copied onto the tmpfs first; then, with `free_kb`, a ballast file (not listed in
    `files`) fills it so that only `free_kb` KiB stay free: a store of any size on a nearly full disk.
    Returns one FsRun per command. Skips the calling test if namespaces are unavailable here.
    """
    if UNSHARE_SKIP_REASON is not None:
        pytest.skip(UNSHARE_SKIP_REASON)
    with tempfile.TemporaryDirectory(prefix="actstore-fs-") as work:
        mount = Path(work) / "fs"
        mount.mkdir()
        spec = {"mount": str(mount), "size_kb": size_kb, "readonly": readonly, "timeout": timeout,
                "copy_in": [os.fspath(p) for p in copy_in], "free_kb": free_kb,
                "steps": [_step(s, str(mount)) for s in steps]}
        spec_path = Path(work) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        cmd = ["unshare", "--user", "--map-root-user", "--mount", sys.executable, __file__, str(spec_path)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout * max(1, len(steps)) + 60)
        if done.returncode != 0:
            raise RuntimeError(f"fsfaults driver failed ({done.returncode}): {done.stderr[-2000:]}")
        results = json.loads(done.stdout)
        return [FsRun(r["args"], r["returncode"], r["stdout"], r["stderr"], r["files"]) for r in results]


def _step(step: Sequence[str] | Remount, mount: str) -> dict[str, object]:
    if isinstance(step, Remount):
        return {"remount": {"size_kb": step.size_kb, "readonly": step.readonly}}
    return {"argv": [os.fsdecode(a).replace(PLACEHOLDER, mount) for a in step]}


# --- the driver: runs inside the namespace ------------------------------------------------------

def _mount(mount: str, size_kb: int | None, readonly: bool, remount: bool) -> None:
    opts = ",".join(o for o in ("remount" if remount else "", f"size={size_kb}k" if size_kb else "",
                                "ro" if readonly else "rw") if o)
    argv = ["mount", "-o", opts, mount] if remount else ["mount", "-t", "tmpfs", "-o", opts, "none", mount]
    subprocess.run(argv, check=True, capture_output=True)


def _files(mount: str) -> dict[str, int]:
    out = {}
    for root, _, names in os.walk(mount):
        for name in names:
            path = os.path.join(root, name)
            if path == os.path.join(mount, BALLAST):
                continue
            out[os.path.relpath(path, mount)] = os.lstat(path).st_size
    return out


def _copy_in(paths: list[str], mount: str) -> None:
    for src in paths:
        dst = os.path.join(mount, os.path.basename(src.rstrip("/")))
        (shutil.copytree if os.path.isdir(src) else shutil.copy2)(src, dst)


def _fill(mount: str, free_kb: int) -> None:
    """Write a ballast file leaving about `free_kb` KiB free on the mount."""
    st = os.statvfs(mount)
    extra = st.f_bavail * st.f_frsize - free_kb * 1024
    if extra > 0:
        with open(os.path.join(mount, BALLAST), "wb") as f:
            f.write(b"\0" * extra)


def _drive(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    mount = spec["mount"]
    _mount(mount, spec["size_kb"], readonly=False, remount=False)
    _copy_in(spec["copy_in"], mount)
    if spec["free_kb"] is not None:
        _fill(mount, spec["free_kb"])
    if spec["readonly"]:
        _mount(mount, None, readonly=True, remount=True)
    results = []
    for step in spec["steps"]:
        if "remount" in step:
            _mount(mount, step["remount"]["size_kb"], step["remount"]["readonly"], remount=True)
            continue
        argv = [os.fsencode(a) for a in step["argv"]]  # back to the exact bytes (non-UTF-8 paths)
        done = subprocess.run(argv, capture_output=True, timeout=spec["timeout"])
        results.append({"args": step["argv"], "returncode": done.returncode,
                        "stdout": done.stdout.decode(errors="replace"), "stderr": done.stderr.decode(errors="replace"),
                        "files": _files(mount)})
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    _drive(sys.argv[1])
