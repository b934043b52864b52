"""Frame sources for the source node, without rclpy: synthetic scenes with instance masks (the demo camera), an
image folder (PIL), a video file or a camera device (OpenCV when installed). Each yields `Frame`s.

The synthetic scenes come from a generator the caller passes in (the source node gives it the training-data scene
generator): this layer never imports the training data code."""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v")
OPENCV_HINT = "pip install opencv-python-headless"


class SourceError(RuntimeError):
    """The source cannot be opened; the message says why and what to do."""


@dataclass
class Frame:
    image: np.ndarray  # HxWx3 uint8 RGB
    labels: np.ndarray | None = None  # HxW int32 instance labels, 0 = background
    truth: list[tuple[int, str]] = field(default_factory=list)  # (region id, true dense caption), synthetic only
    name: str = ""


def upscale(array: np.ndarray, factor: int) -> np.ndarray:
    """Exact nearest-neighbour upscale by an integer factor."""
    if factor == 1:
        return array
    return array.repeat(factor, axis=0).repeat(factor, axis=1)


def synthetic_frames(generator, scale: int = 1) -> Iterator[Frame]:
    """Frames of `generator.sample()` scenes: `.image`, `.labels` and `.objects` (each with `region_id` and
    `dense_caption()`), as data/scenes.py's SceneGenerator draws them."""
    index = 0
    while True:
        scene = generator.sample()
        truth = [(o.region_id, o.dense_caption()) for o in sorted(scene.objects, key=lambda o: o.region_id)]
        yield Frame(upscale(scene.image, scale), upscale(scene.labels, scale), truth, f"scene_{index:05d}")
        index += 1


def _load_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def _load_labels(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        labels = np.asarray(img)
    if labels.ndim == 3:  # a colour-coded mask: take the first channel
        labels = labels[..., 0]
    return labels.astype(np.int32)


def folder_frames(folder: str, mask_dir: str = "", loop: bool = True) -> Iterator[Frame]:
    root = Path(folder)
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SourceError(f"image folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)})")
    masks = {}
    if mask_dir:
        for p in Path(mask_dir).iterdir():
            if p.suffix.lower() in IMAGE_SUFFIXES:
                masks[p.stem] = p
    while True:
        for path in files:
            mask_path = masks.get(path.stem)
            yield Frame(_load_rgb(path), _load_labels(mask_path) if mask_path else None, name=path.name)
        if not loop:
            return


def _single_image(path: Path, mask_dir: str, loop: bool) -> Iterator[Frame]:
    image = _load_rgb(path)
    mask_path = Path(mask_dir) / (path.stem + ".png") if mask_dir else None
    labels = _load_labels(mask_path) if mask_path and mask_path.exists() else None
    while True:
        yield Frame(image, labels, name=path.name)
        if not loop:
            return


def _opencv():
    try:
        import cv2
    except ImportError as err:
        raise SourceError(f"video files and camera devices need OpenCV, which is not installed: "
                          f"{OPENCV_HINT}") from err
    return cv2


def capture_frames(target, loop: bool = False) -> Iterator[Frame]:
    """A video file (path) or a camera device (int index or '/dev/videoN') through OpenCV."""
    cv2 = _opencv()
    capture = cv2.VideoCapture(target)
    if not capture.isOpened():
        raise SourceError(f"OpenCV cannot open {target!r}")
    index = 0
    try:
        while True:
            ok, bgr = capture.read()
            if not ok:
                if loop and isinstance(target, str) and os.path.isfile(target):
                    capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    continue
                return
            yield Frame(np.ascontiguousarray(bgr[:, :, ::-1]), name=f"frame_{index:06d}")
            index += 1
    finally:
        capture.release()


def open_source(source: str, scale: int = 1, mask_dir: str = "", loop: bool = True,
                scenes=None) -> Iterator[Frame]:
    """'synthetic' (the scenes of the generator `scenes`), an image folder, a video file, 'camera:N' or
    '/dev/videoN'."""
    if source == "synthetic":
        if scenes is None:
            raise SourceError("the synthetic source needs a scene generator (scenes=...)")
        return synthetic_frames(scenes, scale)
    if source.startswith("camera:"):
        index = source.split(":", 1)[1]
        if not index.isdigit():
            raise SourceError(f"camera source {source!r}: expected camera:N with N a device index")
        return capture_frames(int(index))
    if source.startswith("/dev/video"):
        if not os.path.exists(source):
            raise SourceError(f"camera device {source} does not exist")
        return capture_frames(source)
    path = Path(os.path.expanduser(source))
    if path.is_dir():
        return folder_frames(str(path), mask_dir, loop)
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return _single_image(path, mask_dir, loop)
        return capture_frames(str(path), loop)
    raise SourceError(f"source {source!r} is neither 'synthetic', a folder, a file nor a camera "
                      "('camera:0' or '/dev/video0')")
