"""An opened Store is a snapshot; the store under it may grow (`ingest --n` larger, the same run) or be replaced
(`--overwrite`, another run) while the process keeps it and its kept per-store state (memo, ExampleIndex).
Queries on the old snapshot must refuse with one line, never return a number; a store opened again at the same
path must never reuse the old snapshot's kept examples; `refresh()` (documented as a new snapshot of the same
store) must see a grown store's new examples, and refuse a replaced one.

Found by review (V, session 5): `refresh()` reused the snapshot's manifest, so after a growth it reported the
store corrupt ("the manifest (zarr.json) was changed after the store was created"); fixed in store/reader.py."""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "ingest"))
from tiny_models import tiny_model  # noqa: E402

import actstore  # noqa: E402
from actstore.errors import StoreCorruptError  # noqa: E402
from actstore.query import attention, dla, logit_lens  # noqa: E402

KW = dict(chunk=8, batch=8, quiet=True)


def queries(store) -> dict[str, pl.DataFrame]:
    return {"dla": dla(store, "head"), "dla_diff": dla(store, "layer", "diff"), "lens": logit_lens(store),
            "attention": attention(store, query="=")}


@pytest.fixture(scope="module")
def model():
    return tiny_model("addition")


@pytest.fixture(scope="module")
def direct(model, tmp_path_factory) -> dict[str, pl.DataFrame]:
    """The queries of a store ingested at n=20 directly."""
    return queries(actstore.ingest("addition", model, 20, 0, tmp_path_factory.mktemp("direct") / "s", **KW))


def test_a_store_grown_under_an_open_snapshot(model, direct, tmp_path):
    old = actstore.ingest("addition", model, 10, 0, tmp_path / "s", **KW)
    queries(old)  # fills the snapshot's memo and ExampleIndex (chunk 1 is [8, 10), redone by the growth)
    actstore.ingest("addition", model, 20, 0, tmp_path / "s", **KW)
    for query in (lambda s: dla(s, "head"), logit_lens, lambda s: attention(s, query="=")):
        with pytest.raises(StoreCorruptError) as e:
            query(old)
        assert "\n" not in str(e.value)
    fresh = actstore.open_store(tmp_path / "s")
    assert {k: v.equals(direct[k]) for k, v in queries(fresh).items()} == dict.fromkeys(direct, True)
    again = old.refresh()
    assert again.n_examples == 20
    assert {k: v.equals(direct[k]) for k, v in queries(again).items()} == dict.fromkeys(direct, True)


def test_a_store_replaced_under_an_open_snapshot(model, tmp_path):
    old = actstore.ingest("addition", model, 20, 0, tmp_path / "s", **KW)
    before = queries(old)
    other = queries(actstore.ingest("addition", model, 20, 1, tmp_path / "other", **KW))
    actstore.ingest("addition", model, 20, 1, tmp_path / "s", overwrite=True, **KW)
    with pytest.raises(StoreCorruptError) as e:
        dla(old, "head")
    assert "\n" not in str(e.value)
    with pytest.raises(StoreCorruptError) as e:
        old.refresh()
    assert "\n" not in str(e.value) and "replaced" in str(e.value)
    got = queries(actstore.open_store(tmp_path / "s"))  # same path, a new Store: nothing of `old` reused
    assert {k: v.equals(other[k]) for k, v in got.items()} == dict.fromkeys(other, True)
    assert not got["dla"].equals(before["dla"])


@pytest.mark.parametrize("change, named", [(dict(twins=False), "twins"),
                                           (dict(dtype="float32"), "dtype, hooks")])  # each hook's dtype
def test_a_refused_growth_names_only_what_keeps_it_from_growing(model, tmp_path, change, named):
    """A growth refused for another field said 'differs in: hooks, n, twins', as if n could not grow."""
    actstore.ingest("addition", model, 8, 0, tmp_path / "s", **KW)
    with pytest.raises(actstore.errors.StoreExistsError) as e:
        actstore.ingest("addition", model, 16, 0, tmp_path / "s", **KW, **change)
    assert str(e.value).split("differs in: ")[1].split(")")[0] == named
