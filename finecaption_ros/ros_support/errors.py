"""One error type for every bad input the node survives; `reason` is the diagnostics counter it is counted under.
Also the bound on what a log line may echo from a message: a sender chooses the length of its strings."""
from __future__ import annotations

ECHO_LIMIT = 64  # characters of one echoed value (an encoding, a task name, ...)
LINE_LIMIT = 1000  # characters of a FrameError's message, whatever it quotes

# Counter names, in the order diagnostics lists them.
REJECT_REASONS = (
    "unsupported_encoding",  # image or mask encoding the node does not read
    "short_data",  # data shorter than step * height
    "bad_step",  # step shorter than width * bytes per pixel
    "empty_image",  # zero width or height
    "too_large",  # more pixels than max_image_pixels
    "size_mismatch",  # image and mask sizes differ
    "bad_mask",  # mask values the node cannot use (negative labels)
    "captioner_error",  # the captioner refused the frame (CaptionerInputError) or failed
)


class FrameError(ValueError):
    """A frame (image or mask) the node cannot caption. `str(err)` is the one log line."""

    def __init__(self, reason: str, message: str):
        super().__init__(bounded(message, LINE_LIMIT))
        self.reason = reason


def bounded(text: str, limit: int, length: int | None = None) -> str:
    """`text` cut to at most `limit` characters, saying how long it was (or `length`, the original's length)."""
    text = str(text)
    if len(text) <= limit:
        return text
    tail = f"... ({len(text) if length is None else length} characters)"
    return text[:max(0, limit - len(tail))] + tail


def echo(value, limit: int = ECHO_LIMIT) -> str:
    """repr(value) for a log line, at most `limit` characters: use it for anything taken from a message."""
    return bounded(repr(value), limit, len(value) if isinstance(value, str) else None)
