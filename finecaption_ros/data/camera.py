"""Rendering conditions for the synthetic world: what a camera and a segmenter do to a scene's pixels and masks.

`scenes.py` owns the truth (what each object is); a `Camera` decides how it looks: frame size, sub-pixel placement,
rotation, anti-aliasing, shade jitter, background, lighting, noise, blur and JPEG. `imperfect_masks` is what a real
segmenter hands the captioner: masks a few pixels too big or too small, with holes, overlapping their neighbours.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .scenes import DARK_SHADE, Layout, Scene, _shape_mask, _texture_mask, finish_scene

# Frame sizes (width, height) as cameras produce them.
CAMERA_SIZES = ((256, 256), (320, 240), (640, 480), (848, 480), (1280, 720), (480, 480), (720, 720))
BACKGROUNDS = ("plain", "flat", "gradient", "noise")
# A frame larger than the model's view is rendered at this many times the view's side, and the model's own resize
# (`model.inputs.letterbox_frames`) brings it down, as it does a camera's frame. Rendered at the view's side itself,
# 2-4 px stripes are point-sampled into hard bands that a real downscale blurs, and the model learns those instead
# (README, "the world"; tests/test_scenes.py). Twice the side is close to full size at a fraction of the pixels.
RENDER_OVERSAMPLE = 2


@dataclass
class Camera:
    sizes: tuple | None = None  # (width, height) choices; None: the generator's own size
    render_side: int | None = None  # the model's view side: larger frames render at RENDER_OVERSAMPLE x it
    offset: tuple[float, float] = (0.0, 0.0)  # pixels added to every x and y (a shifted camera)
    subpixel: bool = False  # a random offset in [0, 1) px per frame on top
    max_rotation: float = 0.0  # degrees, at most scenes.MAX_ROTATION
    shade_jitter: float = 0.0  # share of scenes.COLOR_TOLERANCE the colours vary by
    antialias: int = 3  # samples per pixel along each axis (1: hard edges)
    backgrounds: tuple = ("plain",)
    lighting: float = 0.0  # gain within 1 +- lighting, offset within +- 100 * lighting
    noise: float = 0.0  # largest Gaussian noise sigma (0-255 levels)
    blur: float = 0.0  # largest Gaussian blur sigma (px)
    jpeg: tuple[int, int] | None = None  # JPEG quality range, applied to half the frames

    @classmethod
    def training(cls, render_side: int = 256) -> "Camera":
        """What `finecaption train` draws: every condition of the camera suite, at random."""
        return cls(sizes=CAMERA_SIZES, render_side=render_side, subpixel=True, max_rotation=15.0, shade_jitter=1.0,
                   antialias=3, backgrounds=BACKGROUNDS, lighting=0.12, noise=8.0, blur=0.8, jpeg=(50, 95))

    def frame_size(self, rng: np.random.Generator, height: int, width: int) -> tuple[int, int, float]:
        """(height, width) to render and its scale to the camera's frame (below 1 with `render_side`)."""
        if self.sizes:
            width, height = self.sizes[rng.integers(len(self.sizes))]
        scale = 1.0
        side = self.render_side * RENDER_OVERSAMPLE if self.render_side else None
        if side and max(height, width) > side:
            scale = side / max(height, width)
            height, width = max(8, round(height * scale)), max(8, round(width * scale))
        return height, width, scale

    def render(self, layouts: list[Layout], height: int, width: int, rng: np.random.Generator,
               scale: float = 1.0) -> Scene:
        """The layouts drawn into a height x width frame. `scale` < 1: the frame stands for a camera frame that
        much larger, so blur and noise (set in the camera's pixels) shrink with it, as a downscale would make them."""
        image = _background(self.backgrounds[rng.integers(len(self.backgrounds))], height, width, rng)
        labels = np.zeros((height, width), dtype=np.int32)
        dx, dy = self.offset
        if self.subpixel:
            dx, dy = dx + rng.random(), dy + rng.random()
        short = min(height, width)
        for item in layouts:
            _draw(image, labels, item, item.fx * width + dx, item.fy * height + dy, item.radius * short,
                  item.period * short, self.antialias)
        image = self._finish_pixels(image, rng, scale)
        return finish_scene(image, labels, layouts)

    def _finish_pixels(self, image: np.ndarray, rng: np.random.Generator, scale: float) -> np.ndarray:
        if self.lighting:
            gain = 1 + rng.uniform(-self.lighting, self.lighting)
            image = image * gain + rng.uniform(-100, 100) * self.lighting
        if self.noise:
            sigma = rng.uniform(0, self.noise) * scale
            image = image + sigma * rng.standard_normal(image.shape[:2] + (1,), dtype=np.float32)
        out = np.clip(image, 0, 255).round().astype(np.uint8)
        if self.blur or self.jpeg:
            from PIL import Image, ImageFilter

            picture = Image.fromarray(out)
            if self.blur:
                picture = picture.filter(ImageFilter.GaussianBlur(rng.uniform(0, self.blur) * scale))
            if self.jpeg and rng.random() < 0.5:
                buffer = io.BytesIO()
                picture.save(buffer, format="JPEG", quality=int(rng.integers(self.jpeg[0], self.jpeg[1] + 1)))
                picture = Image.open(buffer).convert("RGB")
            out = np.array(picture)  # writable, as a camera driver's frame is
        return out


def _background(kind: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    image = np.empty((height, width, 3), dtype=np.float32)
    if kind == "plain":  # the generator's original: a dull flat colour with fine noise
        image[:] = rng.uniform(45, 95, size=3)
        image += 6 * rng.standard_normal((height, width, 1), dtype=np.float32)
    elif kind == "flat":
        image[:] = rng.uniform(20, 220, size=3)
    elif kind == "gradient":
        a, b = rng.uniform(20, 220, size=3), rng.uniform(20, 220, size=3)
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        t = (np.cos(angle) * xx / width + np.sin(angle) * yy / height)
        t = (t - t.min()) / max(1e-6, t.max() - t.min())
        image[:] = a + (b - a) * t[..., None]
    elif kind == "noise":  # smooth blotches, as a cluttered real background is
        coarse = torch.from_numpy(rng.uniform(20, 220, size=(1, 3, 6, 8)).astype(np.float32))
        smooth = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[0]
        image[:] = smooth.permute(1, 2, 0).numpy()
        image += 4 * rng.standard_normal((height, width, 1), dtype=np.float32)
    else:
        raise ValueError(f"unknown background {kind!r}; choose one of {', '.join(BACKGROUNDS)}")
    return image


def _draw(image: np.ndarray, labels: np.ndarray, item: Layout, cx: float, cy: float, radius: float,
          period: float, antialias: int) -> None:
    """Paints one object over the frame. Pixels on its outline are sampled `antialias` x `antialias` times for
    their edge coverage; the rest (and the texture) once, at the pixel centre."""
    height, width = labels.shape
    reach = radius * 1.05 + 2
    x0, x1 = max(0, int(cx - reach)), min(width, int(cx + reach) + 2)
    y0, y1 = max(0, int(cy - reach)), min(height, int(cy + reach) + 2)
    if x1 <= x0 or y1 <= y0:
        return
    theta = np.deg2rad(item.angle)
    cos, sin = np.cos(theta), np.sin(theta)

    def own_axes(ys, xs):  # frame offsets from the centre -> (v, u) in the object's own axes
        return -sin * xs + cos * ys, cos * xs + sin * ys

    yy, xx = np.meshgrid(np.arange(y0, y1) + 0.5 - cy, np.arange(x0, x1) + 0.5 - cx, indexing="ij")
    v, u = own_axes(yy, xx)
    inside = _shape_mask(item.category, v, u, radius)
    coverage = inside.astype(np.float32)
    k = max(1, antialias)
    if k > 1:
        padded = np.pad(inside, 1, mode="edge")
        edge = ((padded[1:-1, 1:-1] != padded[:-2, 1:-1]) | (padded[1:-1, 1:-1] != padded[2:, 1:-1])
                | (padded[1:-1, 1:-1] != padded[1:-1, :-2]) | (padded[1:-1, 1:-1] != padded[1:-1, 2:]))
        rows, cols = np.nonzero(edge)
        sub = (np.arange(k) + 0.5) / k - 0.5
        sy = (yy[rows, cols][:, None, None] + sub[None, :, None]).repeat(k, axis=2)
        sx = (xx[rows, cols][:, None, None] + sub[None, None, :]).repeat(k, axis=1)
        sv, su = own_axes(sy, sx)
        coverage[rows, cols] = _shape_mask(item.category, sv, su, radius).mean(axis=(1, 2))
    across, along = (u, v) if item.vertical else (v, u)  # stripes alternate across their bands
    dark = _texture_mask(item.texture, across, along, period, (item.phase[0] * period, item.phase[1] * period))
    rgb = np.asarray(item.rgb, dtype=np.float32)
    colour = np.where(dark[..., None], rgb * DARK_SHADE, rgb)
    patch = image[y0:y1, x0:x1]
    alpha = coverage[..., None]
    patch[:] = alpha * colour + (1 - alpha) * patch
    labels[y0:y1, x0:x1][coverage >= 0.5] = item.region_id


def imperfect_masks(scene: Scene, rng: np.random.Generator, grow: tuple[int, int] = (-4, 4),
                    holes: float = 0.0) -> list[np.ndarray]:
    """Each object's mask as a segmenter might return it: grown (dilated) or shrunk (eroded) by a number of pixels
    drawn from `grow`, and with probability `holes` a few small holes. Masks may overlap their neighbours'; a mask
    that would vanish stays as it was."""
    masks = []
    for obj in scene.objects:
        mask = scene.mask(obj.region_id)
        step = int(rng.integers(grow[0], grow[1] + 1))
        changed = _grow(mask, step) if step else mask
        if holes and rng.random() < holes:
            changed = _punch_holes(changed, rng)
        masks.append(changed if changed.any() else mask)
    return masks


def _grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    """The mask dilated (`pixels` > 0) or eroded (< 0) by a square of that reach; the frame's edge does not erode.
    Pooled over the mask's box widened by the reach, not the whole frame (the same pixels, a fraction of the work:
    this ran per object of every training frame)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    out = np.zeros_like(mask, dtype=bool)
    if not len(rows):
        return out
    reach = abs(pixels)
    y0, y1 = max(0, rows[0] - reach), min(mask.shape[0], rows[-1] + reach + 1)
    x0, x1 = max(0, cols[0] - reach), min(mask.shape[1], cols[-1] + reach + 1)
    t = torch.from_numpy(mask[y0:y1, x0:x1].astype(np.float32))[None, None]
    if pixels > 0:
        pooled = F.max_pool2d(t, 2 * reach + 1, stride=1, padding=reach)
    else:
        pooled = -F.max_pool2d(-t, 2 * reach + 1, stride=1, padding=reach)
    out[y0:y1, x0:x1] = pooled[0, 0].numpy() > 0.5
    return out


def _punch_holes(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    if len(ys) < 50:
        return mask
    out = mask.copy()
    extent = max(ys.max() - ys.min(), xs.max() - xs.min())
    for _ in range(int(rng.integers(1, 4))):
        i = rng.integers(len(ys))
        r = max(1.0, extent * rng.uniform(0.04, 0.1))
        yy, xx = np.ogrid[0:mask.shape[0], 0:mask.shape[1]]
        out &= (yy - ys[i]) ** 2 + (xx - xs[i]) ** 2 > r * r
    return out
