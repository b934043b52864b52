"""The one error type for a model directory that cannot be loaded."""
from __future__ import annotations


class ModelLoadError(ValueError):
    """A model directory's file is corrupt, incomplete or asks to run code; the message names the file and the
    fix. (A file that does not exist raises FileNotFoundError instead.)"""


# What fixes a damaged model directory, for the messages that name the damaged file.
RESAVE_HINT = "re-save the model with save_pretrained (or `finecaption train`), or restore the file from its source"


def brief(error: BaseException, limit: int = 300) -> str:
    """An underlying library's error in one short line: some list every choice they know (thousands of names)."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text if len(text) <= limit else text[:limit] + ' ...'}"
