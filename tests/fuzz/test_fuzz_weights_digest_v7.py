"""A store must never claim weights it was not made with: model_info.weights_digest, kept per model object and
checked by a crc32c of every parameter's bytes (its version counters miss edits through `.data`), recomputes
after an edit through `.data` of one column of a wide matrix, the usual neuron and token interventions (one
neuron's input weights W_in[:, n], one token's unembedding W_U[:, t], one residual dimension of every embedding
W_E[:, d]), and after the edits a sparse sample of the values missed (part of a row, two rows swapped, one
value, one head's bias)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
from helpers import sha256_of_weights as fresh  # noqa: E402
from helpers import wide_model  # noqa: E402

from actstore.ingest.model_info import weights_digest  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return wide_model()


@pytest.mark.parametrize("name,column", [("blocks.0.mlp.W_in", 0), ("blocks.0.mlp.W_in", 5), ("blocks.0.mlp.W_in", 999),
                                         ("unembed.W_U", 1), ("unembed.W_U", 1199), ("embed.W_E", 7),
                                         ("blocks.0.mlp.W_out", 3)])
def test_an_edit_of_one_column_through_data_is_caught(model, name, column):
    before = weights_digest(model)
    param = dict(model.named_parameters())[name]
    with torch.no_grad():
        param.data[:, column] *= -2.0  # through .data: the version counter stays
    assert weights_digest(model) == fresh(model) != before


@pytest.mark.parametrize("edit", ["part of a row", "rows swapped", "one value", "one head's bias"])
def test_an_edit_a_sample_would_miss_is_caught(model, edit):
    # each edit leaves every 761st value (the sparse sample of ef75527) as it was
    params = dict(model.named_parameters())
    before = weights_digest(model)
    with torch.no_grad():
        if edit == "part of a row":
            params["embed.W_E"].data[3, 1:100] = 0.0
        elif edit == "rows swapped":
            w = params["embed.W_E"].data
            w[[2, 2 + 761]] = w[[2 + 761, 2]]
        elif edit == "one value":
            params["blocks.0.mlp.W_out"].data[5, 6] += 1.0
        else:
            params["blocks.0.attn.b_Q"].data[1] += 0.5
    assert weights_digest(model) == fresh(model) != before
