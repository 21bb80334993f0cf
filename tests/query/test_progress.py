"""Streamed queries report their chunks to a progress bar only when the caller asks for one."""

from __future__ import annotations

import io

from query_models import CHUNK, N_EXAMPLES

from actstore.query import attention, dla, neurons
from actstore.query.progress import progress


def test_bar_counts_every_chunk_only_inside_progress(tiny_store, capsys):
    store = tiny_store("ln_mlp")
    n_chunks = -(-N_EXAMPLES // CHUNK)
    quiet = dla(store, level="head")
    assert capsys.readouterr().err == ""  # no reporter installed: silent
    buf = io.StringIO()
    with progress(file=buf, leave=True):
        loud = dla(store, level="head")
        attention(store, layers=0, aggregate="mean")
        neurons(store, layers=1)
    text = buf.getvalue()
    assert loud.equals(quiet)
    for what in ("chunks", "attention", "neurons L1"):
        assert f"{what}: 100%" in text and f"{n_chunks}/{n_chunks}" in text, text
