"""The captioner's result type, torch-free so that the ROS wing can use it without importing torch."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RegionCaption:
    region_id: int
    task: str
    attribute: str  # "" unless task == "attribute"
    caption: str
    confidence: float  # mean probability of the generated tokens
    bbox: tuple[int, int, int, int]  # x_offset, y_offset, width, height in pixels
    mask_area: int
    timings_ms: dict[str, float] = field(default_factory=dict)
    reused: bool = False  # the node's caption reuse: taken from an earlier frame, not computed for this one
