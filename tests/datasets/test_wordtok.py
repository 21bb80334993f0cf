"""The word tokenizer: round trips, deterministic vocabulary, and TransformerLens's token helpers."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from actstore.datasets.days import Days
from actstore.datasets.ioi import IOI
from actstore.datasets.wordtok import BOS, UNK, build_word_tokenizer, pieces, vocabulary, word_tokenizer


def test_pieces_are_gpt2_style() -> None:
    assert pieces("When John and Mary went to the shops, John gave") == [
        "When", " John", " and", " Mary", " went", " to", " the", " shops", ",", " John", " gave"
    ]  # fmt: skip


def test_vocabulary_is_deterministic_sorted_and_complete() -> None:
    words = vocabulary()
    assert words[:2] == [BOS, UNK]
    assert words[2:] == sorted(words[2:]) and len(set(words)) == len(words)
    assert words == vocabulary()
    for w in [" Mary", " Monday", " December", ",", ".", "When", "Today", " tomorrow", " shops"]:
        assert w in words, w
    tok = word_tokenizer()
    assert tok.get_vocab() == {w: i for i, w in enumerate(words)}
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (0, 0, 0, 1)


def test_every_task_text_round_trips_without_unknowns() -> None:
    tok = word_tokenizer()
    texts = IOI().generate(2000, 0).text + IOI(corrupt="abc").generate(500, 1).text
    texts += Days().generate(1000, 0).text + Days(corrupt="previous").generate(500, 1).text
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids, text
        assert tok.decode(ids) == text
        assert len(ids) == len(pieces(text))


@pytest.mark.parametrize(
    "seed_prompt",
    ["When John and Mary went to the shops, John gave the bag to", "Today it is Sunday, tomorrow it is"],
)
def test_seed_prompts_have_no_unknown_words(seed_prompt: str) -> None:
    tok = word_tokenizer()
    ids = tok(seed_prompt, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids and tok.decode(ids) == seed_prompt


def test_unknown_words_map_to_unk() -> None:
    tok = word_tokenizer()
    ids = tok(" Zebediah went", add_special_tokens=False)["input_ids"]
    assert ids == [tok.unk_token_id, tok.convert_tokens_to_ids(" went")]
    assert tok.decode(ids) == UNK + " went"


def test_encoding_adds_bos_like_transformerlens_expects() -> None:
    tok = word_tokenizer()
    assert tok("")["input_ids"] == [0]
    assert tok(" John")["input_ids"] == [0, tok.convert_tokens_to_ids(" John")]


def test_transformerlens_helpers_work_offline() -> None:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    tok = build_word_tokenizer(vocabulary())  # a fresh one: TransformerLens may set attributes
    cfg = HookedTransformerConfig(
        n_layers=1, d_model=16, n_ctx=32, d_head=8, n_heads=2, d_mlp=32, act_fn="relu", d_vocab=len(tok), seed=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HookedTransformer(cfg, tokenizer=tok)
    data = IOI().generate(16, 5)
    tokens = model.to_tokens(data.text, padding_side="right")
    np.testing.assert_array_equal(tokens.numpy(), data.tokens)
    assert model.to_str_tokens(data.text[0]) == data.str_tokens[0]
    assert model.to_single_token(" Mary") == tok.convert_tokens_to_ids(" Mary")
    assert model.to_string(tokens[0, 1 : data.lengths[0]]) == data.text[0]
    with pytest.raises(AssertionError):
        model.to_single_token(" Mary and")
    logits = model(torch.as_tensor(data.tokens))
    assert logits.shape == (16, data.tokens.shape[1], len(tok))
