"""A word-level tokenizer for the small synthetic-world models, saved in the standard transformers format.

Bigger models bring their own tokenizer directory; everything downstream only uses the transformers tokenizer API.
"""
from __future__ import annotations

import re

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>"}
_WORD = re.compile(r"\w+|[^\w\s]")


def words_of(texts) -> list[str]:
    found = set()
    for text in texts:
        found.update(_WORD.findall(text.lower()))
    return sorted(found)


def build_word_tokenizer(texts) -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS.values())}
    for word in words_of(texts):
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, **SPECIAL_TOKENS)
