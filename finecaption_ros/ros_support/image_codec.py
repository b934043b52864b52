"""sensor_msgs/Image <-> numpy without cv_bridge.

Works on any object with the Image fields (height, width, encoding, is_bigendian, step, data), so it is tested
without rclpy. `check_*` look at the header only (cheap, run on the executor thread); `decode_*` copy the pixels out
of the message (run on the worker thread).
"""
from __future__ import annotations

import array
from dataclasses import dataclass

import numpy as np

from .errors import FrameError, echo

# encoding -> (channels, RGB channel order within a pixel, or None for grey)
IMAGE_ENCODINGS = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, None),
}
# RGB -> grey as OpenCV's cvtColor (and so cv_bridge) computes it for 8-bit images: the BT.601 luma weights
# 0.299/0.587/0.114 in 15-bit fixed point, rounded half up (OpenCV 4 and 5 agree with this on all 2**24 colours;
# the 14-bit weights of old OpenCV differ on 0.3% of them). A channel mean would make pure red 85, not 76.
LUMA_WEIGHTS = (9798, 19235, 3735)  # w * 2**15 for R, G, B, rounded so that they add up to 2**15
LUMA_SHIFT = 15

# encoding -> numpy dtype of the single channel
MASK_ENCODINGS = {
    "mono8": np.uint8,
    "8UC1": np.uint8,
    "mono16": np.uint16,
    "16UC1": np.uint16,
    "32SC1": np.int32,
}


@dataclass(frozen=True)
class ImageLayout:
    height: int
    width: int
    step: int
    channels: int
    dtype: np.dtype


def _layout(msg, table: dict, what: str, max_pixels: int = 0) -> ImageLayout:
    encoding = msg.encoding
    if encoding not in table:
        raise FrameError("unsupported_encoding",
                         f"{what} encoding {echo(encoding)} is not supported; use one of {', '.join(table)}")
    if table is IMAGE_ENCODINGS:
        channels, dtype = table[encoding][0], np.dtype(np.uint8)
    else:
        channels, dtype = 1, np.dtype(table[encoding])
    if dtype.itemsize > 1:
        dtype = dtype.newbyteorder(">" if msg.is_bigendian else "<")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise FrameError("empty_image", f"{what} is {width}x{height}: nothing to read")
    if max_pixels and height * width > max_pixels:
        raise FrameError("too_large", f"{what} is {width}x{height} = {height * width} pixels, more than "
                                      f"max_image_pixels = {max_pixels}; frame skipped")
    row = width * channels * dtype.itemsize
    if step < row:
        raise FrameError("bad_step", f"{what} step {step} is less than width*bytes per pixel = {row} "
                                     f"({width} px of {encoding})")
    size = len(msg.data)
    if size < step * height:
        raise FrameError("short_data", f"{what} data has {size} bytes, less than step*height = "
                                       f"{step}*{height} = {step * height}")
    return ImageLayout(height, width, step, channels, dtype)


def check_image(msg, max_pixels: int = 0) -> ImageLayout:
    """Raise FrameError when the image header cannot be decoded; touches no pixel."""
    return _layout(msg, IMAGE_ENCODINGS, "image", max_pixels)


def check_mask(msg, max_pixels: int = 0) -> ImageLayout:
    return _layout(msg, MASK_ENCODINGS, "mask", max_pixels)


def _view(msg, layout: ImageLayout) -> np.ndarray:
    """A strided, read-only view of the message buffer: (height, width, channels)."""
    data = msg.data
    try:
        buffer = memoryview(data)
    except TypeError:  # a plain list of ints
        buffer = memoryview(np.asarray(data, dtype=np.uint8))
    if buffer.format not in ("B", "b", "c") or buffer.itemsize != 1:
        buffer = buffer.cast("B")
    itemsize = layout.dtype.itemsize
    return np.ndarray(shape=(layout.height, layout.width, layout.channels), dtype=layout.dtype, buffer=buffer,
                      strides=(layout.step, layout.channels * itemsize, itemsize))


def decode_image(msg, max_pixels: int = 0) -> np.ndarray:
    """Image message -> HxWx3 uint8 RGB array (a copy, C-contiguous)."""
    layout = check_image(msg, max_pixels)
    view = _view(msg, layout)
    order = IMAGE_ENCODINGS[msg.encoding][1]
    if order is None:
        return np.ascontiguousarray(np.repeat(view, 3, axis=2))
    # np.array always copies (ascontiguousarray would hand back a view of a read-only or reused message buffer).
    if order == (0, 1, 2):
        return np.array(view[:, :, :3], order="C")
    return np.array(view[:, :, 2::-1], order="C")


def decode_mask(msg, max_pixels: int = 0) -> np.ndarray:
    """Mask message -> HxW int32 label map (a copy). Negative labels are refused."""
    layout = check_mask(msg, max_pixels)
    labels = _view(msg, layout)[:, :, 0].astype(np.int32)
    if labels.dtype == np.int32 and msg.encoding == "32SC1" and labels.min() < 0:
        raise FrameError("bad_mask", f"mask has negative labels (min {int(labels.min())}); 0 is background, "
                                     "regions are positive ids")
    return labels


def rgb_to_mono8(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB -> HxW uint8 luma, bit-exact with cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)."""
    r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
    wr, wg, wb = LUMA_WEIGHTS
    return ((r * wr + g * wg + b * wb + (1 << (LUMA_SHIFT - 1))) >> LUMA_SHIFT).astype(np.uint8)


def encode(array_hwc: np.ndarray, encoding: str) -> dict:
    """numpy -> the fields of a sensor_msgs/Image (height, width, encoding, is_bigendian, step, data).

    An HxWx3 uint8 RGB array for image encodings; an HxW integer label array for mask encodings (mono8 takes
    either: a 2-D array is written as labels, a 3-D one as grey, with OpenCV's luma weights).

    `data` is an array.array('B'), which rclpy takes without checking each byte."""
    arr = np.ascontiguousarray(array_hwc)
    if encoding in IMAGE_ENCODINGS and not (arr.ndim == 2 and encoding in MASK_ENCODINGS):
        channels, order = IMAGE_ENCODINGS[encoding]
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"encode({encoding!r}) needs an HxWx3 uint8 RGB array, got {arr.shape} {arr.dtype}")
        if order is None:
            arr = rgb_to_mono8(arr)[:, :, None]
        elif channels == 4:
            alpha = np.full(arr.shape[:2] + (1,), 255, dtype=np.uint8)
            arr = np.concatenate([arr[:, :, list(order)], alpha], axis=2)
        elif order != (0, 1, 2):
            arr = arr[:, :, list(order)]
        arr = np.ascontiguousarray(arr)
        itemsize = 1
    elif encoding in MASK_ENCODINGS:
        dtype = np.dtype(MASK_ENCODINGS[encoding])
        if arr.ndim != 2:
            raise ValueError(f"encode({encoding!r}) needs an HxW label array, got shape {arr.shape}")
        if arr.size and (arr.min() < np.iinfo(dtype).min or arr.max() > np.iinfo(dtype).max):
            raise ValueError(f"labels {int(arr.min())}..{int(arr.max())} do not fit {encoding}")
        arr = np.ascontiguousarray(arr.astype(dtype.newbyteorder("<")))
        channels, itemsize = 1, dtype.itemsize
    else:
        raise ValueError(f"cannot encode {encoding!r}")
    height, width = arr.shape[:2]
    return {
        "height": int(height),
        "width": int(width),
        "encoding": encoding,
        "is_bigendian": 0,
        "step": int(width * channels * itemsize),
        "data": array.array("B", arr.tobytes()),
    }
