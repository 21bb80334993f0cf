"""A store must never claim weights it was not made with: model_info.weights_digest, kept per model object and
checked by a sparse sample (its version counters miss edits through `.data`), recomputes after an edit through
`.data` of one column of a wide matrix, the usual neuron and token interventions (one neuron's input weights
W_in[:, n], one token's unembedding W_U[:, t], one residual dimension of every embedding W_E[:, d]), which the
row-and-head checks elsewhere (tests/ingest/test_weights_digest_sample.py) do not edit."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
from helpers import processed_model  # noqa: E402

from actstore.ingest.model_info import weights_digest  # noqa: E402
from actstore.store.integrity import weights_sha256  # noqa: E402


@pytest.fixture(scope="module")
def model():
    # matrices of 800 x 1000 / 1200 x 800: wide enough for the sparsest sample stride
    return processed_model(n_layers=1, d_model=800, n_heads=4, d_head=16, d_mlp=1000, d_vocab=1200, n_ctx=32,
                           act_fn="gelu", normalization_type="LN", seed=0)


def fresh(model) -> str:
    return weights_sha256((n, p.detach().numpy()) for n, p in sorted(model.named_parameters()))


@pytest.mark.parametrize("name,column", [("blocks.0.mlp.W_in", 0), ("blocks.0.mlp.W_in", 5), ("blocks.0.mlp.W_in", 999),
                                         ("unembed.W_U", 1), ("unembed.W_U", 1199), ("embed.W_E", 7),
                                         ("blocks.0.mlp.W_out", 3)])
def test_an_edit_of_one_column_through_data_is_caught(model, name, column):
    before = weights_digest(model)
    param = dict(model.named_parameters())[name]
    with torch.no_grad():
        param.data[:, column] *= -2.0  # through .data: the version counter stays
    assert weights_digest(model) == fresh(model) != before
