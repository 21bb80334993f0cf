"""What queries keep between them (query/memo.py, readout.Target.keep, read_at's kept frames) and the
helpers the fast paths use (readout.distinct_rows, chunk_read.to_float32): kept results are the
results, read-only, within their budget, and never served to another store or other inputs."""

from __future__ import annotations

import numpy as np
import pytest

from actstore.query import dla
from actstore.query.memo import Memo, memo
from actstore.query.readout import Target, distinct_rows
from actstore.store.chunk_read import to_float32


def test_distinct_rows_matches_np_unique_on_both_paths() -> None:
    rng = np.random.default_rng(0)
    small = [rng.integers(0, 7, (50, 3)), rng.integers(0, 5, (50, 3))]  # flag-table path
    large = [rng.integers(0, 1 << 20, (50, 3)), rng.integers(0, 1 << 20, (50, 3))]  # np.unique path
    for parts in (small, large):
        values, inverse = distinct_rows(parts)
        key = parts[0].astype(np.int64) * (int(parts[1].max()) + 1) + parts[1]
        uniq, inv = np.unique(key.ravel(), return_inverse=True)
        assert values[0].size == uniq.size
        np.testing.assert_array_equal(values[0] * (int(parts[1].max()) + 1) + values[1], uniq)
        np.testing.assert_array_equal(inverse, inv.reshape(key.shape))
        for v, part in zip(values, parts):
            np.testing.assert_array_equal(v[inverse], part)


def test_to_float32_is_numpy_cast_bit_for_bit() -> None:
    every = np.arange(1 << 16, dtype=np.uint16).view(np.float16).reshape(256, 256)
    for half in (every, every[:, 3:200:2]):  # contiguous and strided (a gather of answer positions)
        out = to_float32(half)
        assert out.dtype == np.float32 and out.shape == half.shape
        np.testing.assert_array_equal(out.view(np.uint32), half.astype(np.float32).view(np.uint32))
    assert to_float32(np.array([1.5], dtype=np.float64)).dtype == np.float32


def test_memo_hits_need_the_same_objects_and_give_back_the_budget() -> None:
    kept = Memo(budget=1000, entries=2)
    a, b = object(), object()
    made: list[int] = []

    def make(v: int):  # a value that holds bytes of the budget, as a kept Target does
        def value():
            made.append(v)
            return type("V", (), {"kept_bytes": 400 if kept.budget.take(400) else 0, "v": v})()
        return value

    assert kept.get("k", (a,), make(1)).v == 1
    assert kept.get("k", (a,), make(2)).v == 1  # a hit
    assert kept.get("k", (b,), make(3)).v == 3  # other inputs: made again, the old one dropped
    assert kept.budget.used == 400
    kept.get("x", (), make(4))  # 800 bytes held now
    kept.get("y", (), make(5))  # does not fit (keeps nothing); a third entry: the least recent ('k') goes
    assert made == [1, 3, 4, 5] and kept.budget.used == 400
    assert not kept.budget.take(700) and kept.budget.take(600)


def test_a_kept_target_keeps_read_only_results_within_its_budget() -> None:
    table = np.arange(12.0).reshape(4, 3)
    correct, counter = np.array([[0, 1], [2, 1]]), np.array([[3, 3], [0, 0]])
    plain = Target("diff", correct, counter)
    kept = Target("diff", correct, counter).keep(Memo(budget=10_000).budget)
    first = kept.take(table)
    np.testing.assert_array_equal(first, plain.take(table))
    assert kept.take(table) is first and not first.flags.writeable
    assert kept.take(table.copy()) is not first  # another table object: computed, not served
    tight = Target("diff", correct, counter).keep(Memo(budget=8).budget)
    out = tight.take(table)
    assert tight.take(table) is not out and out.flags.writeable and tight.kept_bytes == 0
    left, ids = np.arange(20.0).reshape(5, 4) / 7, np.array([[4, 1], [1, 1]])
    ids.setflags(write=False)
    u = np.linspace(-1, 1, 16).reshape(4, 4)
    np.testing.assert_array_equal(kept.dot(left, ids, u), plain.dot(left, ids, u))
    assert kept.dot(left, ids, u) is kept.dot(left, ids, u)


@pytest.mark.parametrize("kind,target", [("ln_attn", "diff"), ("noln_attn", "correct"), ("ln_mlp", "diff")])
def test_warm_queries_equal_the_first_and_stores_never_share(tiny_store, kind: str, target: str) -> None:
    store = tiny_store(kind, "float16")
    first = dla(store, level="head", target=target)
    assert memo(store).budget.used > 0  # the targets' gathered tables were kept
    for level in ("head", "layer", "head"):
        again = dla(store, level=level, target=target)
        assert again.equals(dla(store, level=level, target=target))
    assert dla(store, level="head", target=target).equals(first)
    other = tiny_store(kind, "float32")  # the same examples, float32 activations: different values
    assert not dla(other, level="head", target=target).equals(first)
    assert dla(store, level="head", target=target, pos=-1).height > 0
    assert dla(store, level="head", target=target).equals(first)


def test_a_scan_of_more_chunks_than_it_could_keep_keeps_none(tiny_store, monkeypatch) -> None:
    import actstore
    from actstore.query import memo as memo_module

    path = tiny_store("ln_mlp", "float16").path
    want = dla(actstore.open_store(path), level="head", target="diff")
    monkeypatch.setattr(memo_module, "SCAN_ENTRIES", 2)  # the store has 3 chunks
    store = actstore.open_store(path)
    assert dla(store, level="head", target="diff").equals(want)
    assert memo(store).budget.used == 0  # no chunk's target or its gathered tables kept
    assert not [k for k in memo(store)._kept if k[0] == "answer target"]
    monkeypatch.setattr(memo_module, "SCAN_ENTRIES", 3)
    assert dla(store, level="head", target="diff").equals(want)
    assert len([k for k in memo(store)._kept if k[0] == "answer target"]) == 3 and memo(store).budget.used > 0


def test_kept_key_columns_follow_the_target_and_level(tiny_store) -> None:
    """The answer tables' key, target and item columns are kept between queries (read_at): a later query
    with another target label or level gets its own, never the last query's."""
    store = tiny_store("ln_attn", "float16")
    correct = dla(store, level="head", target="correct")
    diff = dla(store, level="head", target="diff")
    assert correct.height == diff.height and correct.columns == diff.columns
    assert set(correct["target"]) == {"correct"} and set(diff["target"]) == {"diff"}
    assert correct.drop("value", "target").equals(diff.drop("value", "target"))
    layer = dla(store, level="layer", target="correct")
    assert layer["head"].is_null().all() and "attn0" in set(layer["component"])
    assert correct["head"].is_not_null().any() and "attn0" not in set(correct["component"])
    assert dla(store, level="head", target="correct").equals(correct)


@pytest.mark.parametrize("level,narrow", [("head", 1 << 20), ("head", 0), ("neuron", 1 << 20), ("path", 1 << 20)])
def test_both_ways_of_assembling_the_table_give_the_same_bits(tiny_store, monkeypatch, level: str,
                                                              narrow: int) -> None:
    """direct_attribution divides its blocks by the final scale column by column for long tables of few
    columns and by one concatenate and divide otherwise (attribution._divide_into): the same table either way."""
    from actstore.query import attribution

    store = tiny_store("ln_mlp", "float16")
    monkeypatch.setattr(attribution, "COLUMNWISE_ROWS", 1 << 40)  # always concatenate, then divide
    whole = dla(store, level=level, target="diff")
    monkeypatch.setattr(attribution, "COLUMNWISE_ROWS", 0)
    monkeypatch.setattr(attribution, "COLUMNWISE_COLUMNS", 1 << 20)  # always block by block
    monkeypatch.setattr(attribution, "NARROW", narrow)  # every block column by column, or every one whole
    by_columns = dla(store, level=level, target="diff")
    assert by_columns.equals(whole)
    values = whole["value"].to_numpy()
    assert np.isfinite(values).all() and np.abs(values).max() > 0
