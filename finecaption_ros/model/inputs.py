"""Turning a frame and its region masks into model inputs; shared by training, the captioner and export."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F


# Frames keep their aspect ratio: each is scaled to fit the model's square views and centred on this padding (black,
# as letterboxing usually is), so sizes, shapes and textures look the same at 640x480, 1280x720 and 256x256.
PAD_VALUE = 0


def letterbox(height: int, width: int, side: int) -> tuple[int, int, int, int]:
    """Where a height x width frame lands in a side x side view: (content height, content width, top, left)."""
    scale = side / max(height, width)
    content_h, content_w = max(1, round(height * scale)), max(1, round(width * scale))
    return content_h, content_w, (side - content_h) // 2, (side - content_w) // 2


def _resize(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if tuple(pixels.shape[-2:]) == (height, width):
        return pixels
    return F.interpolate(pixels, size=(height, width), mode="bilinear", antialias=True, align_corners=False)


def writable(image: np.ndarray) -> np.ndarray:
    """A contiguous array torch can wrap: torch warns on read-only ones (PIL's, shared buffers'), so those are
    copied."""
    image = np.ascontiguousarray(image)
    return image if image.flags.writeable else image.copy()


def letterbox_frames(images: torch.Tensor, side: int) -> torch.Tensor:
    """uint8 (B,H,W,3) -> uint8 (B,side,side,3): the frames as the model's views see them (see `letterbox`)."""
    height, width = images.shape[1:3]
    content_h, content_w, top, left = letterbox(height, width, side)
    pixels = _resize(images.permute(0, 3, 1, 2), content_h, content_w)
    out = torch.full((len(images), 3, side, side), PAD_VALUE, dtype=pixels.dtype)
    out[:, :, top:top + content_h, left:left + content_w] = pixels
    return out.permute(0, 2, 3, 1).contiguous()


def normalise_frames(images: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """uint8 (B,H,W,3) -> float (B,3,size,size): letterboxed (see `letterbox`), resized with antialiasing and
    normalised.

    uint8 frames are resized as uint8 (torch's channels-last uint8 kernel: 640x480 -> 256 in 0.22 ms against 2.5 ms
    in float on one core of the development CPU), which rounds each output pixel to the nearest level: less than
    1/255 from the float result."""
    height, width = images.shape[1:3]
    content_h, content_w, top, left = letterbox(height, width, size)
    pixels = images.permute(0, 3, 1, 2)  # a channels-last view: what the uint8 kernel wants
    if pixels.dtype != torch.uint8:
        pixels = pixels.float()
    pixels = _resize(pixels, content_h, content_w).float().div_(255.0)
    mean = torch.tensor(mean, dtype=pixels.dtype).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=pixels.dtype).view(1, 3, 1, 1)
    out = ((torch.full((1, 3, 1, 1), PAD_VALUE / 255.0) - mean) / std).repeat(len(images), 1, size, size)
    out[:, :, top:top + content_h, left:left + content_w] = (pixels - mean) / std
    return out.contiguous()


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


def area_coverage(masks: np.ndarray, boxes: np.ndarray, out_h: int, out_w: int) -> torch.Tensor:
    """(R,H,W) bool masks and their pixel boxes -> (R,out_h,out_w) float32, equal to an "area" resize of each mask.

    The resize is separable (rows then columns), and only the rows and columns of the output that see the region's
    box can be non-zero: two small matrix products per region instead of resizing every full-size mask (8 regions of
    a 640x480 frame: ~1 ms instead of ~3.7 ms on 2 cores). torch, not numpy, multiplies: numpy's BLAS threads would
    spin after each product and take the cores from the encoders that run next."""
    count, height, width = masks.shape
    rows, cols = _area_weights(height, out_h), _area_weights(width, out_w)
    coverage = torch.zeros((count, out_h, out_w), dtype=torch.float32)
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
    """(R,H,W) bool masks -> (coverage masks (R,1,side,side) float, boxes (R,4) float normalised to the
    letterboxed view, pixel boxes in the frame) — the masks placed as `letterbox` places their frame."""
    count, height, width = masks.shape
    content_h, content_w, top, left = letterbox(height, width, side)
    boxes = mask_boxes(masks)
    # Very large frames: subsample first so the products stay small (coverage changes by < 1 cell).
    stride = max(1, min(height, width) // (4 * side))
    small = masks[:, ::stride, ::stride] if stride > 1 else masks
    coverage = torch.zeros((count, 1, side, side), dtype=torch.float32)
    coverage[:, 0, top:top + content_h, left:left + content_w] = area_coverage(
        small, mask_boxes(small) if stride > 1 else boxes, content_h, content_w)
    scale = np.array([content_w / width, content_h / height] * 2, dtype=np.float32)
    offset = np.array([left, top, left, top], dtype=np.float32)
    return coverage, torch.from_numpy(((boxes * scale + offset) / side).astype(np.float32)), boxes
