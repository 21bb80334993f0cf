"""What ingest keeps per model object between calls, and what it skips when the weight cache holds params/: the
processing read off the weights is kept for those weights only (an edit that changes them is read again), and a
store whose params/ come from the cache never makes the float32 weight arrays."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import tiny_model  # noqa: E402

import actstore  # noqa: E402
from actstore.ingest import model_info  # noqa: E402
from actstore.ingest.model_info import processing_dict, weights_digest  # noqa: E402
from actstore.store.weight_cache import ENV  # noqa: E402

KW = dict(hooks=["blocks.0.hook_resid_pre"], chunk=16, batch=8, quiet=True)


def test_processing_read_off_the_weights_follows_them():
    model = tiny_model("addition", seed=5)
    first = processing_dict(model, None, weights_digest(model))
    assert first == processing_dict(model, None, weights_digest(model))
    centred = first["center_unembed"]
    with torch.no_grad():
        w_u = model.unembed.W_U
        w_u += 1.0 if centred else -w_u.mean(-1, keepdim=True)  # flips whether W_U is centred
    after = processing_dict(model, None, weights_digest(model))
    assert after["center_unembed"] is (not centred)
    assert {k: v for k, v in after.items() if k != "center_unembed"} == \
        {k: v for k, v in first.items() if k != "center_unembed"}
    assert processing_dict(model, {"fold_ln": True}, weights_digest(model)) == {"fold_ln": True}


def test_a_store_linked_from_the_cache_makes_no_weight_arrays(tmp_path, monkeypatch):
    assert os.environ[ENV] != "off"
    model = tiny_model("addition", seed=6)
    made: list[int] = []
    real = model_info.params_dict
    monkeypatch.setattr(model_info, "params_dict", lambda m: made.append(1) or real(m))
    first = actstore.ingest("addition", model, 20, 0, tmp_path / "a", **KW)  # builds the cache entry
    assert len(made) == 1
    second = actstore.ingest("addition", model, 20, 0, tmp_path / "b", **KW)  # links it
    assert len(made) == 1
    for name in ("embed.W_E", "blocks.0.attn.W_O"):
        assert (second.param(name) == first.param(name)).all()
