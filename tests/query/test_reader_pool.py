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


def test_heads_computed_on_the_reading_threads_are_the_main_threads_bit_for_bit(tiny_store):
    """dla's head and MLP values made on the reading threads (stream(products=), from each hook_z and hook_post
    as read) equal direct_attribution's own from the gathered answers, for every chunk and answer target; level
    'neuron' reads each neuron, so its hook_post is gathered, not reduced."""
    from actstore.query.attribution import COMPUTE, direct_attribution
    from actstore.query.dla import DlaPlan, chunk_target

    store = tiny_store("ln_mlp", "float16")
    for level, target in (("head", "diff"), ("layer", "correct"), ("neuron", "diff")):
        plan = DlaPlan(store, level, target, None, 0, None)
        plain = list(stream(store, *plan.hooks, examples=plan.at.arrays, answer_dtype=COMPUTE))
        threaded = list(stream(store, *plan.hooks, examples=plan.at.arrays, answer_dtype=COMPUTE,
                               products=plan.answer_products))
        assert len(plain) == len(threaded) >= 3
        for a, b in zip(plain, threaded):
            assert b.products and set(b.products).isdisjoint(b.at_answer)
            mlp = {name for name in plan.hooks[0] if name.endswith("mlp.hook_post")}
            assert mlp and mlp <= set(b.at_answer if level == "neuron" else b.products)
            tgt = chunk_target(store, plan.readout, plan.at.arrays, a, target)
            want, _ = direct_attribution(plan.weights, plan.readout, a, level=level, target=tgt)
            got, _ = direct_attribution(plan.weights, plan.readout, b, level=level, target=tgt, products=b.products)
            np.testing.assert_array_equal(got.view(np.uint64), want.view(np.uint64))


def test_indexed_is_take():
    """Target.indexed (what head_dot reads): rows[index] is take(table), bit for bit, for 'correct', 'diff'
    with few distinct pairs and with many, and a fixed row."""
    from actstore.query.readout import Target

    rng = np.random.default_rng(3)
    table = rng.normal(size=(40, 3, 5)).astype(np.float32)
    few = rng.integers(0, 3, size=(50, 2))
    targets = [Target("correct", rng.integers(0, 40, size=(50, 2)), None),
               Target("diff", few, few[::-1] + 4),  # 3 distinct pairs: differences taken per pair
               Target("diff", rng.integers(0, 40, size=(50, 2)), rng.integers(0, 40, size=(50, 2))),
               Target.fixed(7, (50, 2))]
    sizes = []
    for target in targets:
        rows, index = target.indexed(table)
        assert index.shape == (50, 2) and rows.shape[1:] == table.shape[1:]
        np.testing.assert_array_equal(rows[index].view(np.uint32), target.take(table).view(np.uint32))
        sizes.append(rows.shape[0])
    assert sizes[0] == 40 and sizes[1] <= 9 and sizes[2:] == [100, 1]  # few pairs: one row per distinct pair


def test_answer_values_outlive_the_reads_that_made_them(tiny_store, tmp_path):
    """A hook wanted at the answers only is decoded into the reading thread's reused buffer
    (chunk_read.transient_reads) and copied out: every chunk of a whole scan, kept to its end, still
    holds its own values, in the stored dtype or cast, read on the scan's thread or the readers', and
    for a hook stored at the answer positions (where the gather would be the read array itself)."""
    import actstore
    from query_models import tiny_model

    answer_only = actstore.ingest("addition", tiny_model("ln_mlp"), 40, 3, tmp_path / "answer", chunk=16, batch=40,
                                  quiet=True, dtype="float16", hooks=["blocks.0.attn.hook_z:answer"])
    for store in (tiny_store("ln_mlp", "float16"), answer_only):
        hooks = [h for h in store.hooks if h.endswith("hook_z")]
        ex = example_arrays(store)
        for workers in (1, 2):
            for dtype in (None, np.float32):
                got = list(stream(store, hooks, workers=workers, answer_dtype=dtype))
                assert len(got) == 3
                for c in got:
                    for name in hooks:
                        want = at_answers(store.read(name, c.start, c.stop), store.hook_info(name).dims,
                                          ex.answer_pos[c.start:c.stop])
                        np.testing.assert_array_equal(c.at_answer[name], want if dtype is None else
                                                      want.astype(np.float32))
