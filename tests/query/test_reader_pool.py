"""The scan's reading threads live on between scans (chunks.reader_pool): a scan left early must not
leave the next scan waiting or reading wrong rows."""

from __future__ import annotations

import numpy as np

from actstore.query import dla
from actstore.query.attribution import required_hooks
from actstore.query.chunks import at_answers, example_arrays, reader_pool, stream
from actstore.query.readout import Weights


def test_a_scan_left_early_leaves_the_next_one_whole(tiny_store):
    store = tiny_store("ln_mlp", "float16")
    want = dla(store, level="head", target="diff")
    hooks, _ = required_hooks(Weights.from_store(store), "head")
    for _ in range(3):
        scan = stream(store, hooks)
        first = next(scan)
        assert first.start == 0
        scan.close()  # the next chunk's reads were in flight
    assert reader_pool(2) is reader_pool(2)
    got = dla(store, level="head", target="diff")
    assert got.equals(want)
    chunks = [c.start for c in stream(store, hooks)]
    assert chunks == [start for start, _ in store.chunks()]
    z = store.hook_info(hooks[0])
    for c in stream(store, [hooks[0]], [hooks[0]]):
        np.testing.assert_array_equal(c.full[hooks[0]], store.read(z.name, c.start, c.stop))


def test_every_chunk_of_a_scan_holds_its_own_rows(tiny_store):
    """Answers-only scans queue two chunks' reads at once: each chunk still gets its own rows, in order,
    over all chunks and over a subset of them, cast as asked."""
    store = tiny_store("ln_mlp", "float16")
    hooks, _ = required_hooks(Weights.from_store(store), "head")
    every = list(store.chunks())
    assert len(every) >= 3
    ex = example_arrays(store)
    for ranges in (every, every[::2], every[1:]):
        got = list(stream(store, hooks, answer_dtype=np.float32, ranges=ranges))
        assert [(c.start, c.stop) for c in got] == ranges
        for c in got:
            for name in hooks:
                want = at_answers(store.read(name, c.start, c.stop), store.hook_info(name).dims,
                                  ex.answer_pos[c.start:c.stop])
                assert c.at_answer[name].dtype == np.float32
                np.testing.assert_array_equal(c.at_answer[name], want.astype(np.float32))
