"""Tokenizers for the text-task tests: a small byte-level BPE trained here on a few sentences.

No GPT-2 files can be had offline, so the tests prove the one-token filter with a BPE whose
merges make only the names (and days) of its training text whole tokens; every other name
splits into several tokens, as with GPT-2's rarer names.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from actstore.datasets import ioi


def train_bpe(words: list[str], vocab_size: int = 600) -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE trained on the IOI templates filled with `words` (each
    written many times, with a leading space), so those words become single tokens."""
    corpus = []
    for template in ioi.TEMPLATES:
        for w in words:
            corpus.append(
                template.replace("[A]", w).replace("[B]", w).replace("[S]", w)
                .replace("[PLACE]", "park").replace("[OBJECT]", "ball")
            )  # fmt: skip
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


@pytest.fixture(scope="session")
def bpe() -> Callable[..., PreTrainedTokenizerFast]:
    return train_bpe
