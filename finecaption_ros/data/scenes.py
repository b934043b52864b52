"""Procedural CompositionCap-style scenes: coloured, textured shapes with instance masks and captions.

## The world (what every caption means; enough to draw a test scene with any renderer)
- **Objects**: 1 to 10 per frame, each one of `CATEGORIES`, drawn in one `COLORS` anchor shade (each channel within
  `COLOR_TOLERANCE` of the anchor) with one of `TEXTURES`, turned by up to `MAX_ROTATION` degrees (a square turned
  45 degrees would be a diamond, so squares never turn that far). Frames are any size and aspect ratio.
- **Texture**: `solid`; `striped` = parallel bands of the colour and its darker shade (`DARK_SHADE` x the colour),
  any orientation and phase, one light + one dark band every `TEXTURE_PERIOD` px (4-8 px) at a 256 px shorter side
  and scaled with it (a 720 px shorter side: 11-22 px); `checkered` = squares of the two shades, side half a period.
- **Size**: the larger side of the axis-aligned bounding box of the object's whole (unoccluded) shape, as a fraction
  of the frame's shorter side, in `SIZE_BANDS` (small 0.07-0.11, medium 0.15-0.19, large 0.24-0.30).
- **Position**: the cell of the frame's 3x3 grid (thirds of its width and height) that holds the centroid of the
  object's visible mask (`POSITIONS`).
- **Relative location**: the nearest other object by distance between visible-mask centroids (in pixels); the side
  is the larger axis of the centroid offset: "left of" / "right of" / "above" / "below" "the <colour> <category>"
  of that object. An object alone in its frame answers `NO_NEIGHBOUR`.
- **Global**: "<count> objects: " and the "<colour> <category>" of every object from left to right by centroid;
  counts are `COUNT_WORDS` "one" to "ten".
A fixed set of (category, colour) pairs is held out of training (`NOVEL_PAIRS`), so evaluation can ask whether the
model composes attributes or memorises pairs.

## Styles of frame
`style="clean"`: flat noisy grey background, axis-aligned shapes, no photometric change (the generator suite and
the demo). `style="camera"`: what a camera and a real segmenter give — frame sizes of real cameras, rotation,
backgrounds (flat, gradient, noise, crops of real photographs), shade/brightness/contrast jitter, noise, blur, JPEG;
imperfect masks come from `perturb_masks`. Every frame is drawn at its own size, with 2x2 supersampled
(anti-aliased) edges and textures at sub-pixel positions.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..tasks import ATTRIBUTE_TASK, DENSE_TASK, GLOBAL_TASK

CATEGORIES = ("circle", "square", "triangle", "diamond", "star", "cross")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "cyan": (40, 205, 215),
    "white": (240, 240, 240),
    "black": (30, 30, 30),
    "gray": (128, 128, 128),
    "brown": (130, 80, 40),
    "pink": (245, 160, 200),
}
COLOR_TOLERANCE = 20  # per channel, around the anchor
DARK_SHADE = 0.45  # a texture's second shade: the colour times this
TEXTURES = ("solid", "striped", "checkered")
TEXTURE_PERIOD = (4.0, 8.0)  # px at a REFERENCE_SIDE shorter side: one light and one dark band
SIZE_BANDS = {"small": (0.07, 0.11), "medium": (0.15, 0.19), "large": (0.24, 0.30)}  # of the shorter side
SIZES = tuple(SIZE_BANDS)
MAX_ROTATION = 15.0  # degrees
POSITIONS = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight",
               9: "nine", 10: "ten"}
NO_NEIGHBOUR = "no other object"
REFERENCE_SIDE = 256
# Frame sizes (width, height) the camera style draws, with weights: the common camera modes and square crops.
CAMERA_FRAMES = (((256, 256), 2), ((320, 240), 2), ((640, 480), 3), ((848, 480), 2), ((1280, 720), 2),
                 ((480, 480), 1), ((720, 720), 1), ((480, 640), 1), ((512, 384), 1))

# Held out of training: every category and every colour still appears, only these pairings are new.
NOVEL_PAIRS = frozenset(
    {("circle", "blue"), ("square", "yellow"), ("triangle", "white"), ("diamond", "red"),
     ("star", "green"), ("cross", "purple"), ("circle", "orange")}
)


@dataclass
class SceneObject:
    region_id: int
    category: str
    color: str
    texture: str
    size: str
    position: str
    relative_location: str = ""
    center: tuple[float, float] = (0.0, 0.0)  # (x, y) centroid of the visible mask, in pixels
    novel: bool = False
    touching: bool = False  # its mask touches or overlaps another object's (the case masks beat boxes on)

    def attribute(self, name: str) -> str:
        return getattr(self, name)

    def dense_caption(self) -> str:
        return f"a {self.size} {self.color} {self.texture} {self.category} at the {self.position}"


@dataclass
class Scene:
    image: np.ndarray  # HxWx3 uint8 RGB
    labels: np.ndarray  # HxW int32 instance label map, 0 = background
    objects: list[SceneObject] = field(default_factory=list)

    def mask(self, region_id: int) -> np.ndarray:
        return self.labels == region_id

    def global_caption(self) -> str:
        ordered = sorted(self.objects, key=lambda o: o.center[0])
        names = ", ".join(f"{o.color} {o.category}" for o in ordered)
        return f"{COUNT_WORDS[len(ordered)]} objects: {names}"

    def caption(self, task: str, obj: SceneObject | None = None, attribute: str | None = None) -> str:
        if task == GLOBAL_TASK:
            return self.global_caption()
        if obj is None:
            raise ValueError(f"task {task!r} needs an object")
        if task == DENSE_TASK:
            return obj.dense_caption()
        if task == ATTRIBUTE_TASK:
            return obj.attribute(attribute)
        raise ValueError(f"unknown task {task!r}")


# ---- one object, drawn ---------------------------------------------------------------------------------------------
@dataclass
class ObjectSpec:
    """An object in frame-independent units: render() draws it at any frame size."""
    region_id: int
    category: str
    color: str
    texture: str
    size: str
    rgb: tuple[float, float, float]  # the shade actually drawn
    x: float  # centre as fractions of the frame's width and height
    y: float
    extent: float  # bounding-box larger side / frame's shorter side
    rotation: float  # degrees
    period: float  # texture period in px at REFERENCE_SIDE
    phase: tuple[float, float]  # texture phase, fractions of a period
    stripe_angle: float  # degrees, relative to the frame


def _shape_mask(category: str, yy: np.ndarray, xx: np.ndarray, radius: float) -> np.ndarray:
    """Boolean mask of a shape centred at the origin of the (yy, xx) offset grids (in the shape's own frame)."""
    ay, ax = np.abs(yy), np.abs(xx)
    if category == "circle":
        return yy**2 + xx**2 <= radius**2
    if category == "square":
        side = radius * 0.85
        return (ay <= side) & (ax <= side)
    if category == "diamond":
        return ay + ax <= radius
    if category == "triangle":  # apex up
        top, bottom = -radius, radius * 0.8
        frac = (yy - top) / (bottom - top)
        return (yy >= top) & (yy <= bottom) & (ax <= frac * radius)
    if category == "cross":
        arm = radius * 0.34
        return ((ay <= arm) & (ax <= radius)) | ((ax <= arm) & (ay <= radius))
    if category == "star":  # five points, radius modulated by angle
        angle = np.arctan2(yy, xx) + np.pi / 2
        r = np.sqrt(yy**2 + xx**2)
        boundary = radius * (0.45 + 0.55 * np.abs(np.cos(2.5 * angle)) ** 2)
        return r <= boundary
    raise ValueError(f"unknown category {category!r}")


def _rotate(yy: np.ndarray, xx: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """Frame offsets -> the offsets in a frame turned by `degrees` (counter-clockwise on screen)."""
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    return -s * xx + c * yy, c * xx + s * yy


@lru_cache(maxsize=512)
def _extent_per_radius(category: str, rotation_deg: int) -> float:
    """Bounding-box larger side of a shape of radius 1 turned by `rotation_deg`, measured on a fine grid."""
    ticks = np.linspace(-1.25, 1.25, 251)
    yy, xx = np.meshgrid(ticks, ticks, indexing="ij")
    inside = _shape_mask(category, *_rotate(yy, xx, rotation_deg), 1.0)
    rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
    step = ticks[1] - ticks[0]
    return float(max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1) * step


def _texture_dark(texture: str, yy: np.ndarray, xx: np.ndarray, period: float, phase, angle: float) -> np.ndarray:
    """Where the darker shade goes, at frame offsets (yy, xx): about half the pixels of every patterned texture."""
    if texture == "solid":
        return np.zeros(yy.shape, dtype=bool)
    u, v = _rotate(yy, xx, angle)
    half = period / 2
    bands_u = np.floor(u / half + 2 * phase[0]).astype(np.int64)
    if texture == "striped":
        return bands_u % 2 == 1
    if texture == "checkered":
        bands_v = np.floor(v / half + 2 * phase[1]).astype(np.int64)
        return (bands_u + bands_v) % 2 == 1
    raise ValueError(f"unknown texture {texture!r}")


def _draw(image: np.ndarray, labels: np.ndarray, spec: ObjectSpec, supersample: int = 2) -> np.ndarray:
    """Draws one object over `image` (float HxWx3) and `labels`; returns its whole (unoccluded) mask's box."""
    h, w = labels.shape
    shorter = min(h, w)
    radius = spec.extent * shorter / _extent_per_radius(spec.category, int(round(spec.rotation)))
    cx, cy = spec.x * w, spec.y * h
    reach = radius * 1.25 + 2
    x0, x1 = max(0, int(cx - reach)), min(w, int(cx + reach) + 1)
    y0, y1 = max(0, int(cy - reach)), min(h, int(cy + reach) + 1)
    if x1 <= x0 or y1 <= y0:
        return np.zeros(4, dtype=np.int64)
    n = supersample
    sub = (np.arange(n) + 0.5) / n  # sample points inside each pixel
    ys = (np.arange(y0, y1)[:, None] + sub[None]).reshape(-1)
    xs = (np.arange(x0, x1)[:, None] + sub[None]).reshape(-1)
    yy, xx = np.meshgrid(ys - cy, xs - cx, indexing="ij")
    inside = _shape_mask(spec.category, *_rotate(yy, xx, spec.rotation), radius)
    period = spec.period * shorter / REFERENCE_SIDE
    dark = _texture_dark(spec.texture, yy, xx, period, spec.phase, spec.stripe_angle)
    rgb = np.asarray(spec.rgb, dtype=np.float32)
    colour = np.where(dark[..., None], rgb * DARK_SHADE, rgb) * inside[..., None]
    ph, pw = y1 - y0, x1 - x0
    alpha = inside.reshape(ph, n, pw, n).mean(axis=(1, 3))
    colour = colour.reshape(ph, n, pw, n, 3).mean(axis=(1, 3))
    patch = image[y0:y1, x0:x1]
    patch *= (1 - alpha)[..., None]
    patch += colour
    labels[y0:y1, x0:x1][alpha >= 0.5] = spec.region_id
    rows, cols = np.flatnonzero(alpha.any(1)), np.flatnonzero(alpha.any(0))
    if len(rows) == 0:
        return np.zeros(4, dtype=np.int64)
    return np.array([x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1])


# ---- backgrounds and the camera ------------------------------------------------------------------------------------
_PHOTOS = ("astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "grass.png", "gravel.png",
           "hubble_deep_field.jpg", "motorcycle_left.png", "moon.png", "page.png", "retina.jpg", "rocket.jpg",
           "text.png", "coins.png")


@lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    """The real photographs scikit-image ships (read from its data folder with PIL; none if it is not installed)."""
    import importlib.util

    from PIL import Image

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return ()
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    photos = []
    for name in _PHOTOS:
        path = folder / name
        if path.is_file():
            photos.append(np.asarray(Image.open(path).convert("RGB")))
    return tuple(photos)


BACKGROUNDS = ("flat", "gradient", "noise", "photo")


def background(rng: np.random.Generator, h: int, w: int, kind: str) -> np.ndarray:
    """A float HxWx3 background: "clean" (flat grey-green with faint noise, the generator's), "flat" (any colour),
    "gradient", "noise" (out-of-focus clutter), "photo" (a crop of a real photograph)."""
    image = np.empty((h, w, 3), dtype=np.float32)
    if kind == "clean":
        image[:] = rng.uniform(45, 95, size=3)
        image += rng.normal(0, 6, size=(h, w, 1)).astype(np.float32)
        return image
    photos = _photos()
    if kind == "photo" and photos:
        from PIL import Image

        photo = photos[rng.integers(len(photos))]
        ph, pw = photo.shape[:2]
        scale = rng.uniform(max(h / ph, w / pw), max(h / ph, w / pw) * 2.5)
        crop_h, crop_w = min(ph, int(math.ceil(h / scale))), min(pw, int(math.ceil(w / scale)))
        top, left = rng.integers(ph - crop_h + 1), rng.integers(pw - crop_w + 1)
        crop = Image.fromarray(photo[top:top + crop_h, left:left + crop_w]).resize((w, h), Image.BILINEAR)
        image[:] = np.asarray(crop, dtype=np.float32)
        return image
    base = rng.uniform(0, 255, size=3)
    if kind == "gradient":
        other = rng.uniform(0, 255, size=3)
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = (np.cos(angle) * xx / w + np.sin(angle) * yy / h)
        t = (t - t.min()) / max(1e-6, t.max() - t.min())
        image[:] = base + (other - base) * t[..., None]
        return image
    image[:] = base
    if kind == "noise":
        # coarse blobs plus pixel noise, like clutter out of focus
        from PIL import Image

        coarse = rng.normal(0, 1, size=(max(2, h // 32), max(2, w // 32), 3))
        coarse = np.asarray(Image.fromarray(np.uint8(np.clip(128 + 40 * coarse, 0, 255))).resize((w, h),
                            Image.BICUBIC), dtype=np.float32) - 128
        image += coarse * rng.uniform(0.3, 1.0) + rng.normal(0, rng.uniform(3, 20), size=(h, w, 1))
    return image


def _background(rng: np.random.Generator, h: int, w: int, style: str) -> np.ndarray:
    if style == "clean":
        return background(rng, h, w, "clean")
    return background(rng, h, w, str(rng.choice(BACKGROUNDS, p=[0.25, 0.25, 0.2, 0.3])))


def apply_effects(image: np.ndarray, rng: np.random.Generator, gain: float = 1.0, contrast: float = 1.0,
                  noise: float = 0.0, blur: float = 0.0, jpeg: int | None = None) -> np.ndarray:
    """float HxWx3 -> uint8 through what a camera adds: brightness (gain) and contrast around mid-grey, Gaussian
    noise of sigma `noise`, a Gaussian blur of radius `blur` px, JPEG at quality `jpeg`."""
    from PIL import Image, ImageFilter

    if gain != 1.0 or contrast != 1.0:
        image = (image - 128) * contrast + 128 * gain
    if noise:
        image = image + rng.normal(0, noise, size=image.shape[:2] + (1,)).astype(np.float32)
    out = np.clip(image, 0, 255).astype(np.uint8)
    if blur:
        out = np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(blur)))
    if jpeg:
        buffer = io.BytesIO()
        Image.fromarray(out).save(buffer, format="JPEG", quality=int(jpeg))
        out = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    return out


def camera_effects(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`apply_effects` with random settings, each sometimes (the camera style's frames)."""
    settings = {}
    if rng.random() < 0.6:
        settings.update(gain=rng.uniform(0.85, 1.15), contrast=rng.uniform(0.85, 1.15))
    if rng.random() < 0.5:
        settings["noise"] = rng.uniform(1, 10)
    if rng.random() < 0.35:
        settings["blur"] = rng.uniform(0.3, 1.2)
    if rng.random() < 0.4:
        settings["jpeg"] = int(rng.integers(40, 96))
    return apply_effects(image, rng, **settings)


def reshape_mask(mask: np.ndarray, pixels: int, grow: bool) -> np.ndarray:
    """A bool mask dilated (`grow`) or eroded by `pixels` (a square structuring element)."""
    from PIL import Image, ImageFilter

    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return mask
    k = pixels
    y0, y1 = max(0, ys.min() - k - 1), min(h, ys.max() + k + 2)
    x0, x1 = max(0, xs.min() - k - 1), min(w, xs.max() + k + 2)
    crop = Image.fromarray(mask[y0:y1, x0:x1].astype(np.uint8) * 255)
    filtered = crop.filter(ImageFilter.MaxFilter(2 * k + 1) if grow else ImageFilter.MinFilter(2 * k + 1))
    out = np.zeros_like(mask)
    out[y0:y1, x0:x1] = np.asarray(filtered) > 127
    return out


def punch_holes(mask: np.ndarray, rng: np.random.Generator, holes: int) -> np.ndarray:
    """`holes` small discs removed from inside a bool mask (a segmenter's dropouts)."""
    ys, xs = np.nonzero(mask)
    if len(ys) <= 200:
        return mask
    h, w = mask.shape
    out = mask.copy()
    yy, xx = np.ogrid[0:h, 0:w]
    for _ in range(holes):
        i = rng.integers(len(ys))
        r = max(1.0, 0.12 * math.sqrt(len(ys)) * rng.uniform(0.3, 1.0))
        out &= (yy - ys[i]) ** 2 + (xx - xs[i]) ** 2 > r * r
    return out


def perturb_masks(scene: Scene, rng: np.random.Generator, strength: float = 1.0) -> list[np.ndarray]:
    """What a real segmenter hands over instead of the exact masks: each object's mask eroded or dilated by 1-4 px,
    sometimes with holes, as a list of bool masks that may overlap. `strength` scales how often."""
    masks = []
    for obj in scene.objects:
        exact = scene.labels == obj.region_id
        mask = exact
        if rng.random() < 0.6 * strength:
            pixels, grow = int(rng.integers(1, 5)), rng.random() < 0.6
            mask = reshape_mask(mask, pixels, grow)
        if rng.random() < 0.15 * strength:
            mask = punch_holes(mask, rng, int(rng.integers(1, 4)))
        masks.append(mask if mask.any() else exact)
    return masks


# ---- the world's truths from a drawn frame -------------------------------------------------------------------------
def _position_word(cx: float, cy: float, width: int, height: int) -> str:
    col = min(2, int(3 * cx / width))
    row = min(2, int(3 * cy / height))
    return POSITIONS[row][col]


def _relation(obj: SceneObject, others: list[SceneObject]) -> str:
    if not others:
        return NO_NEIGHBOUR
    nearest = min(others, key=lambda o: (o.center[0] - obj.center[0]) ** 2 + (o.center[1] - obj.center[1]) ** 2)
    dx = obj.center[0] - nearest.center[0]
    dy = obj.center[1] - nearest.center[1]
    if abs(dx) >= abs(dy):
        side = "left of" if dx < 0 else "right of"
    else:
        side = "above" if dy < 0 else "below"
    return f"{side} the {nearest.color} {nearest.category}"


def _size_word(extent_px: float, shorter: int) -> str:
    """The band nearest to the measured extent (a drawn shape can differ from its spec by a pixel)."""
    fraction = extent_px / shorter
    return min(SIZE_BANDS, key=lambda s: max(SIZE_BANDS[s][0] - fraction, fraction - SIZE_BANDS[s][1], 0.0))


def render(specs: list[ObjectSpec], width: int, height: int, backdrop: np.ndarray | None = None,
           rng: np.random.Generator | None = None, style: str = "clean", shift: tuple[int, int] = (0, 0),
           effects: dict | None = None) -> Scene:
    """Draws object specs on a width x height frame and measures every truth from the drawing itself.

    `backdrop`: a float HxWx3 background (default: one drawn for `style`); `effects`: `apply_effects` settings
    (default: the style's); `shift` (dx, dy) moves every object by whole pixels (the one-pixel shift test). Later
    specs occlude earlier ones."""
    rng = rng or np.random.default_rng(0)
    image = _background(rng, height, width, style) if backdrop is None else backdrop.astype(np.float32).copy()
    labels = np.zeros((height, width), dtype=np.int32)
    boxes = {}
    for spec in specs:
        moved = spec
        if shift != (0, 0):
            moved = ObjectSpec(**{**spec.__dict__, "x": spec.x + shift[0] / width, "y": spec.y + shift[1] / height})
        boxes[spec.region_id] = _draw(image, labels, moved)
    if effects is not None:
        pixels = apply_effects(image, rng, **effects)
    else:
        pixels = camera_effects(image, rng) if style == "camera" else np.clip(image, 0, 255).astype(np.uint8)
    objects = []
    shorter = min(height, width)
    for spec in specs:
        x0, y0, x1, y1 = boxes[spec.region_id]
        ys, xs = np.nonzero(labels[y0:y1, x0:x1] == spec.region_id)  # the visible part lies inside its whole box
        if len(ys) < 12:  # occluded away (or off the frame): not an object of this frame
            continue
        cx, cy = float(x0 + xs.mean() + 0.5), float(y0 + ys.mean() + 0.5)
        objects.append(SceneObject(spec.region_id, spec.category, spec.color, spec.texture,
                                   _size_word(max(x1 - x0, y1 - y0), shorter), _position_word(cx, cy, width, height),
                                   center=(cx, cy), novel=(spec.category, spec.color) in NOVEL_PAIRS))
    for obj in objects:
        obj.relative_location = _relation(obj, [o for o in objects if o is not obj])
    _mark_touching(labels, objects)
    visible = {o.region_id for o in objects}
    labels[~np.isin(labels, list(visible))] = 0
    return Scene(pixels, labels, objects)


def world_texts() -> list[str]:
    """Every word a caption or prompt of this world can use: the vocabulary of the word-level tokenizer."""
    from ..tasks import ATTRIBUTES, TASKS, prompt_for

    texts = [prompt_for(t, a) for t in TASKS for a in ATTRIBUTES]
    texts += list(CATEGORIES) + list(COLORS) + list(TEXTURES) + list(SIZES) + list(COUNT_WORDS.values())
    texts += [p for row in POSITIONS for p in row]
    texts += ["a at the objects : , left of right of above below the", NO_NEIGHBOUR]
    return texts


class SceneGenerator:
    """Draws random scenes. `split="train"` never produces a held-out pair; `"eval"` mixes both.

    `style="camera"` draws camera-like frames (see the module's docstring); `frame_sizes` (a list of (width, height))
    makes every scene pick one of them (default: `CAMERA_FRAMES` in the camera style, else height x width).
    `max_side` draws frames of more than that many pixels on a side smaller at the same aspect ratio: training uses
    512, twice the model's view, which a frame is letterboxed to anyway (what a 1280x720 frame adds is detail that
    the resize to 256 px averages away), at a fifth of the drawing cost."""

    def __init__(self, height: int = 256, width: int = 256, min_objects: int = 3, max_objects: int = 5,
                 split: str = "train", novel_fraction: float = 0.35, seed: int | None = None, style: str = "clean",
                 frame_sizes=None, rotation: float | None = None, max_side: int | None = None):
        if split not in ("train", "eval"):
            raise ValueError("split must be 'train' or 'eval'")
        if style not in ("clean", "camera"):
            raise ValueError("style must be 'clean' or 'camera'")
        if not 1 <= min_objects <= max_objects <= max(COUNT_WORDS):
            raise ValueError(f"object counts must satisfy 1 <= min <= max <= {max(COUNT_WORDS)}")
        self.height, self.width = height, width
        self.min_objects, self.max_objects = min_objects, max_objects
        self.split = split
        self.style = style
        self.novel_fraction = novel_fraction
        self.rng = np.random.default_rng(seed)
        if frame_sizes is None and style == "camera":
            frame_sizes = CAMERA_FRAMES
        elif frame_sizes is not None:
            frame_sizes = tuple((tuple(s), 1) if len(s) == 2 and not isinstance(s[0], tuple) else s
                                for s in frame_sizes)
        self.frame_sizes = frame_sizes
        self.max_side = max_side
        self.rotation = (MAX_ROTATION if style == "camera" else 0.0) if rotation is None else rotation
        pairs = [(c, k) for c in CATEGORIES for k in COLORS]
        self.seen_pairs = [p for p in pairs if p not in NOVEL_PAIRS]
        self.novel_pairs = sorted(NOVEL_PAIRS)

    def _draw_pair(self, used: set) -> tuple[str, str]:
        rng = self.rng
        for _ in range(100):
            pool = self.novel_pairs if self.split == "eval" and rng.random() < self.novel_fraction else self.seen_pairs
            pair = pool[rng.integers(len(pool))]
            if pair not in used:  # a scene never holds two objects of the same colour and category
                return pair
        raise RuntimeError("could not draw a distinct (category, colour) pair")

    def frame_size(self) -> tuple[int, int]:
        """(width, height) of the next frame; with `max_side`, scaled down (same aspect ratio) to at most that."""
        if not self.frame_sizes:
            width, height = self.width, self.height
        else:
            sizes, weights = zip(*self.frame_sizes)
            weights = np.asarray(weights, dtype=np.float64)
            width, height = sizes[self.rng.choice(len(sizes), p=weights / weights.sum())]
        if self.max_side and max(width, height) > self.max_side:
            scale = self.max_side / max(width, height)
            width, height = round(width * scale), round(height * scale)
        return width, height

    def specs(self, width: int, height: int, count: int | None = None) -> list[ObjectSpec]:
        """Random object specs for a width x height frame: overlapping at most partly, never nearly hidden."""
        rng = self.rng
        shorter = min(width, height)
        count = int(rng.integers(self.min_objects, self.max_objects + 1)) if count is None else count
        region_ids = rng.choice(np.arange(1, 256), size=count, replace=False)
        used: set = set()
        placed: list[tuple[float, float, float]] = []
        specs = []
        for region_id in region_ids:
            category, color = self._draw_pair(used)
            size = SIZES[rng.integers(len(SIZES))]
            extent = rng.uniform(*SIZE_BANDS[size])
            half = extent * shorter / 2
            for _ in range(60):  # allow touching and partial overlap
                cx = rng.uniform(half, width - half)
                cy = rng.uniform(half, height - half)
                if all((cx - px) ** 2 + (cy - py) ** 2 >= (0.8 * (half + pr)) ** 2 for px, py, pr in placed):
                    break
            else:
                continue
            shade = np.clip(np.asarray(COLORS[color], dtype=np.float64)
                            + (rng.uniform(-COLOR_TOLERANCE, COLOR_TOLERANCE, size=3) if self.style == "camera"
                               else 0.0), 0, 255)
            orientation = rng.random()
            stripe_angle = 0.0 if orientation < 0.4 else 90.0 if orientation < 0.7 else rng.uniform(0, 180)
            rotation = rng.uniform(-self.rotation, self.rotation) if self.rotation else 0.0
            specs.append(ObjectSpec(
                int(region_id), category, color, TEXTURES[rng.integers(len(TEXTURES))], size, tuple(shade),
                cx / width, cy / height, extent, rotation, rng.uniform(*TEXTURE_PERIOD),
                (rng.random(), rng.random()), stripe_angle + rotation))
            used.add((category, color))
            placed.append((cx, cy, half))
        return specs

    def sample(self) -> Scene:
        width, height = self.frame_size()
        for _ in range(20):
            scene = render(self.specs(width, height), width, height, rng=self.rng, style=self.style)
            if len(scene.objects) >= self.min_objects:
                return scene
        return scene


def _mark_touching(labels: np.ndarray, objects: list[SceneObject]) -> None:
    """An object touches another when a pixel of it sits next to a pixel of the other (4-neighbourhood)."""
    pairs = set()
    for a, b in ((labels[:, 1:], labels[:, :-1]), (labels[1:, :], labels[:-1, :])):
        differ = (a != b) & (a > 0) & (b > 0)
        pairs.update(zip(a[differ].tolist(), b[differ].tolist()))
    touched = {i for pair in pairs for i in pair}
    for obj in objects:
        obj.touching = obj.region_id in touched
