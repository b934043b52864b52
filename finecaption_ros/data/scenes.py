"""Procedural CompositionCap-style scenes: coloured, textured shapes with instance masks and captions.

Every object has a category (its shape), a colour, a texture, a size, a position in a 3x3 grid and a relation to
its nearest neighbour. A fixed set of (category, colour) pairs is held out of training ("novel"), so evaluation can
ask whether the model composes attributes or memorises pairs. Textures alternate the object's colour with a darker
shade at one-pixel pitch (at 256 px), so the mean colour of every texture is nearly the same and only a
high-resolution view tells striped from checkered.
"""
from __future__ import annotations

from dataclasses import dataclass, field

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
}
TEXTURES = ("solid", "striped", "checkered")
SIZES = {"small": 15, "medium": 22, "large": 31}  # radius in pixels of a 256 px canvas
POSITIONS = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight",
               9: "nine", 10: "ten"}

# Held out of training: every category and every colour still appears, only these pairings are new.
NOVEL_PAIRS = frozenset(
    {("circle", "blue"), ("square", "yellow"), ("triangle", "white"), ("diamond", "red"),
     ("star", "green"), ("cross", "purple"), ("circle", "orange")}
)
REFERENCE_SIDE = 256  # textures and sizes are defined at this canvas size and scale with the canvas


@dataclass
class SceneObject:
    region_id: int
    category: str
    color: str
    texture: str
    size: str
    position: str
    relative_location: str = ""
    center: tuple[float, float] = (0.0, 0.0)  # (x, y) in pixels
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


def _shape_mask(category: str, yy: np.ndarray, xx: np.ndarray, radius: float) -> np.ndarray:
    """Boolean mask of a shape centred at the origin of the (yy, xx) offset grids."""
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


def _texture_mask(texture: str, yy: np.ndarray, xx: np.ndarray, pitch: int) -> np.ndarray:
    """Where the darker shade goes; about half the pixels for every patterned texture."""
    if texture == "solid":
        return np.zeros(yy.shape, dtype=bool)
    if texture == "striped":
        return (yy // pitch) % 2 == 1
    if texture == "checkered":
        return ((yy // pitch) + (xx // pitch)) % 2 == 1
    raise ValueError(f"unknown texture {texture!r}")


def _position_word(cx: float, cy: float, width: int, height: int) -> str:
    col = min(2, int(3 * cx / width))
    row = min(2, int(3 * cy / height))
    return POSITIONS[row][col]


def _relation(obj: SceneObject, others: list[SceneObject]) -> str:
    nearest = min(others, key=lambda o: (o.center[0] - obj.center[0]) ** 2 + (o.center[1] - obj.center[1]) ** 2)
    dx = obj.center[0] - nearest.center[0]
    dy = obj.center[1] - nearest.center[1]
    if abs(dx) >= abs(dy):
        side = "left of" if dx < 0 else "right of"
    else:
        side = "above" if dy < 0 else "below"
    return f"{side} the {nearest.color} {nearest.category}"


def world_texts() -> list[str]:
    """Every word a caption or prompt of this world can use: the vocabulary of the word-level tokenizer."""
    from ..tasks import ATTRIBUTES, TASKS, prompt_for

    texts = [prompt_for(t, a) for t in TASKS for a in ATTRIBUTES]
    texts += list(CATEGORIES) + list(COLORS) + list(TEXTURES) + list(SIZES) + list(COUNT_WORDS.values())
    texts += [p for row in POSITIONS for p in row]
    texts += ["a at the objects : , left of right of above below the"]
    return texts


class SceneGenerator:
    """Draws random scenes. `split="train"` never produces a held-out pair; `"eval"` mixes both."""

    def __init__(self, height: int = 256, width: int = 256, min_objects: int = 3, max_objects: int = 5,
                 split: str = "train", novel_fraction: float = 0.35, seed: int | None = None):
        if split not in ("train", "eval"):
            raise ValueError("split must be 'train' or 'eval'")
        if not 1 <= min_objects <= max_objects <= max(COUNT_WORDS):
            raise ValueError(f"object counts must satisfy 1 <= min <= max <= {max(COUNT_WORDS)}")
        self.height, self.width = height, width
        self.min_objects, self.max_objects = min_objects, max_objects
        self.split = split
        self.novel_fraction = novel_fraction
        self.rng = np.random.default_rng(seed)
        self.scale = min(height, width) / REFERENCE_SIDE
        self.pitch = max(1, round(self.scale))
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

    def sample(self) -> Scene:
        rng = self.rng
        h, w = self.height, self.width
        image = np.empty((h, w, 3), dtype=np.float32)
        image[:] = rng.uniform(45, 95, size=3)
        image += rng.normal(0, 6, size=(h, w, 1))
        labels = np.zeros((h, w), dtype=np.int32)
        count = int(rng.integers(self.min_objects, self.max_objects + 1))
        region_ids = rng.choice(np.arange(1, 256), size=count, replace=False)
        objects: list[SceneObject] = []
        used: set = set()
        placed: list[tuple[float, float, float]] = []
        yy_full, xx_full = np.mgrid[0:h, 0:w]
        for region_id in region_ids:
            category, color = self._draw_pair(used)
            size = list(SIZES)[rng.integers(len(SIZES))]
            radius = SIZES[size] * self.scale
            for _ in range(60):  # allow touching and partial overlap, never near-total occlusion
                cx = rng.uniform(radius, w - radius)
                cy = rng.uniform(radius, h - radius)
                if all((cx - px) ** 2 + (cy - py) ** 2 >= (0.75 * (radius + pr)) ** 2 for px, py, pr in placed):
                    break
            else:
                continue
            texture = TEXTURES[rng.integers(len(TEXTURES))]
            y0, y1 = max(0, int(cy - radius) - 1), min(h, int(cy + radius) + 2)
            x0, x1 = max(0, int(cx - radius) - 1), min(w, int(cx + radius) + 2)
            yy = yy_full[y0:y1, x0:x1]
            xx = xx_full[y0:y1, x0:x1]
            shape = _shape_mask(category, yy - cy, xx - cx, radius)
            dark = _texture_mask(texture, yy, xx, self.pitch)
            rgb = np.array(COLORS[color], dtype=np.float32)
            pixels = np.where(dark[..., None], rgb * 0.45, rgb)
            patch = image[y0:y1, x0:x1]
            patch[shape] = pixels[shape]
            labels[y0:y1, x0:x1][shape] = region_id
            used.add((category, color))
            placed.append((cx, cy, radius))
            objects.append(SceneObject(int(region_id), category, color, texture, size,
                                       _position_word(cx, cy, w, h), center=(cx, cy),
                                       novel=(category, color) in NOVEL_PAIRS))
        # Later objects occlude earlier ones: keep only objects with a visible mask left.
        visible = {int(i) for i in np.unique(labels) if i}
        objects = [o for o in objects if o.region_id in visible]
        if len(objects) < self.min_objects:
            return self.sample()
        for obj in objects:
            obj.relative_location = _relation(obj, [o for o in objects if o is not obj])
        _mark_touching(labels, objects)
        return Scene(np.clip(image, 0, 255).astype(np.uint8), labels, objects)


def _mark_touching(labels: np.ndarray, objects: list[SceneObject]) -> None:
    """An object touches another when a pixel of it sits next to a pixel of the other (4-neighbourhood)."""
    pairs = set()
    for a, b in ((labels[:, 1:], labels[:, :-1]), (labels[1:, :], labels[:-1, :])):
        differ = (a != b) & (a > 0) & (b > 0)
        pairs.update(zip(a[differ].tolist(), b[differ].tolist()))
    touched = {i for pair in pairs for i in pair}
    for obj in objects:
        obj.touching = obj.region_id in touched
