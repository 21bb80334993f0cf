"""model_info.weights_digest keeps a model's digest while its weights are unchanged (checked by a crc32c of every
parameter's bytes): an edit through `.data` (no version counter) of any one row of an embedding or MLP matrix,
or of one head, is caught and the digest recomputed."""

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
    # rows of 800 values (W_E, W_pos, W_out) and 1000 (W_in): sampled at strides of 761 and 761
    return processed_model(n_layers=1, d_model=800, n_heads=4, d_head=16, d_mlp=1000, d_vocab=1200, n_ctx=32,
                           act_fn="gelu", normalization_type="LN", seed=0)


def fresh(model) -> str:
    return weights_sha256((n, p.detach().numpy()) for n, p in sorted(model.named_parameters()))


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
