"""Stores for the intervention tests, ingested once per session (float32, so stored activations are
the model's own): zoo models on their tasks, and a tiny in-test model with MLPs and LayerNorm.

`iv_store(name)` opens the shared store (sweeps accumulate in it: identical sweeps are cache hits);
`iv_fresh(name, dest)` copies it, before any sweep, for tests that count, kill or tamper with sweeps.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from iv_helpers import STORES, tiny_model


@pytest.fixture(scope="session")
def _templates(tmp_path_factory) -> Callable[[str], Path]:
    import actstore

    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            task, model, n, params = STORES[name]
            out = tmp_path_factory.mktemp(f"iv-{name}") / "template"
            net = tiny_model() if model == "tiny" else model
            actstore.ingest(task, net, n, 5, out, dtype="float32", chunk=8, batch=8, quiet=True,
                            task_params=params, model_spec="tiny-ln-mlp" if model == "tiny" else None)
            made[name] = out
        return made[name]

    return get


@pytest.fixture(scope="session")
def iv_store(_templates, tmp_path_factory) -> Callable[[str], object]:
    import actstore

    shared: dict[str, Path] = {}

    def get(name: str):
        if name not in shared:
            shared[name] = tmp_path_factory.mktemp(f"iv-{name}-shared") / "store"
            shutil.copytree(_templates(name), shared[name])
        return actstore.open_store(shared[name])

    return get


@pytest.fixture(scope="session")
def marked_store(tmp_path_factory):
    """(store, model) of the `Marked` task (iv_task.py), registered for the session only."""
    import warnings

    from iv_task import Marked
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    import actstore
    from actstore.datasets import TASKS, register_task

    register_task(Marked)
    try:
        cfg = HookedTransformerConfig(n_layers=2, n_heads=2, d_model=16, d_head=8, d_mlp=16, n_ctx=10, d_vocab=12,
                                      act_fn="relu", normalization_type="LN", seed=2, device="cpu")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            model = HookedTransformer(cfg).eval()
        model.requires_grad_(False)
        out = tmp_path_factory.mktemp("iv-marked") / "store"
        store = actstore.ingest(Marked.name, model, 16, 1, out, dtype="float32", chunk=8, batch=8, quiet=True,
                                model_spec="iv-marked-tiny")
        yield store, model
    finally:
        TASKS.pop(Marked.name, None)


@pytest.fixture()
def iv_fresh(_templates) -> Callable[[str, Path], Path]:
    def copy(name: str, dest: Path) -> Path:
        shutil.copytree(_templates(name), dest)
        return dest

    return copy
