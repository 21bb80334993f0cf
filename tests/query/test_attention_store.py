"""attention(store, ...) on stores ingested from tiny models equals the patterns of a
TransformerLens run_with_cache over the same examples: raw rows, role and label groupings,
entropy, answer-only and float16 stores, filters, and one-line refusals."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import polars as pl
import pytest
from query_models import CHUNK, N_EXAMPLES
from query_models import run_batch, task_data, tiny_model

import actstore
from actstore.errors import InvalidParameterError, UnknownColumnError, UnknownHookError
from actstore.query import attention
from actstore.query.breakdown import t975


@lru_cache(maxsize=None)
def oracle(kind: str):  # type: ignore[no-untyped-def]
    """TransformerLens patterns [layer, example, head, q, k] (float64) and the batch of the same examples."""
    b = run_batch(tiny_model(kind), task_data(kind, N_EXAMPLES, seed=3))
    n_layers = b.model.cfg.n_layers
    pat = np.stack([b.cache[f"blocks.{layer}.attn.hook_pattern"].double().numpy() for layer in range(n_layers)])
    return b, pat


def same_examples(store, b) -> None:  # type: ignore[no-untyped-def]
    toks = store.examples.get_column("tokens").to_list()
    assert all(list(b.data.tokens[i, : b.data.lengths[i]]) == toks[i] for i in range(N_EXAMPLES))


def test_raw_rows_equal_the_cache_causal(tiny_store):
    store = tiny_store("ln_mlp")
    b, pat = oracle("ln_mlp")
    same_examples(store, b)
    raw = attention(store)
    assert raw.columns == ["example_id", "layer", "head", "q_pos", "k_pos", "q_role", "k_role", "value"]
    n_layers, n_heads = 3, 3
    lengths = b.data.lengths
    assert raw.height == int((n_layers * n_heads * lengths * (lengths + 1) // 2).sum())  # k <= q < length
    assert (raw["k_pos"] <= raw["q_pos"]).all()
    e, layer, h, q, k = (raw[c].to_numpy() for c in ("example_id", "layer", "head", "q_pos", "k_pos"))
    np.testing.assert_allclose(raw["value"].to_numpy(), pat[layer, e, h, q, k], rtol=1e-6, atol=1e-7)
    # rows come in (example, layer, head, q_pos, k_pos) order, and carry the tokens' roles
    assert raw.select("example_id", "layer", "head", "q_pos", "k_pos").is_duplicated().sum() == 0
    assert raw.equals(raw.sort("example_id", "layer", "head", "q_pos", "k_pos"))
    np.testing.assert_array_equal(raw["q_role"].to_numpy(), b.data.roles[e, q])
    np.testing.assert_array_equal(raw["k_role"].to_numpy(), b.data.roles[e, k])
    # every query row sums to one over its keys
    sums = raw.group_by("example_id", "layer", "head", "q_pos").agg(pl.col("value").sum())
    np.testing.assert_allclose(sums["value"], 1.0, atol=1e-5)


def test_raw_rows_padded_bidirectional(tiny_store):
    """Brackets: right-padded, bidirectional; pad positions are neither queries nor keys."""
    store = tiny_store("bidir")
    b, pat = oracle("bidir")
    same_examples(store, b)
    assert len(set(b.data.lengths.tolist())) > 1  # really padded
    raw = attention(store, layers=[2], heads=0)
    lengths = b.data.lengths
    assert raw.height == int((lengths ** 2).sum())
    got = raw.join(store.examples.select("example_id", "length"), on="example_id")
    assert (got["q_pos"] < got["length"]).all() and (got["k_pos"] < got["length"]).all()
    e, q, k = raw["example_id"].to_numpy(), raw["q_pos"].to_numpy(), raw["k_pos"].to_numpy()
    np.testing.assert_allclose(raw["value"].to_numpy(), pat[2, e, 0, q, k], rtol=1e-6, atol=1e-7)
    assert set(raw["layer"].unique()) == {2} and set(raw["head"].unique()) == {0}


def test_seed_query_zero_head_2_0(tiny_store):
    """Brackets seed: head 2.0's average attention from query 0 to each key position."""
    store = tiny_store("bidir")
    b, pat = oracle("bidir")
    agg = attention(store, layers=2, heads=0, query=0, group_by=["k_pos"])
    assert agg.columns == ["layer", "head", "k_pos", "mean", "std", "n", "ci_low", "ci_high", "entropy"]
    lengths = b.data.lengths
    for k in (0, 1, 5, 30):
        has = lengths > k
        vals = pat[2, has, 0, 0, k]
        row = agg.filter(pl.col("k_pos") == k)
        assert row["n"].item() == has.sum()
        np.testing.assert_allclose(row["mean"].item(), vals.mean(), rtol=1e-6)
        np.testing.assert_allclose(row["std"].item(), vals.std(ddof=1), rtol=1e-5)


def entropy_of(rows: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(rows > 0, rows * np.log(rows), 0.0).sum(-1)


def test_role_masses_split_by_label_equal_the_cache(tiny_store):
    """Addition seed: '=' -> each a-digit in layer 1, split by carry_2; mean, std, n, entropy."""
    store = tiny_store("ln_mlp")
    b, pat = oracle("ln_mlp")
    digits = ["a0", "a1", "a2", "a3"]
    agg = attention(store, layers=1, query="=", key=digits, group_by=["k_role", "carry_2"])
    assert agg.columns == ["layer", "head", "k_role", "carry_2", "mean", "std", "n", "ci_low", "ci_high", "entropy"]
    assert agg.height == 3 * 4 * 2
    carry = b.data.labels["carry_2"].to_numpy()
    q = 9  # '=' in 'a0a1a2a3+b0b1b2b3='
    assert (b.data.roles[:, q] == "=").all()
    for head in range(3):
        ent = entropy_of(pat[1, :, head, q, : q + 1])
        for d, role in enumerate(digits):
            for split in (False, True):
                rows = carry == split
                vals = pat[1, rows, head, q, d]
                got = agg.filter(pl.col("head") == head, pl.col("k_role") == role, pl.col("carry_2") == split)
                assert got["n"].item() == rows.sum()
                np.testing.assert_allclose(got["mean"].item(), vals.mean(), rtol=1e-6)
                np.testing.assert_allclose(got["std"].item(), vals.std(ddof=1), rtol=1e-5)
                np.testing.assert_allclose(got["entropy"].item(), ent[rows].mean(), rtol=1e-6)
                half = t975(int(rows.sum()) - 1) * vals.std(ddof=1) / np.sqrt(rows.sum())  # the breakdown interval
                np.testing.assert_allclose([got["ci_low"].item(), got["ci_high"].item()],
                                           [vals.mean() - half, vals.mean() + half], rtol=1e-5)


def test_role_mass_sums_every_key_of_the_role(tiny_store):
    """Brackets: the mass of query 0 on all 'open' keys (a role held by many positions) per failure type."""
    store = tiny_store("bidir")
    b, pat = oracle("bidir")
    agg = attention(store, layers=[1], heads=[1], query=0, group_by=["failure", "k_role"])
    failure = b.data.labels["failure"].to_numpy()
    opens = b.data.roles == "open"
    mass = (pat[1, :, 1, 0, :] * opens).sum(-1)  # pad keys have role '' and probability 0
    for f in np.unique(failure):
        rows = (failure == f) & opens.any(1)
        got = agg.filter(pl.col("failure") == f, pl.col("k_role") == "open")
        assert got["n"].item() == rows.sum()
        np.testing.assert_allclose(got["mean"].item(), mass[rows].mean(), rtol=1e-6)
    # masses over all roles of a query row sum to one
    total = agg.with_columns(s=pl.col("mean") * pl.col("n")).group_by("failure").agg(pl.col("s").sum())
    counts = pl.DataFrame({"failure": failure}).group_by("failure").len()
    both = total.join(counts, on="failure")
    np.testing.assert_allclose(both["s"], both["len"], rtol=1e-5)


def test_aggregates_equal_raw_rows_grouped(tiny_store):
    """The aggregate of units equals grouping the raw table (sum per unit, then mean/std/count)."""
    store = tiny_store("ln_mlp")
    raw = attention(store, layers=[0, 2], query=["=", "c0"], key=["b1", "b2", 3])
    agg = attention(store, layers=[0, 2], query=["=", "c0"], key=["b1", "b2", 3], group_by=["q_role"])
    units = raw.group_by("example_id", "layer", "head", "q_pos", "q_role").agg(pl.col("value").cast(pl.Float64).sum())
    want = units.group_by("layer", "head", "q_role").agg(
        mean=pl.col("value").mean(), std=pl.col("value").std(), n=pl.len()).sort("layer", "head", "q_role")
    assert agg.select("layer", "head", "q_role").equals(want.select("layer", "head", "q_role"))
    np.testing.assert_allclose(agg["mean"], want["mean"], rtol=1e-6)
    np.testing.assert_allclose(agg["std"], want["std"], rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(agg["n"], want["n"])
    assert set(raw["k_role"].unique()) == {"a3", "b1", "b2"}


def test_where_filters_examples(tiny_store):
    store = tiny_store("ln_mlp")
    kept = store.examples.filter(pl.col("carry_1"))["example_id"]
    raw = attention(store, layers=0, heads=1, query="=", where={"carry_1": True})
    assert set(raw["example_id"].unique()) == set(kept) and 0 < len(kept) < N_EXAMPLES
    expr = attention(store, layers=0, heads=1, query="=", where=pl.col("carry_1") & pl.col("any_carry"))
    assert expr.equals(raw)  # carry_1 implies any_carry
    mean = attention(store, layers=0, heads=1, query="=", key=0, aggregate="mean", where={"carry_1": True})
    assert mean["n"].item() == len(kept)


def test_answer_only_and_float16_stores(tmp_path):
    """Patterns stored at the answer positions only (float16): the answer rows equal the cache;
    a query at another position is refused with a one-line error naming the hook."""
    store = actstore.ingest("addition", tiny_model("ln_mlp"), N_EXAMPLES, 3, tmp_path / "s", positions="answer",
                            dtype="float16", chunk=CHUNK, batch=8, quiet=True)
    assert store.hook_info("blocks.1.attn.hook_pattern").dims[2] == "answer"
    b, pat = oracle("ln_mlp")
    raw = attention(store, layers=1)
    assert sorted(raw["q_pos"].unique().to_list()) == [9, 10, 11, 12]
    e, h, q, k = (raw[c].to_numpy() for c in ("example_id", "head", "q_pos", "k_pos"))
    np.testing.assert_allclose(raw["value"].to_numpy(), pat[1, e, h, q, k].astype(np.float16), rtol=0, atol=0)
    assert raw.height == N_EXAMPLES * 3 * (10 + 11 + 12 + 13)
    # c0 (position 10) is an answer position
    by_role = attention(store, layers=1, query="c0", key="=", group_by=["q_role"])
    assert by_role.get_column("n").to_list() == [N_EXAMPLES] * 3
    with pytest.raises(InvalidParameterError, match=r"answer positions only.*position 2 is not one"):
        attention(store, query="a2")


def test_refusals(tiny_store):
    store = tiny_store("ln_mlp")
    with pytest.raises(InvalidParameterError, match=r"no token has role 'END'; roles in this store: \+, =, a0"):
        attention(store, query="END")
    with pytest.raises(InvalidParameterError, match=r"layers: 3 is out of range; the model has 3"):
        attention(store, layers=[3])
    with pytest.raises(InvalidParameterError, match="position 14 is outside the store's 14 positions"):
        attention(store, key=14)
    with pytest.raises(UnknownColumnError, match=r"'carry' is not a label.*carry_0"):
        attention(store, group_by=["carry"])
    with pytest.raises(UnknownColumnError, match="where"):
        attention(store, where={"nope": 1})
    with pytest.raises(InvalidParameterError, match="aggregate must be None or one of mean"):
        attention(store, aggregate="median")


def test_missing_pattern_hook(tmp_path):
    store = actstore.ingest("addition", tiny_model("ln_mlp"), 8, 3, tmp_path / "s", hooks=["z"], quiet=True)
    with pytest.raises(UnknownHookError, match=r"blocks.0.attn.hook_pattern.*re-ingest"):
        attention(store)


def test_negative_position_is_each_examples_last_token(tiny_store):
    store = tiny_store("bidir")
    b, pat = oracle("bidir")
    agg = attention(store, layers=0, heads=0, query=-1, key=0, group_by=["example_id"])
    last = b.data.lengths - 1
    np.testing.assert_allclose(agg.sort("example_id")["mean"], pat[0, np.arange(N_EXAMPLES), 0, last, 0], rtol=1e-6)
