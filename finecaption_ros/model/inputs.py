"""Turning a frame and its region masks into model inputs; shared by training, the captioner and export."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F


def normalise_frames(images: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """uint8 (B,H,W,3) -> float (B,3,size,size), resized with antialiasing and normalised.

    uint8 frames are resized as uint8 (torch's channels-last uint8 kernel: 640x480 -> 256 in 0.22 ms against 2.5 ms
    in float on one core of the development CPU), which rounds each output pixel to the nearest level: less than
    1/255 from the float result."""
    pixels = images.permute(0, 3, 1, 2)  # a channels-last view: what the uint8 kernel wants
    if pixels.dtype != torch.uint8:
        pixels = pixels.float()
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


@lru_cache(maxsize=16)
def _area_weights(size_in: int, size_out: int) -> torch.Tensor:
    """(size_out, size_in): row i averages the input window that torch's "area" resize (adaptive average pooling)
    gives output i: [floor(i * in / out), ceil((i + 1) * in / out))."""
    weights = torch.zeros((size_out, size_in), dtype=torch.float32)
    for i in range(size_out):
        start, end = (i * size_in) // size_out, -((-(i + 1) * size_in) // size_out)
        weights[i, start:end] = 1.0 / (end - start)
    return weights


def area_coverage(masks: np.ndarray, boxes: np.ndarray, side: int) -> torch.Tensor:
    """(R,H,W) bool masks and their pixel boxes -> (R,side,side) float32, equal to an "area" resize of each mask.

    The resize is separable (rows then columns), and only the rows and columns of the output that see the region's
    box can be non-zero: two small matrix products per region instead of resizing every full-size mask (8 regions of
    a 640x480 frame: ~1 ms instead of ~3.7 ms on 2 cores). torch, not numpy, multiplies: numpy's BLAS threads would
    spin after each product and take the cores from the encoders that run next."""
    count, height, width = masks.shape
    rows, cols = _area_weights(height, side), _area_weights(width, side)
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
    """(R,H,W) bool masks -> (coverage masks (R,1,side,side) float, normalised boxes (R,4) float, pixel boxes)."""
    count, height, width = masks.shape
    boxes = mask_boxes(masks)
    # Very large frames: subsample first so the products stay small (coverage changes by < 1 cell).
    stride = max(1, min(height, width) // (4 * side))
    if stride > 1:
        small = masks[:, ::stride, ::stride]
        coverage = area_coverage(small, mask_boxes(small), side)
    else:
        coverage = area_coverage(masks, boxes, side)
    scale = np.array([width, height, width, height], dtype=np.float32)
    return coverage.unsqueeze(1), torch.from_numpy(boxes.astype(np.float32) / scale), boxes
