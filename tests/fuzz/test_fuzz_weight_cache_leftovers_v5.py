"""What a killed ingest leaves in the weight cache: an entry being built (`.<key>.building-<pid>`, a whole copy of
the weights) or being removed (`.<key>.removing-<pid>`). _prune skipped every hidden name, so each kill leaked a
copy of the weights (~650 MB for a GPT-2-small shape) for good. A later ingest removes those of processes that
no longer run, and leaves those of a running process alone.

Found by review (V, session 5); fixed in store/weight_cache.py _prune."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "ingest"))
from tiny_models import tiny_model  # noqa: E402

import actstore  # noqa: E402
from actstore.store.weight_cache import cache_dir  # noqa: E402


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # ended and reaped: no process has it (until the system reuses it)


def test_leftovers_of_dead_ingests_are_removed_and_live_ones_kept(tmp_path):
    cache = cache_dir()
    assert cache is not None
    cache.mkdir(parents=True, exist_ok=True)
    dead, live = dead_pid(), os.getppid()
    planted = {}
    for name in (f".{'a' * 32}.building-{dead}", f".{'b' * 32}.removing-{dead}", f".{'c' * 32}.building-{live}"):
        (cache / name / "params" / "embed.W_E" / "c").mkdir(parents=True)
        (cache / name / "params" / "embed.W_E" / "c" / "0").write_bytes(b"\0" * 4096)
        planted[name] = cache / name
    other = cache / f".notakey.building-{dead}"  # not a name the cache makes: left alone
    other.mkdir()
    actstore.ingest("addition", tiny_model("addition"), 8, 0, tmp_path / "s", chunk=8, batch=8, quiet=True)
    assert {name: p.exists() for name, p in planted.items()} == {
        f".{'a' * 32}.building-{dead}": False, f".{'b' * 32}.removing-{dead}": False,
        f".{'c' * 32}.building-{live}": True}
    assert other.exists()
