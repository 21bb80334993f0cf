"""Stores for the store tests: a synthetic one written through the writer (no model), and a real
one ingested from a tiny random TransformerLens model (for the decomposition checks)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import processed_model
from synthetic_store import write_synthetic


@pytest.fixture()
def synthetic(tmp_path) -> Path:
    return write_synthetic(tmp_path / "syn")


@pytest.fixture(scope="module")
def real_store_template(tmp_path_factory) -> Path:
    """A store ingested from a tiny random processed model (LayerNorm + MLP) on addition."""
    import torch

    model = processed_model(
        n_layers=2, n_heads=2, d_model=32, d_head=16, d_mlp=48, n_ctx=16, d_vocab=12, act_fn="gelu",
        normalization_type="LN", seed=1)
    torch.manual_seed(0)
    import actstore

    out = tmp_path_factory.mktemp("real") / "store"
    actstore.ingest("addition", model, 40, 0, out, chunk=16, batch=8, quiet=True, model_spec="tiny")
    return out


@pytest.fixture()
def real_store(tmp_path, real_store_template) -> Path:
    """A fresh copy of the real store, free to corrupt."""
    out = tmp_path / "real"
    shutil.copytree(real_store_template, out)
    return out
