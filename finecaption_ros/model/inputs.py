"""Turning a frame and its region masks into model inputs; shared by training, the captioner and export."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def normalise_frames(images: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """uint8 (B,H,W,3) -> float (B,3,size,size), resized with antialiasing and normalised."""
    pixels = images.permute(0, 3, 1, 2).float().div_(255.0)
    pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(mean, dtype=pixels.dtype).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=pixels.dtype).view(1, 3, 1, 1)
    return (pixels - mean) / std


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


def region_inputs(masks: np.ndarray, side: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """(R,H,W) bool masks -> (coverage masks (R,1,side,side) float, normalised boxes (R,4) float, pixel boxes)."""
    count, height, width = masks.shape
    boxes = mask_boxes(masks)
    # Very large frames: subsample first so the float copy stays small (coverage changes by < 1 cell).
    stride = max(1, min(height, width) // (4 * side))
    small = masks[:, ::stride, ::stride] if stride > 1 else masks
    coverage = F.interpolate(torch.from_numpy(small).unsqueeze(1).float(), size=(side, side), mode="area")
    scale = np.array([width, height, width, height], dtype=np.float32)
    return coverage, torch.from_numpy(boxes.astype(np.float32) / scale), boxes
