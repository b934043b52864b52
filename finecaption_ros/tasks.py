"""The three FineCaption tasks, the attribute vocabulary, every prompt template and the input limits, in one place.

Attribute names follow CompositionCap where they apply; the synthetic scenes in `data/scenes.py` produce exactly
these attributes, and a model trained on real CompositionCap data may answer any attribute name it was trained on.
"""
from __future__ import annotations

import re

ATTRIBUTE_TASK = "attribute"  # one named attribute of one masked region
DENSE_TASK = "dense"  # one region described in full
GLOBAL_TASK = "global"  # the whole image
TASKS = (ATTRIBUTE_TASK, DENSE_TASK, GLOBAL_TASK)

# Attributes the built-in synthetic world annotates, in the order dense captions mention them.
ATTRIBUTES = ("category", "color", "texture", "size", "position", "relative_location")

# The longest caption anyone may ask for, in tokens: bounds a decode whose model never says EOS.
MAX_NEW_TOKENS = 512
# The caption length when none is asked for (the Captioner's None, the node's max_new_tokens default).
DEFAULT_MAX_NEW_TOKENS = 24
# The most regions one frame may hold: every region's full-size mask is held at once (a noisy label map of a large
# frame could ask for thousands of them).
MAX_REGIONS = 256

# Every prompt ends in "answer :" so that any tokenizer (word-level or BPE) sees where the caption starts.
_PROMPTS = {
    ATTRIBUTE_TASK: "what is the {attribute} of the region ? answer :",
    DENSE_TASK: "describe the region in detail . answer :",
    GLOBAL_TASK: "describe the whole image . answer :",
}


def attribute_words(attribute: str) -> str:
    """`relative_location` is spoken as two words so a word-level vocabulary stays small."""
    return attribute.replace("_", " ")


def prompt_for(task: str, attribute: str | None = None) -> str:
    if task not in _PROMPTS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if task == ATTRIBUTE_TASK:
        if not attribute:
            raise ValueError("the attribute task needs an attribute name, e.g. 'color'")
        return _PROMPTS[task].format(attribute=attribute_words(attribute))
    return _PROMPTS[task]


_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,:.?;!])")


def tidy_caption(text: str) -> str:
    """Word-level decoding puts spaces before punctuation; captions are compared and shown without them."""
    return _SPACE_BEFORE_PUNCT.sub(r"\1", " ".join(text.split())).strip()
