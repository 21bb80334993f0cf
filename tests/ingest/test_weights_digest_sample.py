"""model_info.weights_digest keeps a model's digest while its weights are unchanged (checked by a 64-bit XXH3 of every
parameter's bytes): an edit through `.data` (no version counter) of any one row of an embedding or MLP matrix,
or of one head, or two rows swapped, is caught and the digest recomputed."""

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


@pytest.mark.parametrize("where", ["embed.W_E row 0", "embed.W_E row 1", "embed.W_E row 1199",
                                   "blocks.0.mlp.W_in row 7", "blocks.0.mlp.W_out row 998", "pos_embed.W_pos row 31",
                                   "blocks.0.attn.W_Q head 3", "blocks.0.attn.W_O head 2"])
def test_an_edit_of_one_row_or_head_through_data_is_caught(model, where):
    name, _, index = where.partition(" ")
    before = weights_digest(model)
    assert weights_digest(model) == before  # kept while nothing changes
    param = dict(model.named_parameters())[name]
    with torch.no_grad():
        param.data[int(index.split()[-1])] += 1.0  # through .data: the version counter stays
    assert weights_digest(model) == fresh(model) != before


def test_two_rows_swapped_through_data_are_caught(model):
    """A permutation leaves every order-blind sum of the values as it was; the content check is not one."""
    before = weights_digest(model)
    w_e = model.embed.W_E
    with torch.no_grad():
        w_e.data[[3, 5]] = w_e.data[[5, 3]].clone()
    assert weights_digest(model) == fresh(model) != before
