"""load_model specs: bad specs, pretrained names offline (fast failure, cached success), train outputs."""

from __future__ import annotations

import shutil
import time

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from actstore.errors import ModelUnavailableError, UnknownModelError
from actstore.models import load_model, processing_of, zoo_names
from actstore.models.backend import tl
from actstore.models.train import train


@pytest.mark.parametrize("spec, words", [
    ("zoo:nope", ["zoo:nope", "zoo:addition", "zoo:list_update"]),
    ("not-a-model-name", ["not-a-model-name", "zoo:addition"]),
    ("./no/such/dir", ["./no/such/dir", "does not exist"]),
    ("", ["non-empty"]),
])  # fmt: skip
def test_bad_specs_name_the_spec_and_the_zoo(spec, words):
    with pytest.raises(UnknownModelError) as err:
        load_model(spec)
    msg = str(err.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_zoo_names():
    assert zoo_names() == ["addition", "brackets", "list_update", "lm"]


def test_directory_that_is_no_model(tmp_path):
    (tmp_path / "notes.json").write_text('{"hello": 1}')
    with pytest.raises(UnknownModelError, match="neither a Hugging Face"):
        load_model(tmp_path)


def test_pretrained_name_offline_fails_fast(tmp_path, monkeypatch):
    from huggingface_hub import constants

    tl()  # the import of transformer_lens itself is not what we time
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # even without the offline switch
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    start = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as err:
        load_model("gpt2-small")
    assert time.perf_counter() - start < 2.0
    msg = str(err.value)
    assert "gpt2-small" in msg and "cache" in msg and "checkpoint directory" in msg and "\n" not in msg


def _fake_hub_cache(cache, repo: str, files_from) -> None:
    """Lay out a Hugging Face hub cache entry for `repo` holding the files of a saved directory."""
    entry = cache / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(commit)
    shutil.copytree(files_from, entry / "snapshots" / commit)


def test_pretrained_name_loads_from_the_local_cache_offline(tmp_path, monkeypatch):
    """'gpt2-small' resolves to the cached 'gpt2' entry (here a tiny GPT-2) with the hub offline."""
    from huggingface_hub import constants

    saved = tmp_path / "saved"
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=16, n_ctx=16, n_embd=16, n_layer=1, n_head=2)).eval()
    hf.save_pretrained(saved)
    _fake_hub_cache(tmp_path / "cache", "gpt2", saved)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    try:
        model = load_model("gpt2-small")
    except ModelUnavailableError as e:  # e.g. TransformerLens also wants the tokenizer files
        pytest.skip(f"TransformerLens needs more than config + weights from the cache: {e}")
    ids = torch.tensor([[50256, 10, 20, 30]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).log_softmax(-1), hf(ids).logits.log_softmax(-1), atol=1e-4, rtol=0)
    assert processing_of(model)["fold_ln"] is True and model.cfg.normalization_type == "LNPre"


def test_train_output_directory_loads(tmp_path):
    out = tmp_path / "run"
    result = train("list_update", steps=3, out=out, progress=False, eval_n=64)
    assert result.weights.exists() and result.record_path.exists() and not result.installed
    model = load_model(out)
    assert model.cfg.model_name == "zoo:list_update" and model.cfg.n_layers == 2
    assert load_model(result.weights).cfg.d_model == 128  # the .safetensors file works too
    with pytest.raises(Exception, match="already exists"):
        train("list_update", steps=3, out=out, progress=False, eval_n=64)
