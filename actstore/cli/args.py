"""Argument parsing pieces shared by the commands: a parser whose errors are one line, and
argparse `type=` checkers that refuse out-of-range numbers before any work starts."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr (exit 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        text = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {text} (see {self.prog} --help)\n")


MAX_INT = 2**63 - 1  # what every number a command passes on (row counts, indices) must fit in


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= `low` (and at most MAX_INT)."""

    def parse(text: str) -> int:
        value = _int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        if value > MAX_INT:
            raise argparse.ArgumentTypeError(f"must be at most {MAX_INT}, got {value}")
        return value

    parse.__name__ = f"int >= {low}"
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def thread_count(text: str) -> int:
    """An argparse type: torch threads, 1 .. this machine's CPU count."""
    value = _int(text)
    cpus = os.cpu_count() or 1
    if not 1 <= value <= cpus:
        raise argparse.ArgumentTypeError(f"must be an integer in 1..{cpus} (this machine's CPUs), got {value}")
    return value


def worker_count(text: str) -> int:
    """An argparse type: local Dask worker processes (single-threaded), 1 .. this machine's CPU count.
    More only contend for the CPUs, and a huge count would start processes until memory runs out."""
    value = _int(text)
    cpus = os.cpu_count() or 1
    if not 1 <= value <= cpus:
        raise argparse.ArgumentTypeError(f"must be an integer in 1..{cpus} (this machine's CPUs; each worker is one "
                                         f"single-threaded process), got {value}")
    return value


def float_in(low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a number x with low < x <= high."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expects a number, got {text!r}") from None
        if not low < value <= high:  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be a number above {low:g} and at most {high:g}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


def tolerate_undecodable_paths() -> None:
    """Let the real stdout and stderr print paths that are not UTF-8 (they arrive as surrogate
    escapes): stdout writes their original bytes back, stderr shows them backslash-escaped."""
    for stream, errors in ((sys.stdout, "surrogateescape"), (sys.stderr, "backslashreplace")):
        reconfigure = getattr(stream, "reconfigure", None)
        if stream in (sys.__stdout__, sys.__stderr__) and reconfigure is not None:
            reconfigure(errors=errors)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects an integer, got {text!r}") from None
