"""Caption reuse: a region whose instance id, mask and pixels barely changed since it was last captioned keeps
that caption instead of being recomputed.

The reference is the frame the caption was computed on (reuse never moves it), so slow drift adds up and is
eventually recaptioned. Each check costs work over the region's bounding box only.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

Key = tuple[str, int, str, str]  # (source: the camera, region id, task, attribute)


@dataclass
class _Reference:
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)
    mask: np.ndarray  # bool, box-sized
    pixels: np.ndarray  # uint8 box-sized x3
    result: Any
    time_s: float
    seen_s: float


@dataclass
class ReuseDecision:
    result: Any | None  # the stored result when reused
    iou: float = 0.0
    pixel_change: float = float("inf")  # mean absolute difference (0..255) over the pixels both masks cover
    why: str = ""  # "", "new", "iou", "pixels", "age"


def _box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


class CaptionReuse:
    def __init__(self, iou_threshold: float = 0.9, pixel_threshold: float = 4.0, max_age_s: float = 10.0,
                 max_entries: int = 1024):
        self.iou_threshold = iou_threshold
        self.pixel_threshold = pixel_threshold
        self.max_age_s = max_age_s
        self.max_entries = max_entries
        self._refs: dict[Key, _Reference] = {}
        self._lock = threading.RLock()  # the node's inference workers share one cache (each its own cameras' keys)

    def set_limits(self, config) -> None:
        """The thresholds from a PipelineConfig (the node's reuse_* parameters)."""
        self.iou_threshold, self.pixel_threshold = config.reuse_iou_threshold, config.reuse_pixel_threshold
        self.max_age_s = config.reuse_max_age

    def __len__(self) -> int:
        return len(self._refs)

    def clear(self) -> None:
        with self._lock:
            self._refs.clear()

    def check(self, key: Key, mask: np.ndarray, image: np.ndarray, now_s: float) -> ReuseDecision:
        """Is the stored caption of `key` still good for this full-frame `mask` on `image`?"""
        with self._lock:
            ref = self._refs.get(key)
        if ref is None:
            return ReuseDecision(None, why="new")
        ref.seen_s = now_s
        if self.max_age_s > 0 and now_s - ref.time_s > self.max_age_s:
            return ReuseDecision(None, why="age")
        box = _box(mask)
        if box is None:
            return ReuseDecision(None, why="iou")
        h, w = mask.shape
        x0, y0 = min(box[0], ref.box[0]), min(box[1], ref.box[1])
        x1, y1 = max(box[2], ref.box[2]), max(box[3], ref.box[3])
        if x1 > w or y1 > h:  # the frame size changed
            return ReuseDecision(None, why="iou")
        current = mask[y0:y1, x0:x1]
        previous = np.zeros_like(current)
        rx0, ry0, rx1, ry1 = ref.box
        previous[ry0 - y0:ry1 - y0, rx0 - x0:rx1 - x0] = ref.mask
        both = current & previous
        union = int(np.count_nonzero(current | previous))
        iou = np.count_nonzero(both) / union if union else 0.0
        if iou < self.iou_threshold:
            return ReuseDecision(None, iou=iou, why="iou")
        old = np.zeros(current.shape + (3,), dtype=np.uint8)
        old[ry0 - y0:ry1 - y0, rx0 - x0:rx1 - x0] = ref.pixels
        new = image[y0:y1, x0:x1]
        diff = np.abs(new[both].astype(np.int16) - old[both].astype(np.int16))
        change = float(diff.mean()) if diff.size else 0.0
        if change > self.pixel_threshold:
            return ReuseDecision(None, iou=iou, pixel_change=change, why="pixels")
        return ReuseDecision(ref.result, iou=iou, pixel_change=change)

    def store(self, key: Key, mask: np.ndarray, image: np.ndarray, result: Any, now_s: float) -> None:
        box = _box(mask)
        if box is None:
            return
        x0, y0, x1, y1 = box
        with self._lock:
            self._refs[key] = _Reference(box, mask[y0:y1, x0:x1].copy(), image[y0:y1, x0:x1].copy(), result, now_s,
                                         now_s)
            if len(self._refs) > self.max_entries:
                self.prune(now_s, keep=self.max_entries)

    def prune(self, now_s: float, keep: int | None = None) -> None:
        """Forget references not seen for longer than max_age (or the least recently seen beyond `keep`)."""
        with self._lock:
            if self.max_age_s > 0:
                for key in [k for k, r in self._refs.items() if now_s - r.seen_s > self.max_age_s]:
                    del self._refs[key]
            if keep is not None and len(self._refs) > keep:
                for key in sorted(self._refs, key=lambda k: self._refs[k].seen_s)[:len(self._refs) - keep]:
                    del self._refs[key]
