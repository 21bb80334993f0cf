"""dla(store, ...) on stores ingested from tiny models: sums to the stored logits, equals the math
run on a TransformerLens cache of the same examples, reads answer-only stores, refuses clearly."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from query_models import N_EXAMPLES
from query_models import SHAPES, run_batch, tiny_model

import actstore
from actstore.datasets import get_task
from actstore.errors import InvalidParameterError, UnknownHookError
from actstore.query import dla
from actstore.query.attribution import LEVELS, direct_attribution
from actstore.query.readout import Readout


def targets(kind: str) -> list[str]:
    return ["correct", "diff"] if SHAPES[kind][0] == "brackets" else ["correct"]


def totals(store, table: pl.DataFrame, target: str) -> pl.DataFrame:
    """Per answer: the sum of the components and what it must equal (from meta/outputs and b_U)."""
    b_u = store.param("unembed.b_U").astype(np.float64)
    out = store.outputs.with_columns(
        want=pl.col("correct_logit").cast(pl.Float64) - pl.col("correct_token").map_elements(
            lambda t: float(b_u[t]), return_dtype=pl.Float64))
    if target == "diff":
        out = out.with_columns(want=pl.col("logit_diff").cast(pl.Float64) - pl.col("correct_token").map_elements(
            lambda t: float(b_u[t]), return_dtype=pl.Float64) + pl.col("counter_token").map_elements(
            lambda t: float(b_u[t]), return_dtype=pl.Float64))
    got = table.group_by("example_id", "answer_idx").agg(pl.col("value").sum().alias("got"),
                                                         pl.col("answer_pos").first())
    return got.join(out.select("example_id", "answer_idx", "want", pl.col("answer_pos").alias("out_pos")),
                    on=["example_id", "answer_idx"], how="full", coalesce=True)


@pytest.mark.parametrize("kind", list(SHAPES))
@pytest.mark.parametrize("level", LEVELS)
def test_components_sum_to_the_stored_logits(tiny_store, kind, level):
    store = tiny_store(kind)
    for target in targets(kind):
        table = dla(store, level=level, target=target)
        n_comp = table.get_column("component").n_unique()
        assert table.height == N_EXAMPLES * store.n_answers * n_comp
        assert table.get_column("target").unique().to_list() == [target]
        t = totals(store, table, target)
        assert t.height == N_EXAMPLES * store.n_answers and t.null_count().sum_horizontal().item() == 0
        np.testing.assert_allclose(t["got"], t["want"], rtol=1e-5, atol=2e-4, err_msg=f"{level} {target}")
        np.testing.assert_array_equal(t["answer_pos"], t["out_pos"])


@pytest.mark.parametrize("kind", list(SHAPES))
def test_store_equals_the_math_on_a_transformerlens_cache(tiny_store, kind):
    """Streaming chunk by chunk and gathering answer positions changes nothing."""
    store = tiny_store(kind)
    task = SHAPES[kind][0]
    data = get_task(task, **({"max_len": 40} if task == "brackets" else {})).generate(N_EXAMPLES, 3)
    b = run_batch(tiny_model(kind), data)
    for level in ("head", "path"):
        table = dla(store, level=level).sort("example_id", "answer_idx", maintain_order=True)
        readout = Readout(b.weights, data.answer_tokens)
        values, comps = direct_attribution(b.weights, readout, b.chunk, level=level)
        assert table.get_column("component").head(len(comps)).to_list() == [c.name for c in comps]
        np.testing.assert_allclose(table.get_column("value").to_numpy(), values.ravel(), rtol=1e-6, atol=1e-6)


def test_schema_and_component_columns(tiny_store):
    store = tiny_store("ln_mlp")
    head = dla(store, level="head")
    assert head.schema == pl.Schema({"example_id": pl.Int64, "answer_idx": pl.Int64, "answer_pos": pl.Int64,
                                     "target": pl.String, "component": pl.String, "layer": pl.Int64,
                                     "head": pl.Int64, "value": pl.Float64})
    first = head.filter(pl.col("example_id") == 0, pl.col("answer_idx") == 0)
    assert first.get_column("component").to_list() == [
        "embed", "pos_embed", "L0H0", "L0H1", "L0H2", "attn_bias0", "mlp0", "L1H0", "L1H1", "L1H2", "attn_bias1",
        "mlp1", "L2H0", "L2H1", "L2H2", "attn_bias2", "mlp2"]
    row = first.filter(pl.col("component") == "L1H2").row(0, named=True)
    assert (row["layer"], row["head"]) == (1, 2)
    assert first.filter(pl.col("component") == "embed").row(0, named=True)["layer"] is None
    neuron = dla(store, level="neuron")
    assert "neuron" in neuron.columns
    assert neuron.filter(pl.col("component") == "L2N63").get_column("neuron").unique().to_list() == [63]
    path = dla(store, level="path")
    row = path.filter(pl.col("component") == "L0H1>L2H0").row(0, named=True)
    assert (row["source"], row["layer"], row["head"]) == ("L0H1", 2, 0)
    # per-head sums of the paths give the head's value in the head table
    carried = (path.filter(pl.col("component").str.ends_with(">L2H0")).group_by("example_id", "answer_idx")
               .agg(pl.col("value").sum()).sort("example_id", "answer_idx"))
    direct = head.filter(pl.col("component") == "L2H0").sort("example_id", "answer_idx")
    np.testing.assert_allclose(carried["value"], direct["value"], rtol=1e-5, atol=1e-6)  # float32 store


def test_float16_store_is_close_to_float32(tiny_store):
    a = dla(tiny_store("ln_mlp", "float32"), level="head")
    b = dla(tiny_store("ln_mlp", "float16"), level="head")
    scale = float(a.get_column("value").abs().max())
    np.testing.assert_allclose(b["value"], a["value"], atol=5e-3 * scale)


def test_answer_only_store(tmp_path, tiny_store):
    """Heavy hooks stored at the answer positions only: per-head DLA works and is identical;
    paths need every position and say how to re-ingest."""
    data = get_task("addition").generate(N_EXAMPLES, 3)
    store = actstore.ingest("addition", tiny_model("ln_mlp"), N_EXAMPLES, 3, tmp_path / "s", positions="answer",
                            dtype="float32", chunk=16, batch=8, quiet=True)
    assert store.hook_info("blocks.0.attn.hook_z").positions == "answer" and len(data) == N_EXAMPLES
    got = dla(store, level="head")
    want = dla(tiny_store("ln_mlp"), level="head")
    np.testing.assert_allclose(got["value"], want["value"], rtol=1e-9, atol=1e-9)
    with pytest.raises(InvalidParameterError, match=r"blocks.0.attn.hook_z.*answer positions only.*hook_z:all"):
        dla(store, level="path")


def test_refusals(tmp_path, tiny_store):
    store = actstore.ingest("addition", tiny_model("ln_mlp"), 8, 0, tmp_path / "p", hooks=["pattern"],
                            dtype="float32", quiet=True)
    with pytest.raises(UnknownHookError, match=r"dla level='head' needs hook 'blocks.0.attn.hook_z'"):
        dla(store)
    with pytest.raises(InvalidParameterError, match="target 'diff' needs counterfactual tokens.*'addition_no_counter'"):
        dla(tiny_store("ln_mlp", counter=False), target="diff")
    with pytest.raises(InvalidParameterError, match="level must be one of"):
        dla(tiny_store("ln_mlp"), level="heads")


def test_streamed_queries_read_only_the_example_columns_they_need(tiny_store):
    from polars.testing import assert_frame_equal

    from actstore.query.dla import dla_plan
    from actstore.query.executor import Job
    from actstore.query.summary import GroupSpec, summarise

    path = tiny_store("ln_mlp").path
    lean = actstore.open_store(path)
    job = Job(dla_plan, {"level": "head"})
    table, split = dla(lean, level="head"), summarise(lean, job, GroupSpec(by=("carry_1",)))
    assert "examples" not in vars(lean)  # the whole examples table was never loaded
    full = actstore.open_store(path)
    full.examples  # noqa: B018  (loaded first: the arrays and labels come from it)
    assert_frame_equal(dla(full, level="head"), table, check_exact=True)
    assert_frame_equal(summarise(full, job, GroupSpec(by=("carry_1",))), split, check_exact=True)
    assert split.get_column("n").sum() == table.height and split.height > 2
