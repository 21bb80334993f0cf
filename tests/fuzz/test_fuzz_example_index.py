"""The per-chunk example index (query/chunks.py ExampleIndex, Store.meta_part) under hostile meta parts: a part
of meta/examples or meta/tokens deleted, truncated, flipped, swapped with a sibling (a valid Parquet file of
other rows) or taken from another store makes dla, logit_lens, attention and neurons fail with one
StoreCorruptError line naming the part, on a fresh open, never a number; and the results on a store with odd
shapes (a partial last chunk of one example) equal those of the same examples read through one chunk."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "ingest"))
from tiny_models import tiny_model  # noqa: E402

import actstore  # noqa: E402
from actstore.errors import StoreCorruptError  # noqa: E402
from actstore.query import attention, dla, logit_lens, neurons  # noqa: E402

KW = dict(chunk=8, batch=8, quiet=True)
N = 25  # chunks of 8, 8, 8 and 1


@pytest.fixture(scope="module")
def model():
    return tiny_model("addition")


@pytest.fixture(scope="module")
def stores(model, tmp_path_factory) -> tuple[Path, Path]:
    """(the store damaged below, another store of the same shape over other examples)."""
    root = tmp_path_factory.mktemp("index")
    a = actstore.ingest("addition", model, N, 0, root / "a", **KW).path
    b = actstore.ingest("addition", model, N, 1, root / "b", **KW).path
    return a, b


def role(store: actstore.open_store) -> str:
    roles = [r for r in store.tokens["role"].unique().to_list() if r]
    return sorted(roles)[0]


QUERIES: dict[str, Callable[[object], pl.DataFrame]] = {
    "dla": lambda s: dla(s, "head"),
    "dla_diff": lambda s: dla(s, "layer", "diff"),
    "lens": lambda s: logit_lens(s),
    "attention_role": lambda s: attention(s, query=role(s)),
    "neurons_role": lambda s: neurons(s, pos=role(s), top_k=3),
    "neurons": lambda s: neurons(s, top_k=3),
}


def damage(root: Path, other: Path, table: str, k: int, how: str) -> Path:
    part = root / "meta" / table / f"part-{k:05d}.parquet"
    data = part.read_bytes()
    if how == "deleted":
        part.unlink()
    elif how == "truncated":
        part.write_bytes(data[: len(data) // 2])
    elif how == "flipped":
        i = len(data) // 2
        part.write_bytes(data[:i] + bytes([data[i] ^ 0x40]) + data[i + 1:])
    elif how == "sibling":  # a valid part of other rows of the same store
        part.write_bytes((root / "meta" / table / f"part-{(k + 1) % 4:05d}.parquet").read_bytes())
    elif how == "other store":  # a valid part of the same rows' ids from a store of other examples
        part.write_bytes((other / "meta" / table / f"part-{k:05d}.parquet").read_bytes())
    return part


CASES = [("examples", 0, "deleted"), ("examples", 3, "truncated"), ("examples", 1, "flipped"),
         ("examples", 2, "other store"), ("examples", 3, "sibling"), ("tokens", 3, "other store"),
         ("tokens", 0, "flipped"), ("tokens", 2, "deleted")]


@pytest.fixture(scope="module")
def reference(stores) -> dict[str, pl.DataFrame]:
    return {name: query(actstore.open_store(stores[0])) for name, query in QUERIES.items()}


@pytest.mark.parametrize("case", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_a_damaged_meta_part_is_one_line_naming_it(stores, reference, tmp_path, case):
    table, k, how = case
    root = shutil.copytree(stores[0], tmp_path / "s")
    part = damage(root, stores[1], table, k, how)
    failed = 0
    for name, query in QUERIES.items():
        try:
            result = query(actstore.open_store(root))
        except StoreCorruptError as e:
            text = str(e)
            assert "\n" not in text and part.name in text and table in text, (name, text)
            failed += 1
            continue
        # a query that did not need the damaged part must give the undamaged store's numbers
        assert result.equals(reference[name]), name
    assert failed >= (4 if table == "examples" else 2), f"only {failed} queries noticed {part}"


def test_odd_chunks_give_the_numbers_of_one_chunk(model, stores, reference, tmp_path):
    """The same 25 examples through one chunk of 32 (batches of 8 either way: the same forward passes)."""
    one = actstore.ingest("addition", model, N, 0, tmp_path / "one", **{**KW, "chunk": 32})
    odd = actstore.open_store(stores[0])
    for name, query in QUERIES.items():
        a, b = reference[name], query(one)
        assert a.height > 0 and a.equals(b), name
    # statistics merged over 4 chunks or taken over 1: the same up to the order of the sums
    a, b = (attention(s, query=role(s), aggregate="mean") for s in (odd, one))
    assert a.select("layer", "head", "n").equals(b.select("layer", "head", "n"))
    assert np.allclose(a["mean"].to_numpy(), b["mean"].to_numpy(), rtol=1e-12, atol=0)
    sel = {"where": pl.col("example_id").is_in([0, 8, 24])}
    for a, b in [(attention(odd, **sel), attention(one, **sel)), (neurons(odd, **sel), neurons(one, **sel))]:
        assert a.height > 0 and a.equals(b)
        assert set(a["example_id"].unique().to_list()) == {0, 8, 24}
    # one example alone: its own batch of 1, so its activations match to rounding only
    single = actstore.ingest("addition", model, 1, 0, tmp_path / "single", **KW)
    a, b = dla(single, "head"), reference["dla"].filter(pl.col("example_id") == 0)
    assert a.drop("value").equals(b.drop("value"))
    assert np.allclose(a["value"].to_numpy(), b["value"].to_numpy(), rtol=1e-2, atol=1e-3)
