"""ExampleIndex: a scan's per-example arrays read from the examples part of each chunk it reaches.

Every range gives what the whole-store ExampleArrays gives, a query over a store reads no array of
every example, and a store too large to keep its parts gives the same tables from re-read parts.
"""

from __future__ import annotations

import numpy as np
import pytest

import actstore
from actstore.errors import InvalidParameterError
from actstore.query import attention, chunks, dla, logit_lens, neurons
from actstore.query.selectors import Roles
from actstore.query.chunks import ExampleIndex, example_arrays, example_index

FIELDS = ("example_id", "lengths", "answer_pos", "answer_tokens", "counter_tokens", "input_tokens")


@pytest.mark.parametrize("counter", [True, False])
def test_rows_match_the_whole_store_arrays(tiny_store, counter):
    store = tiny_store("ln_mlp", counter=counter)
    whole = example_arrays(actstore.open_store(store.path))
    index = ExampleIndex(store)
    assert store.chunk_size == 16 and index.n == 40
    for start, stop in [(0, 16), (16, 32), (32, 40), (3, 37), (15, 17), (39, 40), (5, 5), (0, 40)]:
        got = index.rows(start, stop)
        for f in FIELDS:
            want = getattr(whole, f)
            if want is None:
                assert getattr(got, f) is None
            else:
                np.testing.assert_array_equal(getattr(got, f), want[start:stop], err_msg=f"{f} [{start}, {stop})")
    assert index.has_counter is counter
    for target in ("correct", "diff"):
        assert index.answer_ids(target).tolist() == np.unique(whole.answer_ids(target)).tolist()
    assert not index.rows(0, 16).answer_pos.flags.writeable  # shared between queries
    with pytest.raises(InvalidParameterError, match=r"\[30, 41\) are not among the store's 40"):
        index.rows(30, 41)


def test_a_dla_reads_no_array_of_every_example(tiny_store):
    store = actstore.open_store(tiny_store("ln_mlp").path)
    dla(store, level="head", target="diff")
    logit_lens(store)
    assert store not in chunks._ARRAYS  # the whole-store arrays were never built
    index = example_index(store)
    assert sorted(index._kept) == [0, 1, 2]  # three small parts: all kept for the next query


def test_parts_read_again_give_the_same_tables(tiny_store, monkeypatch):
    path = tiny_store("ln_mlp").path
    want = {t: dla(actstore.open_store(path), level="head", target=t) for t in ("correct", "diff")}
    lens = logit_lens(actstore.open_store(path))
    monkeypatch.setattr(ExampleIndex, "KEEP_BYTES", 0)  # a store too large to keep any part
    monkeypatch.setattr(ExampleIndex, "RECENT", 1)
    store = actstore.open_store(path)
    for t, table in want.items():
        assert dla(store, level="head", target=t).equals(table)
    assert logit_lens(store).equals(lens)
    index = example_index(store)
    assert not index._kept and list(index._recent) == [2]


def test_at_pos_the_arrays_of_every_example(tiny_store):
    store = actstore.open_store(tiny_store("ln_mlp").path)
    table = dla(store, level="layer", pos=-1)
    assert table.get_column("example_id").n_unique() == 40
    assert store in chunks._ARRAYS  # a position selector picks over every example at once


def test_meta_part_is_one_chunk(tiny_store):
    store = tiny_store("ln_mlp")
    parts = list(store.meta_parts("examples", ["example_id", "length"]))
    for k, part in enumerate(parts):
        assert store.meta_part("examples", k, ["example_id", "length"]).equals(part)
    assert store.meta_part("examples", 2, ["example_id"])["example_id"].to_list() == list(range(32, 40))
    with pytest.raises(IndexError, match="no committed part 3"):
        store.meta_part("examples", 3)


def test_attention_and_neurons_read_roles_chunk_by_chunk(tiny_store):
    path = tiny_store("ln_mlp").path
    whole = actstore.open_store(path)
    names = Roles.from_tokens(whole.tokens, 40, whole.manifest.width).names
    store = actstore.open_store(path)
    index = example_index(store)
    assert index.role_names().names == names and names
    for start, stop in [(0, 16), (16, 40), (7, 33)]:
        np.testing.assert_array_equal(index.roles(start, stop, store.manifest.width).codes,
                                      Roles.from_tokens(whole.tokens, 40, whole.manifest.width).codes[start:stop])
    role = names[-1]
    got = {"att": attention(store, query=role), "att_mean": attention(store, query=role, group_by="k_role"),
           "neurons": neurons(store, layers=0, pos=role, top_k=None)}
    assert store not in chunks._ARRAYS and "tokens" not in vars(store) and "examples" not in vars(store)
    assert got["att"].height and got["neurons"].height
    codes = Roles.from_tokens(whole.tokens, 40, whole.manifest.width).codes  # the whole-table oracle
    picked = {(int(e), int(p)) for e, p in zip(*np.nonzero(codes == names.index(role)))}
    att = got["att"]
    assert set(zip(att["example_id"].to_list(), att["q_pos"].to_list())) == picked
    k_code = codes[att["example_id"].to_numpy(), att["k_pos"].to_numpy()]
    assert att["k_role"].to_list() == [names[c] if c >= 0 else None for c in k_code]
    assert set(zip(got["neurons"]["example_id"].to_list(), got["neurons"]["pos"].to_list())) == picked
    assert got["att_mean"]["k_role"].drop_nulls().unique().sort().to_list() == sorted(
        {names[c] for c in k_code if c >= 0})


@pytest.mark.parametrize("counter", [True, False])
def test_whole_store_facts_come_from_one_pass(tiny_store, tmp_path, monkeypatch, counter):
    import shutil

    path = tmp_path / "store"
    shutil.copytree(tiny_store("ln_mlp", counter=counter).path, path)
    shutil.rmtree(path / "derived", ignore_errors=True)
    whole = example_arrays(actstore.open_store(path))
    store = actstore.open_store(path)
    passes = []
    read = type(store).meta_parts
    monkeypatch.setattr(type(store), "meta_parts", lambda self, *a, **k: passes.append(a) or read(self, *a, **k))
    index = ExampleIndex(store)
    counters = whole.counter_tokens if counter else np.full_like(whole.answer_tokens, -1)
    pairs = np.unique(np.stack([whole.answer_tokens.ravel(), counters.ravel()], axis=1), axis=0)
    assert index.answer_pairs(True).tolist() == [a * chunks.PAIR_BASE + c + 1 for a, c in pairs.tolist()]
    assert index.answer_pairs(False).tolist() == np.unique(whole.answer_tokens).tolist()
    assert index.answer_ids("correct").tolist() == np.unique(whole.answer_tokens).tolist()
    assert index.answer_ids("diff").tolist() == np.unique(whole.answer_ids("diff")).tolist()
    assert index.has_counter is counter
    assert passes == [("examples", chunks.ANSWER_COLUMNS)]  # one pass over two columns serves every fact
    kept = sorted(p.name for p in (path / "derived").iterdir())
    assert len(kept) == 2 and kept[0].startswith("answer_facts-n=40-") and kept[1] == kept[0] + ".sha256"

    def facts_of_a_new_process():
        opened = actstore.open_store(path)
        fresh = ExampleIndex(opened)
        return [fresh.answer_pairs(True).tolist(), fresh.answer_ids("diff").tolist(), fresh.has_counter]

    want = [index.answer_pairs(True).tolist(), index.answer_ids("diff").tolist(), counter]
    assert facts_of_a_new_process() == want and len(passes) == 1  # read back from derived/: no pass
    facts = path / "derived" / kept[0]
    data = bytearray(facts.read_bytes())
    data[len(data) // 2] ^= 0x01
    facts.write_bytes(bytes(data))  # its record no longer vouches for it: recomputed and rewritten
    assert facts_of_a_new_process() == want and len(passes) == 2
    assert facts_of_a_new_process() == want and len(passes) == 2


def test_prefetched_parts_give_the_same_rows(tiny_store, monkeypatch):
    path = tiny_store("ln_mlp").path
    whole = example_arrays(actstore.open_store(path))
    monkeypatch.setattr(ExampleIndex, "KEEP_BYTES", 0)  # nothing kept: every part is read (or prefetched) again
    monkeypatch.setattr(ExampleIndex, "RECENT", 1)
    store = actstore.open_store(path)  # held: an index keeps its store weakly
    index = ExampleIndex(store)
    index.prefetch(16, 40)
    assert sorted(index._pending) == [1, 2]
    index.prefetch(0, 8)  # at most PENDING wait: the oldest (part 1) is dropped
    assert sorted(index._pending) == [0, 2]
    for start, stop in [(16, 32), (32, 40), (0, 16), (3, 37)]:
        got = index.rows(start, stop)
        for f in FIELDS:
            np.testing.assert_array_equal(getattr(got, f), getattr(whole, f)[start:stop], err_msg=f)
    assert not index._pending
    index.prefetch(40, 41)  # out of range: ignored (rows() gives the error)
    assert not index._pending


def test_a_damaged_prefetched_part_fails_where_it_is_read(tiny_store, tmp_path, monkeypatch):
    import shutil

    from actstore.errors import StoreCorruptError

    path = tmp_path / "store"
    shutil.copytree(tiny_store("ln_mlp").path, path)
    part = path / "meta" / "examples" / "part-00001.parquet"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    monkeypatch.setattr(ExampleIndex, "KEEP_BYTES", 0)
    store = actstore.open_store(path)
    index = ExampleIndex(store)
    index.prefetch(16, 32)  # no error yet: only the chunk that needs the part fails
    np.testing.assert_array_equal(index.rows(0, 16).example_id, np.arange(16))
    with pytest.raises(StoreCorruptError, match="part-00001"):
        index.rows(16, 32)
    with pytest.raises(StoreCorruptError, match="part-00001"):  # and again: nothing bad was kept
        index.rows(20, 24)
