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


def build_word_tokenizer(texts, keep: dict[str, int] | None = None) -> PreTrainedTokenizerFast:
    """A word-level tokenizer for every word of `texts`. `keep` (an existing tokenizer's vocabulary) keeps those ids
    and appends the new words after them, so a model fine-tuned on a larger world keeps its embeddings."""
    vocab = dict(sorted(keep.items(), key=lambda item: item[1])) if keep else {}
    if list(vocab.values()) != list(range(len(vocab))):
        raise ValueError("the vocabulary to keep must number its tokens 0..N-1")
    for token in SPECIAL_TOKENS.values():
        vocab.setdefault(token, len(vocab))
    for word in words_of(texts):
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, **SPECIAL_TOKENS)
