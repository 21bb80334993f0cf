"""A word-level Hugging Face tokenizer for the zoo's small language model, built in code.

Its vocabulary is every piece the ioi and days tasks can produce (names, places, objects,
template words, days, months, punctuation), split GPT-2 style with the leading space attached
(" John", ",", " went"), plus `<|bos|>` (also EOS and pad, like GPT-2's <|endoftext|>) and
`<|unk|>`. Ids are deterministic: the two special tokens first, then the pieces sorted.

Wrapped as `transformers.PreTrainedTokenizerFast` so TransformerLens's `to_tokens`,
`to_str_tokens` and `to_single_token` work offline: `add_bos_token=True` (so TransformerLens
keeps the tokenizer as is instead of reloading it from the hub by name) and decoding joins
pieces unchanged, so decode(encode(text)) == text for any text made of known pieces.
"""

from __future__ import annotations

from functools import lru_cache

from actstore.errors import require_models

require_models("the word tokenizer of the text tasks", ("tokenizers", "transformers"))

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from actstore.datasets import days_words, ioi_words  # noqa: E402

BOS, UNK = "<|bos|>", "<|unk|>"
NAME = "actstore-word"
# GPT-2-like pieces: an optional space then letters, digits, or other non-space characters
PIECE = r" ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+"


def pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Split(Regex(PIECE), behavior="isolated")


def pieces(text: str) -> list[str]:
    """How the word tokenizer splits `text` before the vocabulary lookup."""
    return [p for p, _ in pre_tokenizer().pre_tokenize_str(text)]


def vocabulary() -> list[str]:
    """Every token string, in id order: specials, then the sorted pieces of all task texts."""
    found: set[str] = set()
    for text in ioi_words.vocabulary_texts() + days_words.vocabulary_texts():
        found.update(pieces(text))
    return [BOS, UNK, *sorted(found - {BOS, UNK})]


def build_word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer over `words` (in id order; must start with BOS and UNK)."""
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizer()
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=BOS,
        pad_token=BOS,
        unk_token=UNK,
        add_bos_token=True,
        clean_up_tokenization_spaces=False,
        name_or_path=NAME,
        padding_side="right",
    )


@lru_cache(maxsize=1)
def word_tokenizer() -> PreTrainedTokenizerFast:
    """The shared word tokenizer (built once per process; do not mutate it)."""
    return build_word_tokenizer(vocabulary())
