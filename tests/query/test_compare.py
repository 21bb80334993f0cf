"""compare(a, b): per-component DLA of two stores, paired by example, against TransformerLens and numpy.

Model vs model: the tiny_store('ln_mlp') examples through a second random model of the same
shape. Clean vs corrupted: IOI prompts and their ABC twins through one tiny random model on the
word tokenizer. The oracle runs each model on the regenerated examples, takes TransformerLens's
own per-head (stack_head_results) and per-layer (decompose_resid) attributions, and computes the
paired mean change, its std and the 95% Student t interval in numpy with tabulated t quantiles.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from query_models import CHUNK, N_EXAMPLES, run_batch, task_data, tiny_model, tl_logit_attrs

import actstore
from actstore.datasets import get_task
from actstore.datasets.wordtok import word_tokenizer
from actstore.errors import IncompleteStoreWarning, InvalidParameterError, UnknownHookError
from actstore.query.compare import COLUMNS, common_examples, compare

# 97.5% quantiles of Student's t (two-sided 95%), from tables
T975 = {23: 2.0686576104190406, 31: 2.0395134463964077, 39: 2.0226909117347285}
N_IOI = 24


def ingest_addition(path: Path, model_seed: int, n: int = N_EXAMPLES, data_seed: int = 3) -> actstore.Store:
    """tiny_store('ln_mlp')'s examples (or another seed's) through the ln_mlp model of `model_seed`."""
    return actstore.ingest("addition", tiny_model("ln_mlp", seed=model_seed), n, data_seed, path,
                           hooks=["default", "resid_post"], dtype="float32", chunk=CHUNK, batch=8, quiet=True)


@pytest.fixture(scope="module")
def second(tmp_path_factory) -> actstore.Store:
    return ingest_addition(tmp_path_factory.mktemp("compare") / "b", model_seed=1)


def ioi_model():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=2, n_heads=2, d_model=32, d_head=16, d_mlp=64, n_ctx=32,
                                  d_vocab=len(word_tokenizer()), act_fn="gelu", normalization_type="LN", seed=5,
                                  device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(cfg)
    model.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    model.eval()
    return model


@pytest.fixture(scope="module")
def ioi(tmp_path_factory) -> dict[str, actstore.Store]:
    """IOI clean and ABC-corrupted stores of one tiny model (and the corrupted set through another)."""
    root = tmp_path_factory.mktemp("compare-ioi")
    model = ioi_model()
    out = {}
    for name, corrupt in (("clean", "none"), ("abc", "abc")):
        out[name] = actstore.ingest("ioi", model, N_IOI, 0, root / name, task_params={"corrupt": corrupt},
                                    dtype="float32", quiet=True, model_spec="tiny-ioi")
    return out


def head_attrs(model, data, target: str) -> dict[str, np.ndarray]:
    """TransformerLens per-head attributions: {'L0H0': [example, answer], ...}."""
    b = run_batch(model, data)
    stack, labels = b.cache.stack_head_results(layer=-1, return_labels=True)
    return dict(zip(labels, tl_logit_attrs(b, stack, target)))


def layer_attrs(model, data, target: str) -> dict[str, np.ndarray]:
    """TransformerLens per-layer attributions under actstore's names (embed, pos_embed, attn0, mlp0, ...)."""
    b = run_batch(model, data)
    stack, labels = b.cache.decompose_resid(layer=-1, incl_embeds=True, return_labels=True)
    rename = {f"{layer}_{kind}_out": f"{kind}{layer}" for layer in range(model.cfg.n_layers)
              for kind in ("attn", "mlp")}
    return {rename.get(k, k): v for k, v in zip(labels, tl_logit_attrs(b, stack, target))}


def check_against(got: pl.DataFrame, want_a: dict[str, np.ndarray], want_b: dict[str, np.ndarray], n: int) -> None:
    """Every row of `got` for a component in the oracle equals the paired statistics computed in numpy."""
    t = T975[n - 1]
    seen = 0
    for row in got.iter_rows(named=True):
        if row["component"] not in want_a:
            continue
        a = want_a[row["component"]][:n, row["answer_idx"]]
        d = want_b[row["component"]][:n, row["answer_idx"]] - a
        half = t * d.std(ddof=1) / np.sqrt(n)
        np.testing.assert_allclose(
            [row["mean_a"], row["mean_b"], row["change"], row["std"], row["ci_low"], row["ci_high"]],
            [a.mean(), a.mean() + d.mean(), d.mean(), d.std(ddof=1), d.mean() - half, d.mean() + half],
            rtol=1e-5, atol=1e-4, err_msg=row["component"])
        assert row["n"] == n
        seen += 1
    assert seen == len(want_a) * got["answer_idx"].n_unique()


def test_model_vs_model_by_head_equals_transformerlens(tiny_store, second):
    a = tiny_store("ln_mlp")
    got = compare(a, second, level="head")
    assert got.columns == list(COLUMNS) and got["target"].unique().to_list() == ["correct"]
    n_comp = 2 + 3 * 3 + 3 + 3  # embed, pos_embed, heads, attn_bias per layer, mlp per layer
    assert got.height == n_comp * a.n_answers
    assert got["change"].abs().to_list() == sorted(got["change"].abs().to_list(), reverse=True)
    assert got.filter(pl.col("component") == "L1H2")["layer"].to_list() == [1] * a.n_answers
    data = task_data("ln_mlp", N_EXAMPLES, seed=3)
    check_against(got, head_attrs(tiny_model("ln_mlp", 0), data, "correct"),
                  head_attrs(tiny_model("ln_mlp", 1), data, "correct"), N_EXAMPLES)


def test_model_vs_model_by_layer_equals_transformerlens(tiny_store, second):
    a = tiny_store("ln_mlp")
    got = compare(a, second, level="layer")
    assert sorted(got["component"].unique()) == sorted(["embed", "pos_embed", "attn0", "attn1", "attn2", "mlp0",
                                                        "mlp1", "mlp2"])
    data = task_data("ln_mlp", N_EXAMPLES, seed=3)
    check_against(got, layer_attrs(tiny_model("ln_mlp", 0), data, "correct"),
                  layer_attrs(tiny_model("ln_mlp", 1), data, "correct"), N_EXAMPLES)


def test_common_prefix_of_an_interrupted_store(tiny_store, second, tmp_path):
    """A store whose ingest stopped after 2 of its 3 chunks against a finished one: their first 32 examples."""
    root = shutil.copytree(second.path, tmp_path / "partial")
    (root / "_commits" / "00002.json").unlink()
    (root / "_commits" / "complete.json").unlink(missing_ok=True)
    with pytest.warns(IncompleteStoreWarning):
        partial = actstore.open_store(root)
    a = tiny_store("ln_mlp")
    assert partial.n_examples == 2 * CHUNK == common_examples(a, partial)
    got = compare(a, partial)
    assert got["n"].unique().to_list() == [2 * CHUNK]
    data = task_data("ln_mlp", N_EXAMPLES, seed=3)
    check_against(got, head_attrs(tiny_model("ln_mlp", 0), data, "correct"),
                  head_attrs(tiny_model("ln_mlp", 1), data, "correct"), 2 * CHUNK)
    assert compare(second, partial)["change"].abs().max() == 0  # the same store, cut short


def test_clean_vs_corrupted_equals_transformerlens(ioi):
    got = compare(ioi["clean"], ioi["abc"], corrupted=True, target="diff")
    assert got["target"].unique().to_list() == ["diff"] and got["n"].unique().to_list() == [N_IOI]
    model = ioi_model()
    clean, abc = get_task("ioi").generate(N_IOI, 0), get_task("ioi", corrupt="abc").generate(N_IOI, 0)
    check_against(got, head_attrs(model, clean, "diff"), head_attrs(model, abc, "diff"), N_IOI)
    by_layer = compare(ioi["clean"], ioi["abc"], corrupted=True, level="layer")
    check_against(by_layer, layer_attrs(model, clean, "correct"), layer_attrs(model, abc, "correct"), N_IOI)


def test_clean_vs_corrupted_refusals(ioi, tmp_path):
    with pytest.raises(InvalidParameterError, match=r"task parameters differ \(corrupt: 'none' vs 'abc'\).*"
                                                    r"pass --corrupted"):
        compare(ioi["clean"], ioi["abc"])
    with pytest.raises(InvalidParameterError, match="B's tokens are not A's corrupted twins, first at example 0"):
        compare(ioi["clean"], ioi["clean"], corrupted=True)
    # a store whose examples do not record their twins: the manifests say B is the corrupted variant
    no_twins = with_examples(ioi["clean"], ioi["clean"].examples.drop("corrupted_tokens"))
    assert compare(no_twins, ioi["abc"], corrupted=True)["n"].unique().to_list() == [N_IOI]
    with pytest.raises(InvalidParameterError, match="record no corrupted twins and B was made with A's task "
                                                    "parameters"):
        compare(no_twins, ioi["clean"], corrupted=True)
    # target 'diff' reads both runs along one direction: the counterfactual tokens must agree
    ex = ioi["abc"].examples
    counter = with_examples(ioi["abc"], ex.with_columns(pl.Series("counter_tokens", [[0]] * ex.height)))
    assert compare(ioi["clean"], counter, corrupted=True)["n"].unique().to_list() == [N_IOI]
    with pytest.raises(InvalidParameterError, match=r"compare \(clean vs corrupted\): the examples' counter_tokens "
                                                    "differ, first at example 0"):
        compare(ioi["clean"], counter, corrupted=True, target="diff")
    with torch.no_grad():
        other = ioi_model()
        for p in other.parameters():
            p.mul_(1.5)
    abc2 = actstore.ingest("ioi", other, N_IOI, 0, tmp_path / "abc2", task_params={"corrupt": "abc"},
                           dtype="float32", quiet=True, model_spec="tiny-ioi")
    with pytest.raises(InvalidParameterError, match="ingested with different models"):
        compare(ioi["clean"], abc2, corrupted=True)
    # two models on the same (corrupted) examples is a plain comparison
    assert compare(ioi["abc"], abc2)["n"].unique().to_list() == [N_IOI]


def test_a_zoo_store_against_itself_and_a_copy(tmp_path):
    store = actstore.ingest("addition", "zoo:addition", 48, 0, tmp_path / "zoo", quiet=True)
    got = compare(store, store)
    assert got["n"].unique().to_list() == [48]
    assert (got["change"] == 0).all() and (got["std"] == 0).all()
    assert (got["ci_low"] == 0).all() and (got["ci_high"] == 0).all()
    assert got["mean_a"].equals(got["mean_b"], check_names=False)
    table = actstore.query.dla(store)
    want = table.group_by("answer_idx", "component", maintain_order=True).agg(pl.col("value").mean())
    joined = got.join(want, on=["answer_idx", "component"])
    assert joined.height == got.height
    np.testing.assert_allclose(joined["mean_a"], joined["value"], rtol=1e-12)
    copy = actstore.open_store(shutil.copytree(store.path, tmp_path / "copy"))
    assert compare(store, copy, level="layer")["change"].abs().max() == 0


def with_examples(store: actstore.Store, frame: pl.DataFrame) -> actstore.Store:
    """A fresh Store object of `store` whose examples table reads as `frame` (to test the per-example check)."""
    fresh = actstore.open_store(store.path)
    fresh.__dict__["examples"] = frame
    return fresh


def test_stores_that_do_not_cover_the_same_examples_are_refused(tiny_store, second, tmp_path):
    a = tiny_store("ln_mlp")
    cases = [
        (tiny_store("bidir"), "A is task 'addition', B is task 'brackets'"),
        (ingest_addition(tmp_path / "seed4", model_seed=1, n=8, data_seed=4), "A is addition seed 3, B seed 4"),
        (tiny_store("ln_attn"), "components do not correspond (A: 3 layers x 3 heads, with MLPs, "
                                "B: 2 layers x 3 heads, no MLPs)"),
    ]
    ex = second.examples
    tokens = ex["tokens"].to_list()
    tokens[5] = [0] + tokens[5][1:] if tokens[5][0] != 0 else [1] + tokens[5][1:]
    cases.append((with_examples(second, ex.with_columns(pl.Series("tokens", tokens))),
                  "the examples' tokens differ (different tokenizers or data?), first at example 5"))
    answers = ex["answer_tokens"].to_list()
    answers[7] = [(t + 1) % 10 for t in answers[7]]
    cases.append((with_examples(second, ex.with_columns(pl.Series("answer_tokens", answers))),
                  "the examples' answer_tokens differ, first at example 7"))
    for b, says in cases:
        with pytest.raises(InvalidParameterError) as e:
            compare(a, b)
        msg = str(e.value)
        assert says in msg and "\n" not in msg and str(a.path) in msg and str(b.path) in msg, msg
    with pytest.raises(InvalidParameterError, match="level must be one of head, layer, got 'neuron'"):
        compare(a, second, level="neuron")
    with pytest.raises(InvalidParameterError, match="target must be one of correct, diff"):
        compare(a, second, target="logit")  # type: ignore[arg-type]


def test_a_store_without_the_hooks_dla_needs(tiny_store, tmp_path):
    a = tiny_store("ln_mlp")
    b = actstore.ingest("addition", tiny_model("ln_mlp", seed=1), N_EXAMPLES, 3, tmp_path / "b", hooks=["pattern"],
                        dtype="float32", quiet=True)
    with pytest.raises(UnknownHookError):
        compare(a, b)
