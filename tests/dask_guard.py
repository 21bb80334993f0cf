"""Test-side guards for Dask: a test leaves dask's global state as it found it, and a stalled cluster
test fails loudly instead of hanging the CI run.

dask sends every `.compute()` that names no scheduler to its *default client* (distributed's newest
registered Client that is not closed) whenever its `scheduler` setting is "dask.distributed". A
Client left registered by one test (one that never connected stays registered, as "connecting",
until the garbage collector finds it) takes the computations of every later test in that worker
process, and a wait on it never returns.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any, TextIO

import pytest

# seconds one cluster test may run (or a cluster fixture take to start or stop); a quiet run takes < 20 s
STALL_SECONDS = float(os.environ.get("ACTSTORE_CLUSTER_TEST_TIMEOUT", "300"))
# the faulthandler backstop, should the test not unwind from the alarm: dump every stack and exit
BACKSTOP_SECONDS = 60.0

_real_stderr: TextIO | None = None  # the terminal's stderr, kept before pytest captures a test's fd 2


def keep_real_stderr() -> None:
    """Keep a handle on fd 2 as it is now (call it while pytest is not capturing: pytest_configure)."""
    global _real_stderr
    if _real_stderr is None:
        with suppress(OSError):
            _real_stderr = os.fdopen(os.dup(2), "w")


def dask_state() -> tuple[Any, Any]:
    """(dask's `scheduler` setting, distributed's default client or None); (None, None) before dask
    is imported."""
    if "dask" not in sys.modules:
        return None, None
    import dask  # noqa: PLC0415

    scheduler = dask.config.get("scheduler", None)
    if "distributed" not in sys.modules:
        return scheduler, None
    from distributed import default_client  # noqa: PLC0415

    try:
        return scheduler, default_client()
    except ValueError:  # "No clients found"
        return scheduler, None


def restore_dask_state(before: tuple[Any, Any]) -> list[str]:
    """Put dask's scheduler setting and default client back as `before` had them; what differed."""
    scheduler, client = dask_state()
    leaks = []
    if scheduler != before[0]:
        import dask  # noqa: PLC0415

        leaks.append(f"dask.config 'scheduler' is {scheduler!r}, was {before[0]!r}")
        if before[0] is None:
            dask.config.config.pop("scheduler", None)
        else:
            dask.config.set(scheduler=before[0])
    while client is not None and client is not before[1]:
        leaks.append(f"{client!r} (status {client.status!r}) is dask's default client")
        with suppress(Exception):  # it may never have connected: closing it is enough to unregister it
            client.close(timeout=10)
        if client.status != "closed":
            break  # cannot unregister it: reported above
        client = dask_state()[1]
    return leaks


@contextmanager
def stall_guard(what: str, seconds: float = STALL_SECONDS) -> Iterator[None]:
    """Fail `what` (pytest.fail; the other threads' stacks in the message) once it runs past `seconds`.

    SIGALRM interrupts the main thread's waits (Client.gather, Future.result); if the test still
    does not unwind, faulthandler dumps every stack to the terminal and exits the process, so the
    run fails instead of hanging. No-op off the main thread or without SIGALRM.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def stalled(signum: int, frame: Any) -> None:
        frames = sys._current_frames()
        stacks = "\n".join(f"--- thread {t.name} ---\n{''.join(traceback.format_stack(frames[t.ident]))}"
                           for t in threading.enumerate() if t.ident in frames and t is not threading.main_thread())
        pytest.fail(f"{what} ran past {seconds:.0f} s (a stalled Dask cluster or client?); the other threads' stacks:\n"
                    f"{stacks}")

    previous = signal.signal(signal.SIGALRM, stalled)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(seconds + BACKSTOP_SECONDS, exit=True, file=_real_stderr or sys.stderr)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        faulthandler.cancel_dump_traceback_later()
