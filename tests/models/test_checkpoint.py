"""A local Hugging Face GPT-2 checkpoint loads fully offline and matches HF's own logits."""

from __future__ import annotations

import os

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from actstore.errors import ModelUnavailableError, UnknownModelError
from actstore.models import load_model, model_config_dict, processing_of

CORPUS = [
    "When Mary and John went to the store, John gave a drink to Mary.",
    "Today it is Sunday, tomorrow it is Monday.",
    "The quick brown fox jumps over the lazy dog.",
    "After the lunch, Alice and Bob went to the park.",
] * 20


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained here on a few sentences (no download)."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(directory, HF model, tokenizer) of a tiny random GPT-2 saved with save_pretrained."""
    path = tmp_path_factory.mktemp("gpt2-tiny")
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=48, n_layer=2, n_head=4,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    hf = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # make LayerNorm weights and biases non-trivial so folding is exercised
        for name, p in hf.named_parameters():
            if "ln" in name:
                p.add_(0.3 * torch.randn_like(p))
    hf.save_pretrained(path)
    tok.save_pretrained(path)
    return path, hf, tok


def test_checkpoint_logits_match_hf_offline(checkpoint, monkeypatch):
    path, hf, tok = checkpoint
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_model(str(path))
    text = ["When Mary and John went to the store, John gave a drink to", "Today it is Sunday, tomorrow it is"]
    for t in text:
        ids = torch.tensor([[tok.bos_token_id] + tok.encode(t)])
        with torch.no_grad():
            want = hf(ids).logits.log_softmax(-1)
            got = model(ids).log_softmax(-1)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    # the tokenizer came with the checkpoint: to_tokens / to_str_tokens work
    toks = model.to_tokens(text[1])
    assert toks[0, 0].item() == tok.bos_token_id
    assert toks[0, 1:].tolist() == tok.encode(text[1])
    assert "".join(model.to_str_tokens(text[1], prepend_bos=False)) == text[1]


def test_checkpoint_processing_recorded(checkpoint):
    path, hf, _ = checkpoint
    model = load_model(path)
    flags = processing_of(model)
    assert flags["fold_ln"] and flags["center_writing_weights"] and flags["center_unembed"]
    assert model.cfg.normalization_type == "LNPre"
    # centred writing weights and unembedding, as the flags say
    assert model.W_E.mean(-1).abs().max() < 1e-5
    assert model.W_U.mean(-1).abs().max() < 1e-5
    raw = load_model(path, process=False)
    assert processing_of(raw)["fold_ln"] is False and raw.cfg.normalization_type == "LN"
    cfg = model_config_dict(model)
    assert cfg["n_layers"] == 2 and cfg["d_model"] == 48 and cfg["d_vocab"] == hf.config.vocab_size
    assert cfg["act_fn"] == "gelu_new" and cfg["original_architecture"] == "GPT2LMHeadModel"


def test_checkpoint_without_tokenizer_and_wrong_architecture(tmp_path, checkpoint):
    path, hf, _ = checkpoint
    bare = tmp_path / "bare"
    hf.save_pretrained(bare)
    model = load_model(bare)
    assert model.tokenizer is None
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).log_softmax(-1), hf(ids).logits.log_softmax(-1), atol=1e-4, rtol=0)
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(UnknownModelError, match="llama"):
        load_model(other)


def test_hub_offline_is_restored(checkpoint, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    load_model(checkpoint[0])
    assert "HF_HUB_OFFLINE" not in os.environ and constants.HF_HUB_OFFLINE is False


def test_unreadable_checkpoint_weights(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10, n_positions=8).save_pretrained(bad)
    with pytest.raises(ModelUnavailableError, match="bad"):
        load_model(bad)
