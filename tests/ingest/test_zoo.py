"""Every zoo model: stored activations equal TransformerLens run_with_cache on the same tokens.

Stored as float16 (the default), compared within float16's tolerance; the decomposition check
recorded by ingest must pass. Bidirectional models are compared with an unpadded run of each
example (TransformerLens does not mask pad keys for bidirectional attention; ingest does).
Skipped while the zoo (actstore.models) is not built.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import actstore
import actstore.errors
from actstore.datasets import get_task

models = pytest.importorskip("actstore.models", reason="the zoo (actstore.models) is not built yet")
if not hasattr(models, "load_model"):
    pytest.skip("the zoo (actstore.models.load_model) is not built yet", allow_module_level=True)

ZOO = {"zoo:addition": "addition", "zoo:list_update": "list_update", "zoo:brackets": "brackets", "zoo:lm": "ioi"}
N = 24


def load(spec: str):
    """The zoo model; while its trained weights are not installed, the same architecture, config and
    tokenizer with random weights, processed the same way (what ingest does is the same either way)."""
    try:
        return models.load_model(spec), spec
    except actstore.errors.ModelUnavailableError:
        from actstore.models.backend import build_model, load_weights
        from actstore.models.zoo import model_config, tokenizer_for, zoo_spec

        zs = zoo_spec(spec.removeprefix("zoo:"))
        tok = tokenizer_for(zs)
        model = build_model(model_config(zs, tok), tokenizer=tok)
        load_weights(model, model.state_dict())
        return model, f"{spec} (random weights)"


@pytest.mark.parametrize("spec", sorted(ZOO))
def test_zoo_model_store_equals_run_with_cache(tmp_path, spec):
    task = ZOO[spec]
    model, label = load(spec)
    given = spec if label == spec else model  # a spec string when the trained weights load
    store = actstore.ingest(task, given, N, 11, tmp_path / "s", hooks=["default", "resid_post"], chunk=16, batch=8,
                            device="cpu", quiet=True, model_spec=label)
    m = store.manifest
    assert m.model_spec == label and m.decomposition["status"] == "ok", m.decomposition
    assert m.processing.get("fold_ln") is not None
    data = get_task(task).generate(N, 11, tokenizer=model.tokenizer)
    np.testing.assert_array_equal(np.array(store.examples["length"].to_list()), data.lengths)
    names = store.hooks
    if model.cfg.attention_dir == "bidirectional":
        for e in range(N):
            length = int(data.lengths[e])
            _, cache = model.run_with_cache(torch.tensor(data.tokens[e:e + 1, :length]), names_filter=names)
            for name in names:
                if "pattern" in name:
                    got = store.read(name, e, e + 1)[0, :, :length, :length]
                else:
                    got = store.read(name, e, e + 1)[0, :length]
                want = cache[name][0].numpy()
                np.testing.assert_allclose(got.astype(np.float32), want, rtol=2e-3,
                                           atol=2e-3 * max(1, np.abs(want).max()),
                                           err_msg=f"{spec} {name} example {e}")
        return
    toks = torch.tensor(data.tokens)
    mask = (torch.arange(toks.shape[1])[None] < torch.tensor(data.lengths)[:, None]).long()
    _, cache = model.run_with_cache(toks, attention_mask=mask, names_filter=names)
    real = np.arange(toks.shape[1])[None] < data.lengths[:, None]  # [example, pos]: compare real positions
    for name in names:
        got, want = store.read(name).astype(np.float32), cache[name].numpy()
        if "pattern" in name:
            got, want = got.transpose(0, 2, 1, 3), want.transpose(0, 2, 1, 3)  # query positions second
        np.testing.assert_allclose(got[real], want[real], rtol=2e-3, atol=2e-3 * max(1, np.abs(want).max()),
                                   err_msg=f"{spec} {name}")
