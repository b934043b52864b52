"""One error type for every bad input the node survives; `reason` is the diagnostics counter it is counted under."""
from __future__ import annotations

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
        super().__init__(message)
        self.reason = reason
