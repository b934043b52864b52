"""Annotated frames for RViz and the demo: regions tinted by id, boxes, and a caption panel under the image."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_PALETTE = np.array([
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195),
], dtype=np.uint8)


def region_color(region_id: int) -> tuple[int, int, int]:
    return tuple(int(c) for c in _PALETTE[(region_id * 7) % len(_PALETTE)])


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def annotate(image: np.ndarray, labels: np.ndarray | None, captions: Sequence, min_width: int = 512,
             alpha: float = 0.45) -> np.ndarray:
    """Draw `captions` (objects with region_id, caption, bbox=(x, y, w, h), reused, attribute) on `image`.

    Small frames are enlarged by an integer factor to at least `min_width` so the text is readable. Returns an
    RGB uint8 array: the frame on top, one caption line per region below it."""
    image = np.asarray(image, dtype=np.uint8)
    h, w = image.shape[:2]
    scale = max(1, -(-min_width // w)) if w < min_width else 1
    out = image.astype(np.float32)
    if labels is not None:
        ids = sorted({int(c.region_id) for c in captions if c.region_id})
        for region_id in ids:
            mask = labels == region_id
            out[mask] = (1 - alpha) * out[mask] + alpha * np.array(region_color(region_id), np.float32)
    frame = out.clip(0, 255).astype(np.uint8)
    if scale > 1:
        frame = frame.repeat(scale, axis=0).repeat(scale, axis=1)
    # One panel line per region (the attribute task's answers joined on it).
    lines: dict[int, list] = {}
    for cap in captions:
        lines.setdefault(int(cap.region_id), []).append(cap)
    font_size = 14 if w * scale < 1200 else 22
    line_h = font_size + 6
    panel_h = line_h * max(1, len(lines)) + 8
    canvas = Image.new("RGB", (w * scale, h * scale + panel_h), (20, 20, 20))
    canvas.paste(Image.fromarray(frame), (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = _font(font_size)
    for row, (region_id, caps) in enumerate(lines.items()):
        color = region_color(region_id) if region_id else (235, 235, 235)
        if region_id:
            x, y, bw, bh = (int(v) * scale for v in caps[0].bbox)
            draw.rectangle([x, y, x + bw - 1, y + bh - 1], outline=color, width=2)
            tag = str(region_id)
            draw.rectangle([x, y, x + 8 * len(tag) + 6, y + font_size + 2], fill=(0, 0, 0))
            draw.text((x + 3, y + 1), tag, fill=color, font=font)
        name = f"#{region_id}" if region_id else "image"
        text = ", ".join(f"{c.attribute}: {c.caption}" if getattr(c, "attribute", "") else c.caption for c in caps)
        mark = " (reused)" if all(getattr(c, "reused", False) for c in caps) else ""
        draw.text((6, h * scale + 4 + row * line_h), f"{name} {text}{mark}", fill=color, font=font)
    return np.asarray(canvas)
