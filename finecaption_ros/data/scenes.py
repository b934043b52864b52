"""Procedural CompositionCap-style scenes: coloured, textured shapes with instance masks and captions.

The world, stated so that anyone can draw a scene the default model should caption (README, "The synthetic world"):

- A frame of any size W x H; S = min(W, H) is its shorter side. 1 to 10 objects, never two of the same colour and
  category; later objects may partly cover earlier ones.
- **category**: the shape, drawn around its centre with radius r (`_shape_mask`): circle (radius r), square
  (half-side 0.85 r), diamond (a square turned 45 degrees, half-diagonal r), triangle (apex up, from -r to 0.8 r),
  star (five points, 0.45-1.0 r), cross (arms of half-width 0.34 r, reaching r). Shapes may be turned by up to
  15 degrees; a square turned 45 degrees would be a diamond, so no shape turns further.
- **size**: r / S in a band: small 0.050-0.066, medium 0.074-0.098, large 0.109-0.133 (13-17, 19-25 and 28-34 px
  of a 256 px frame).
- **colour**: one of `COLORS`, each an RGB anchor; every channel of the drawn colour lies within `COLOR_TOLERANCE`
  of its anchor.
- **texture**: solid; striped = parallel bands, alternately the colour and its darker shade (`DARK_SHADE` times the
  colour), period p, running along either of the object's own axes (horizontal or vertical before it turns);
  checkered = squares of side p / 2 in the same two shades. p / S is 4/256-8/256 (4-8 px of a 256 px frame), at
  any phase.
- **position**: the cell of the frame's 3x3 grid that holds the centroid of the object's visible mask.
- **relative location**: the nearest other object by centroid distance, named by its colour and category; the side
  is the larger axis of the centroid offset ("left of the red circle": this object's centroid is further left than
  it is above or below the red circle's). An object alone in its frame answers `ALONE`.
- **global**: "<count> objects: <colour category>, ..." ordered by centroid from left to right ("one object: ...").

Rendering conditions (frame size, sub-pixel placement, rotation, anti-aliasing, lighting, noise, blur, JPEG,
backgrounds, imperfect masks) live in `camera.py`; they change the pixels, never the truth. A fixed set of
(category, colour) pairs is held out of training ("novel"), so evaluation can ask whether the model composes
attributes or memorises pairs.
"""
from __future__ import annotations

import re
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
    "black": (30, 30, 30),
    "gray": (128, 128, 128),
    "brown": (130, 80, 40),
    "pink": (245, 160, 200),
}
COLOR_TOLERANCE = 20  # per channel, around the anchor: the shades training and evaluation draw
DARK_SHADE = 0.45  # a texture's second shade, as a factor on the colour
TEXTURES = ("solid", "striped", "checkered")
TEXTURE_PERIOD = (4 / 256, 8 / 256)  # of the shorter side
SIZES = {"small": (0.050, 0.066), "medium": (0.074, 0.098), "large": (0.109, 0.133)}  # radius / shorter side
MAX_ROTATION = 15.0  # degrees
POSITIONS = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight",
               9: "nine", 10: "ten"}
ALONE = "no other object"  # the relative location of an object with no other object in its frame
SIDES = ("left of", "right of", "above", "below")  # a relative location's first words, then "the <colour> <category>"

# Held out of training: every category and every colour still appears, only these pairings are new.
NOVEL_PAIRS = frozenset(
    {("circle", "blue"), ("square", "yellow"), ("triangle", "white"), ("diamond", "red"),
     ("star", "green"), ("cross", "purple"), ("circle", "orange"), ("square", "pink"), ("star", "brown"),
     ("triangle", "gray"), ("cross", "black")}
)
REFERENCE_SIDE = 256  # the "px of a 256 px frame" above


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
        return DENSE_TEMPLATE.format(**{name: getattr(self, name) for name in DENSE_FIELDS})


DENSE_TEMPLATE = "a {size} {color} {texture} {category} at the {position}"
DENSE_FIELDS = ("size", "color", "texture", "category", "position")
# The template read back: every field is one word but the position, which may be two ("top left").
_DENSE_PATTERN = re.compile("^" + DENSE_TEMPLATE.format(**{name: rf"(?P<{name}>\S+)" for name in DENSE_FIELDS[:-1]},
                                                        position=r"(?P<position>.+)") + "$")


def parse_dense_caption(text: str) -> dict[str, str] | None:
    """The attributes a dense caption names, by field; None when `text` is not of `DENSE_TEMPLATE`'s form."""
    match = _DENSE_PATTERN.match(text)
    return None if match is None else match.groupdict()


@dataclass
class Scene:
    image: np.ndarray  # HxWx3 uint8 RGB
    labels: np.ndarray  # HxW int32 instance label map, 0 = background
    objects: list[SceneObject] = field(default_factory=list)

    def mask(self, region_id: int) -> np.ndarray:
        return self.labels == region_id

    def global_caption(self) -> str:
        return global_caption(self.objects)

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


def global_caption(objects: list[SceneObject]) -> str:
    ordered = sorted(objects, key=lambda o: o.center[0])
    names = ", ".join(f"{o.color} {o.category}" for o in ordered)
    noun = "object" if len(ordered) == 1 else "objects"
    return f"{COUNT_WORDS[len(ordered)]} {noun}: {names}"


def _shape_mask(category: str, yy: np.ndarray, xx: np.ndarray, radius: float) -> np.ndarray:
    """Boolean mask of a shape centred at the origin of the (yy, xx) offset grids (in the object's own axes)."""
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


def _texture_mask(texture: str, yy: np.ndarray, xx: np.ndarray, period: float,
                  phase: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Where the darker shade goes (in the object's own axes); about half the pixels for every patterned texture."""
    if texture == "solid":
        return np.zeros(yy.shape, dtype=bool)
    half = period / 2
    rows = np.floor((yy + phase[1]) / half).astype(np.int64)
    if texture == "striped":
        return rows % 2 == 1
    if texture == "checkered":
        return (rows + np.floor((xx + phase[0]) / half).astype(np.int64)) % 2 == 1
    raise ValueError(f"unknown texture {texture!r}")


def position_word(cx: float, cy: float, width: int, height: int) -> str:
    col = min(2, max(0, int(3 * cx / width)))
    row = min(2, max(0, int(3 * cy / height)))
    return POSITIONS[row][col]


def relation(obj: SceneObject, others: list[SceneObject]) -> str:
    if not others:
        return ALONE
    nearest = min(others, key=lambda o: (o.center[0] - obj.center[0]) ** 2 + (o.center[1] - obj.center[1]) ** 2)
    dx = obj.center[0] - nearest.center[0]
    dy = obj.center[1] - nearest.center[1]
    if abs(dx) >= abs(dy):
        side = SIDES[0] if dx < 0 else SIDES[1]
    else:
        side = SIDES[2] if dy < 0 else SIDES[3]
    return relation_phrase(side, f"{nearest.color} {nearest.category}")


def relation_phrase(side: str, name: str) -> str:
    return f"{side} the {name}"


def relation_phrases(names: list[str]) -> list[str]:
    """Every relative location that names one of `names` ("<colour> <category>" of the frame's other objects), or
    only `ALONE` when there is none: the answers a region's relation may take."""
    return [relation_phrase(side, name) for name in dict.fromkeys(names) for side in SIDES] or [ALONE]


def world_texts() -> list[str]:
    """Every word a caption or prompt of this world can use: the vocabulary of the word-level tokenizer."""
    from ..tasks import ATTRIBUTES, TASKS, prompt_for

    texts = [prompt_for(t, a) for t in TASKS for a in ATTRIBUTES]
    texts += list(CATEGORIES) + list(COLORS) + list(TEXTURES) + list(SIZES) + list(COUNT_WORDS.values())
    texts += [p for row in POSITIONS for p in row]
    texts += ["a at the object objects : , the", ALONE, *SIDES]
    return texts


@dataclass
class Layout:
    """One object before rendering: everything in frame-independent units, so one layout renders at any frame size
    (centre as a fraction of the frame's width and height, radius and texture period of its shorter side)."""
    region_id: int
    category: str
    color: str
    texture: str
    size: str
    fx: float
    fy: float
    radius: float
    period: float
    phase: tuple[float, float]  # fractions of a period, along the object's x and y axes
    angle: float  # degrees
    rgb: tuple[float, float, float]
    vertical: bool = False  # stripes run along the object's y axis instead of its x axis


class SceneGenerator:
    """Draws random scenes. `split="train"` never produces a held-out pair; `"eval"` mixes both. `camera` (a
    `camera.Camera`) sets the rendering conditions; the default draws a clean, axis-aligned frame of the given size."""

    def __init__(self, height: int = 256, width: int = 256, min_objects: int = 3, max_objects: int = 5,
                 split: str = "train", novel_fraction: float = 0.35, seed: int | None = None, camera=None):
        if split not in ("train", "eval"):
            raise ValueError("split must be 'train' or 'eval'")
        if not 1 <= min_objects <= max_objects <= max(COUNT_WORDS):
            raise ValueError(f"object counts must satisfy 1 <= min <= max <= {max(COUNT_WORDS)}")
        from .camera import Camera

        self.height, self.width = height, width
        self.min_objects, self.max_objects = min_objects, max_objects
        self.split = split
        self.novel_fraction = novel_fraction
        self.rng = np.random.default_rng(seed)
        self.camera = camera or Camera()
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

    def layout(self, count: int | None = None, aspect: float | None = None) -> list[Layout]:
        """A random arrangement of `count` objects (drawn between min and max when None) for frames of this
        width / height ratio (the generator's when None); fewer when they do not fit apart."""
        rng = self.rng
        aspect = aspect or self.width / self.height
        count = int(rng.integers(self.min_objects, self.max_objects + 1)) if count is None else count
        short_w, short_h = (1.0, 1.0 / aspect) if aspect <= 1 else (aspect, 1.0)  # frame in shorter-side units
        region_ids = rng.choice(np.arange(1, 256), size=count, replace=False)
        placed: list[tuple[float, float, float]] = []
        objects: list[Layout] = []
        used: set = set()
        for region_id in region_ids:
            category, color = self._draw_pair(used)
            size = list(SIZES)[rng.integers(len(SIZES))]
            radius = float(rng.uniform(*SIZES[size]))
            for _ in range(60):  # allow touching and partial overlap, never near-total occlusion
                x = rng.uniform(radius, short_w - radius)
                y = rng.uniform(radius, short_h - radius)
                if all((x - px) ** 2 + (y - py) ** 2 >= (0.8 * (radius + pr)) ** 2 for px, py, pr in placed):
                    break
            else:
                continue
            used.add((category, color))
            placed.append((x, y, radius))
            anchor = np.array(COLORS[color], dtype=np.float64)
            rgb = np.clip(anchor + rng.uniform(-1, 1, 3) * self.camera.shade_jitter * COLOR_TOLERANCE, 0, 255)
            angle = float(rng.uniform(-1, 1) * self.camera.max_rotation)
            objects.append(Layout(
                int(region_id), category, color, TEXTURES[rng.integers(len(TEXTURES))], size,
                fx=x / short_w, fy=y / short_h, radius=radius, period=float(rng.uniform(*TEXTURE_PERIOD)),
                phase=(float(rng.random()), float(rng.random())), angle=angle, rgb=tuple(rgb.tolist()),
                vertical=bool(rng.random() < 0.5)))
        return objects

    def sample(self, count: int | None = None) -> Scene:
        for _ in range(20):
            height, width, scale = self.camera.frame_size(self.rng, self.height, self.width)
            objects = self.layout(count, width / height)
            scene = self.camera.render(objects, height, width, self.rng, scale)
            wanted = self.min_objects if count is None else count
            if len(scene.objects) >= wanted:
                return scene
        raise RuntimeError(f"could not place {count or self.min_objects} objects apart in a "
                           f"{self.width}x{self.height} frame")


def finish_scene(image: np.ndarray, labels: np.ndarray, layouts: list[Layout]) -> Scene:
    """The truth of a rendered frame: visible objects, their centroids, positions, relations and contacts."""
    height, width = labels.shape
    flat = labels.ravel()
    area = np.bincount(flat, minlength=256)
    sum_x = np.bincount(flat, weights=np.tile(np.arange(width) + 0.5, height), minlength=256)
    sum_y = np.bincount(flat, weights=np.repeat(np.arange(height) + 0.5, width), minlength=256)
    objects = []
    for item in layouts:
        if area[item.region_id] == 0:
            continue  # covered by later objects
        cx, cy = sum_x[item.region_id] / area[item.region_id], sum_y[item.region_id] / area[item.region_id]
        objects.append(SceneObject(item.region_id, item.category, item.color, item.texture, item.size,
                                   position_word(cx, cy, width, height), center=(cx, cy),
                                   novel=(item.category, item.color) in NOVEL_PAIRS))
    for obj in objects:
        obj.relative_location = relation(obj, [o for o in objects if o is not obj])
    _mark_touching(labels, objects)
    return Scene(image, labels, objects)


def _mark_touching(labels: np.ndarray, objects: list[SceneObject]) -> None:
    """An object touches another when a pixel of it sits next to a pixel of the other (4-neighbourhood)."""
    pairs = set()
    for a, b in ((labels[:, 1:], labels[:, :-1]), (labels[1:, :], labels[:-1, :])):
        differ = (a != b) & (a > 0) & (b > 0)
        pairs.update(zip(a[differ].tolist(), b[differ].tolist()))
    touched = {i for pair in pairs for i in pair}
    for obj in objects:
        obj.touching = obj.region_id in touched
