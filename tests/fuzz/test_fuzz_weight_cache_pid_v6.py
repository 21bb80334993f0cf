"""Process ids are reused (a container's ingest often runs under the same small pid each time), so the weight
cache can hold a `.<key>.removing-<pid>` that a killed ingest left under this process's own pid. Removing a
damaged entry renames it to that very name: the rename failed on the leftover, the damaged entry stayed, and
every later ingest wrote its weights without the cache (and _prune never removes a leftover whose pid runs).
A damaged entry must be replaced by a good one whatever such a leftover holds."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1] / "ingest"))
from tiny_models import tiny_model  # noqa: E402

import actstore  # noqa: E402
from actstore.store.weight_cache import RECORD, cache_dir  # noqa: E402

KW = dict(chunk=8, batch=8, quiet=True)


def test_a_damaged_entry_is_rebuilt_past_a_leftover_of_this_pid(tmp_path):
    model = tiny_model("addition")
    cache = cache_dir()
    assert cache is not None
    actstore.ingest("addition", model, 8, 0, tmp_path / "a", **KW)
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    chunk = entry / "params" / "embed.W_E" / "c.0.0"
    good = chunk.read_bytes()
    (tmp_path / "a" / "params" / "embed.W_E" / "c.0.0").unlink()  # the entry's file: one link again
    chunk.write_bytes(bytes([good[0] ^ 1]) + good[1:])  # damaged in place
    leftover = cache / f".{entry.name}.removing-{os.getpid()}"
    (leftover / "params").mkdir(parents=True)
    (leftover / "params" / "x").write_bytes(b"\0" * 64)

    store = actstore.ingest("addition", model, 8, 0, tmp_path / "b", **KW).path
    assert (store / "params" / "embed.W_E" / "c.0.0").read_bytes() == good
    assert chunk.read_bytes() == good and (entry / RECORD).is_file()  # the entry was rebuilt, not left damaged
    assert os.stat(chunk).st_ino == os.stat(store / "params" / "embed.W_E" / "c.0.0").st_ino  # and linked
    np.testing.assert_array_equal(actstore.open_store(store).param("embed.W_E"),
                                  model.embed.W_E.detach().numpy())
