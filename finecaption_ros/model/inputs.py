"""Turning a frame and its region masks into model inputs; shared by training, the captioner and export.

Frames of any size and aspect ratio are **letterboxed**: scaled so the longer side fills the model's square view,
centred, the rest padded with the normalisation mean (zero after normalising). Shapes are never stretched, and masks,
boxes and centroids are mapped by the same geometry. Each region is described to the model by eight numbers (its
`region geometry`, one row of `boxes`), all in the square view's coordinates normalised to [0, 1]:

    x0, y0, x1, y1      the mask's bounding box (RoI-Align samples the fused features inside it)
    cx, cy              the mask's centroid (positions and neighbours are measured between centroids)
    content_w, content_h  the frame's extent in the view (1, 1 for a square frame)

From the last two the model recovers positions relative to the frame and sizes relative to its shorter side, which
is how the world defines them (`data/scenes.py`). What the caller gets back is always in the input frame's pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

GEOMETRY_COLUMNS = 8


@dataclass(frozen=True)
class Letterbox:
    """Where a height x width frame lands in a side x side view: scaled by side / max(h, w), centred."""
    height: int
    width: int
    side: int

    @property
    def content(self) -> tuple[int, int]:
        """(content height, content width) in view pixels."""
        scale = self.side / max(self.height, self.width)
        return max(1, round(self.height * scale)), max(1, round(self.width * scale))

    @property
    def offset(self) -> tuple[int, int]:
        """(top, left) padding in view pixels."""
        ch, cw = self.content
        return (self.side - ch) // 2, (self.side - cw) // 2


def fill_value(mean) -> tuple[int, ...]:
    """The uint8 colour that normalises to (about) zero: what the padding of a letterboxed frame holds."""
    return tuple(int(round(m * 255)) for m in mean)


def letterbox_frames(images: torch.Tensor, side: int, mean) -> torch.Tensor:
    """uint8 (B,H,W,3) -> uint8 (B,side,side,3), letterboxed. Resized as uint8 (torch's channels-last uint8 kernel:
    640x480 -> 256 in ~0.2 ms against 2.5 ms in float on one core), < 1/255 from the float result."""
    batch, height, width, _ = images.shape
    box = Letterbox(height, width, side)
    (ch, cw), (top, left) = box.content, box.offset
    if (ch, cw) == (height, width) and (height, width) == (side, side):
        return images
    pixels = images.permute(0, 3, 1, 2)  # a channels-last view: what the uint8 kernel wants
    if (ch, cw) != (height, width):
        pixels = F.interpolate(pixels, size=(ch, cw), mode="bilinear", antialias=True, align_corners=False)
    out = torch.empty((batch, side, side, 3), dtype=torch.uint8)
    out[:] = torch.tensor(fill_value(mean), dtype=torch.uint8)
    out[:, top:top + ch, left:left + cw] = pixels.permute(0, 2, 3, 1)
    return out


def normalise_frames(images: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """uint8 (B,H,W,3) -> float (B,3,size,size): letterboxed (when not square), resized with antialiasing and
    normalised. Training letterboxes to the high-res side first and the captioner does the same (`model_views`)."""
    if images.shape[1] != images.shape[2]:
        images = letterbox_frames(images, size, mean)
    pixels = images.permute(0, 3, 1, 2)
    if pixels.dtype != torch.uint8:
        pixels = pixels.float()
    if pixels.shape[-1] != size:
        pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    pixels = pixels.float().div_(255.0)
    mean = torch.tensor(mean, dtype=pixels.dtype).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=pixels.dtype).view(1, 3, 1, 1)
    return ((pixels - mean) / std).contiguous()


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """(R,H,W) bool -> (R,4) int boxes as x0, y0, x1, y1 with exclusive ends; an empty mask gives zeros."""
    rows = masks.any(axis=2)
    cols = masks.any(axis=1)
    boxes = np.zeros((len(masks), 4), dtype=np.int64)
    for i, (r, c) in enumerate(zip(rows, cols)):
        if r.any():
            y = np.flatnonzero(r)
            x = np.flatnonzero(c)
            boxes[i] = (x[0], y[0], x[-1] + 1, y[-1] + 1)
    return boxes


def mask_centroids(masks: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(R,H,W) bool and their pixel boxes -> (R,2) float centroids (x, y) in pixels (pixel centres at +0.5)."""
    centroids = np.zeros((len(masks), 2), dtype=np.float64)
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        if x1 <= x0:
            continue
        crop = masks[i, y0:y1, x0:x1]
        total = crop.sum()
        centroids[i, 0] = x0 + 0.5 + (crop.sum(axis=0) @ np.arange(x1 - x0)) / total
        centroids[i, 1] = y0 + 0.5 + (crop.sum(axis=1) @ np.arange(y1 - y0)) / total
    return centroids


@lru_cache(maxsize=32)
def _area_weights(size_in: int, size_out: int, offset: int, side: int) -> torch.Tensor:
    """(side, size_in): row offset + i averages the input window that torch's "area" resize (adaptive average
    pooling) to size_out gives output i: [floor(i * in / out), ceil((i + 1) * in / out)); padding rows are zero."""
    weights = torch.zeros((side, size_in), dtype=torch.float32)
    for i in range(size_out):
        start, end = (i * size_in) // size_out, -((-(i + 1) * size_in) // size_out)
        weights[offset + i, start:end] = 1.0 / (end - start)
    return weights


def area_coverage(masks: np.ndarray, boxes: np.ndarray, side: int, letterbox: Letterbox | None = None) -> torch.Tensor:
    """(R,H,W) bool masks and their pixel boxes -> (R,side,side) float32: each mask's "area" resize into the
    letterboxed view (`letterbox` defaults to the masks' own size; a subsampled mask keeps the full frame's).

    The resize is separable (rows then columns), and only the rows and columns of the output that see the region's
    box can be non-zero: two small matrix products per region instead of resizing every full-size mask (8 regions of
    a 640x480 frame: ~1 ms instead of ~3.7 ms on 2 cores). torch, not numpy, multiplies: numpy's BLAS threads would
    spin after each product and take the cores from the encoders that run next."""
    count, height, width = masks.shape
    box = letterbox or Letterbox(height, width, side)
    (ch, cw), (top, left) = box.content, box.offset
    rows, cols = _area_weights(height, ch, top, side), _area_weights(width, cw, left, side)
    coverage = torch.zeros((count, side, side), dtype=torch.float32)
    for index, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        if x1 <= x0 or y1 <= y0:
            continue
        row_weights, col_weights = rows[:, y0:y1], cols[:, x0:x1]
        out_rows = torch.nonzero(row_weights.sum(dim=1)).flatten()
        out_cols = torch.nonzero(col_weights.sum(dim=1)).flatten()
        r0, r1, c0, c1 = int(out_rows[0]), int(out_rows[-1]) + 1, int(out_cols[0]), int(out_cols[-1]) + 1
        crop = torch.from_numpy(np.ascontiguousarray(masks[index, y0:y1, x0:x1])).float()
        coverage[index, r0:r1, c0:c1] = row_weights[r0:r1] @ crop @ col_weights[c0:c1].T
    return coverage


def region_inputs(masks: np.ndarray, side: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """(R,H,W) bool masks -> (coverage (R,1,side,side) float, region geometry (R,8) float, pixel boxes (R,4) int).

    Coverage and geometry are in the letterboxed view (see the module's docstring); pixel boxes in the frame's."""
    count, height, width = masks.shape
    box = Letterbox(height, width, side)
    boxes = mask_boxes(masks)
    # Very large frames: subsample first so the products stay small (coverage changes by < 1 cell).
    stride = max(1, min(height, width) // (4 * side))
    if stride > 1:
        small = masks[:, ::stride, ::stride]
        coverage = area_coverage(small, mask_boxes(small), side, box)
    else:
        coverage = area_coverage(masks, boxes, side, box)
    return coverage.unsqueeze(1), torch.from_numpy(region_geometry(box, boxes, mask_centroids(masks, boxes))), boxes


def region_geometry(box: Letterbox, boxes: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Pixel boxes (R,4) and centroids (R,2) of a frame -> (R, GEOMETRY_COLUMNS) float32 in view coordinates."""
    (ch, cw), (top, left) = box.content, box.offset
    sx, sy = cw / box.width, ch / box.height
    view = np.empty((len(boxes), GEOMETRY_COLUMNS), dtype=np.float64)
    view[:, [0, 2]] = left + boxes[:, [0, 2]] * sx
    view[:, [1, 3]] = top + boxes[:, [1, 3]] * sy
    view[:, 4] = left + centroids[:, 0] * sx
    view[:, 5] = top + centroids[:, 1] * sy
    view[:, :6] /= box.side
    view[:, 6], view[:, 7] = cw / box.side, ch / box.side
    return view.astype(np.float32)


def box_geometry(boxes: torch.Tensor) -> torch.Tensor:
    """(R,4) normalised boxes in a square frame -> (R,8) region geometry with the centroid at each box's centre."""
    centres = (boxes[:, :2] + boxes[:, 2:4]) / 2
    return torch.cat([boxes, centres, torch.ones_like(centres)], dim=1)
