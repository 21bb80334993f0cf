"""Every zoo model: DLA from a store by layer, head and neuron equals TransformerLens's own
decompositions on the same examples; components sum to the stored logits; breakdown group sizes
equal label counts. Skips until the zoo (actstore.models) is built."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from query_models import run_batch, tl_logit_attrs

import actstore
from actstore.datasets import get_task
from actstore.query import breakdown, dla

LABELS = {"zoo:addition": "carry_2", "zoo:list_update": "idx", "zoo:brackets": "failure", "zoo:lm": "order"}
N = 48


def load(spec: str):  # type: ignore[no-untyped-def]
    """(model, task, task params) of a zoo model on its first task."""
    from actstore.models import ZOO, load_model

    model = load_model(spec)  # every zoo model is shipped: a failure to load is a failure
    task, params = ZOO[spec.removeprefix("zoo:")].tasks[0]
    return model, task, params


@pytest.fixture(scope="module", params=list(LABELS))
def zoo(request, tmp_path_factory):
    spec = request.param
    model, task, params = load(spec)
    label = LABELS[spec]
    store = actstore.ingest(task, model, N, 5, tmp_path_factory.mktemp(spec.replace(":", "_")) / "s",
                            dtype="float32", chunk=32, quiet=True, model_spec=spec, task_params=params)
    data = get_task(task, **store.manifest.task_params).generate(N, 5, tokenizer=getattr(model, "tokenizer", None))
    return spec, model, store, run_batch(model, data), label


def targets(store) -> list[str]:  # type: ignore[no-untyped-def]
    return ["correct", "diff"] if store.examples.get_column("counter_tokens").null_count() == 0 else ["correct"]


def store_values(store, level: str, target: str) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    table = dla(store, level=level, target=target)
    out = {}
    for (name,), part in table.group_by("component", maintain_order=True):
        out[name] = part.sort("example_id", "answer_idx").get_column("value").to_numpy().reshape(N, store.n_answers)
    return out


def test_layer_head_neuron_equal_transformerlens(zoo):
    spec, model, store, b, _ = zoo
    cfg = model.cfg
    for target in targets(store):
        layers = store_values(store, "layer", target)
        stack, labels = b.cache.decompose_resid(layer=-1, incl_embeds=True, return_labels=True)
        for name, want in zip(labels, tl_logit_attrs(b, stack, target)):
            if name == "pos_embed" and cfg.positional_embedding_type != "standard":
                continue  # TL stacks it; a shortformer never adds it to the residual stream
            ours = {"embed": "embed", "pos_embed": "pos_embed"}.get(name) or (
                f"attn{name.split('_')[0]}" if name.endswith("attn_out") else f"mlp{name.split('_')[0]}")
            np.testing.assert_allclose(layers[ours], want, rtol=1e-4, atol=1e-4, err_msg=f"{spec} {name}")
        heads = store_values(store, "head", target)
        stack, labels = b.cache.stack_head_results(layer=-1, return_labels=True)
        for name, want in zip(labels, tl_logit_attrs(b, stack, target)):
            np.testing.assert_allclose(heads[name], want, rtol=1e-4, atol=1e-4, err_msg=f"{spec} {name}")
        if not cfg.attn_only:
            neurons = store_values(store, "neuron", target)
            stack, labels = b.cache.get_full_resid_decomposition(layer=-1, expand_neurons=True, return_labels=True)
            for name, want in zip(labels, tl_logit_attrs(b, stack, target)):
                if "N" in name and name.startswith("L"):
                    np.testing.assert_allclose(neurons[name], want, rtol=1e-4, atol=1e-4, err_msg=f"{spec} {name}")


@pytest.mark.parametrize("level", ["layer", "head", "neuron", "path"])
def test_components_sum_to_the_stored_logits(zoo, level):
    spec, _, store, _, _ = zoo
    b_u = store.param("unembed.b_U").astype(np.float64)
    out = store.outputs.sort("example_id", "answer_idx")
    for target in targets(store):
        total = (dla(store, level=level, target=target).group_by("example_id", "answer_idx")
                 .agg(pl.col("value").sum()).sort("example_id", "answer_idx"))
        want = out["correct_logit"].to_numpy().astype(np.float64) - b_u[out["correct_token"].to_numpy()]
        if target == "diff":
            want = (out["logit_diff"].to_numpy().astype(np.float64) - b_u[out["correct_token"].to_numpy()]
                    + b_u[out["counter_token"].to_numpy()])
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(total["value"], want, atol=1e-4 * scale, err_msg=f"{spec} {level} {target}")


def test_breakdown_group_sizes_equal_label_counts(zoo):
    spec, _, store, _, label = zoo
    if label not in store.examples.columns:
        pytest.skip(f"{spec}: no {label!r} label")
    out = breakdown(dla(store, level="layer"), group_by=label, examples=store)
    counts = dict(store.examples.group_by(label).len().iter_rows())
    got = dict(out.filter(pl.col("component") == "embed", pl.col("answer_idx") == 0).select(label, "n").iter_rows())
    assert got == counts
