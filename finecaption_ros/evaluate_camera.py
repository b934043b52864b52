"""The camera suite (`finecaption eval --suite camera`): accuracy under the conditions real cameras and segmenters
create, one row per condition, each drawn fresh (other seeds than training) by the world's renderer
(`data/scenes.py`) at the frame's own size.

Rows: frame sizes and aspect ratios (256x256 up to 1280x720, portrait), the 256 px frames shifted by one pixel,
imperfect masks (dilated, eroded, with holes), rotation, backgrounds (photographs, gradients, clutter), camera
effects (noise + JPEG, blur, brightness/contrast) and a mix of everything. Per row: accuracy of each attribute, all
six right, dense captions with every attribute right. Then the global object count for every count 1-10, and the
consistency check: the same scenes rendered at 256x256, 640x480, 1280x720 and shifted by 1 px, and how often a
region gets the same dense caption in all four.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from .captioner import Captioner
from .data.scenes import (COUNT_WORDS, SceneGenerator, background, perturb_masks, punch_holes,
                          render, reshape_mask)
from .tasks import ATTRIBUTE_TASK, ATTRIBUTES, DENSE_TASK, GLOBAL_TASK


@dataclass(frozen=True)
class Condition:
    name: str
    width: int = 640
    height: int = 480
    rotation: float = 0.0
    backdrop: tuple[str, ...] = ("clean",)  # background kinds, one drawn per scene
    effects: dict = field(default_factory=dict)  # apply_effects settings
    masks: str = "exact"  # exact | dilate | erode | holes | segmenter
    shift: tuple[int, int] = (0, 0)
    camera: bool = False  # camera sizes, style and masks all at once


CONDITIONS = (
    Condition("256x256", 256, 256),
    Condition("256x256 shifted 1 px", 256, 256, shift=(1, 1)),
    Condition("320x240", 320, 240),
    Condition("640x480", 640, 480),
    Condition("848x480", 848, 480),
    Condition("1280x720", 1280, 720),
    Condition("480x480", 480, 480),
    Condition("720x720", 720, 720),
    Condition("480x640 (portrait)", 480, 640),
    Condition("masks dilated 2-3 px", masks="dilate"),
    Condition("masks eroded 1-2 px", masks="erode"),
    Condition("masks with holes", masks="holes"),
    Condition("rotated up to 15 deg", rotation=15.0),
    Condition("photograph backgrounds", backdrop=("photo",)),
    Condition("gradient / clutter backgrounds", backdrop=("gradient", "noise", "flat")),
    Condition("noise sigma 10 + JPEG 50", effects={"noise": 10.0, "jpeg": 50}),
    Condition("blur 1 px", effects={"blur": 1.0}),
    Condition("brightness / contrast +-15%", effects={"gain": 0.85, "contrast": 1.15}),
    Condition("camera mix (all of the above)", camera=True),
)
CONSISTENCY_SIZES = ((256, 256), (640, 480), (1280, 720))


def _masks_for(condition: Condition, scene, rng: np.random.Generator):
    """The masks the captioner is given: the exact label map, or one bool mask per object as a segmenter's."""
    exact = [scene.labels == o.region_id for o in scene.objects]
    if condition.masks == "exact" and not condition.camera:
        return scene.labels, [o.region_id for o in scene.objects]
    if condition.masks == "dilate":
        masks = [reshape_mask(m, int(rng.integers(2, 4)), grow=True) for m in exact]
    elif condition.masks == "erode":
        masks = [reshape_mask(m, int(rng.integers(1, 3)), grow=False) for m in exact]
    elif condition.masks == "holes":
        masks = [punch_holes(m, rng, int(rng.integers(1, 4))) for m in exact]
    else:
        masks = perturb_masks(scene, rng)
    masks = [m if m.any() else e for m, e in zip(masks, exact)]
    return masks, [o.region_id for o in scene.objects]


def _scene(condition: Condition, generator: SceneGenerator, rng: np.random.Generator):
    if condition.camera:
        return generator.sample()
    width, height = condition.width, condition.height
    for _ in range(20):
        drawn = generator.specs(width, height)
        kind = condition.backdrop[int(rng.integers(len(condition.backdrop)))]
        scene = render(drawn, width, height, backdrop=background(rng, height, width, kind), rng=rng,
                       shift=condition.shift, effects=condition.effects)
        if scene.objects:
            return scene
    return scene


class _Row:
    def __init__(self):
        self.right, self.total = defaultdict(int), defaultdict(int)

    def add(self, key: str, correct: bool) -> None:
        self.total[key] += 1
        self.right[key] += int(correct)

    def rate(self, key: str) -> float | None:
        return round(self.right[key] / self.total[key], 4) if self.total[key] else None


def _caption_row(captioner: Captioner, scenes_and_masks) -> dict:
    row = _Row()
    regions = 0
    for scene, (masks, ids) in scenes_and_masks:
        objects = dict(zip(range(1, len(ids) + 1), scene.objects)) if isinstance(masks, list) \
            else {o.region_id: o for o in scene.objects}
        attributes = captioner.caption(scene.image, masks, task=ATTRIBUTE_TASK, attributes=list(ATTRIBUTES))
        per_region = defaultdict(list)
        for result in attributes:
            obj = objects[result.region_id]
            correct = result.caption == obj.attribute(result.attribute)
            row.add(result.attribute, correct)
            per_region[result.region_id].append(correct)
        for answers in per_region.values():
            row.add("all six", all(answers))
        regions += len(per_region)
        for result in captioner.caption(scene.image, masks, task=DENSE_TASK):
            row.add("dense", result.caption == objects[result.region_id].dense_caption())
    accuracy = {a: row.rate(a) for a in ATTRIBUTES}
    return {"regions": regions, "accuracy": accuracy, "all_six": row.rate("all six"),
            "dense_all_right": row.rate("dense")}


def camera_suite(captioner: Captioner, n: int = 40, seed: int = 0, count_scenes: int = 10,
                 consistency_scenes: int = 20, progress: bool = True) -> dict:
    """n scenes (3-5 objects) per condition; `count_scenes` per object count 1-10; `consistency_scenes` rendered
    at every consistency size. Each part draws from its own seed stream, never a training one."""
    report: dict = {"suite": "camera", "model": captioner.model_id, "backend": captioner.backend, "seed": seed,
                    "scenes_per_condition": n, "conditions": {}}
    bar = tqdm(total=len(CONDITIONS) * n + 10 * count_scenes + consistency_scenes, desc="camera suite",
               disable=not progress)
    for index, condition in enumerate(CONDITIONS):
        stream = np.random.SeedSequence([seed, 1000 + index])
        # The shifted row redraws exactly the specs (and backgrounds) of the 256x256 row.
        if condition.shift != (0, 0):
            stream = np.random.SeedSequence([seed, 1000])
        generator = SceneGenerator(split="eval", seed=np.random.default_rng(stream).integers(2**32),
                                   style="camera" if condition.camera else "clean", rotation=condition.rotation)
        rng = np.random.default_rng(stream.spawn(1)[0])

        def drawn(condition=condition, generator=generator, rng=rng):
            for _ in range(n):
                scene = _scene(condition, generator, rng)
                yield scene, _masks_for(condition, scene, rng)
                bar.update(1)

        report["conditions"][condition.name] = _caption_row(captioner, drawn())

    right, total = defaultdict(int), defaultdict(int)  # by the count of objects actually drawn
    generator = SceneGenerator(split="eval", seed=np.random.default_rng([seed, 2000]).integers(2**32),
                               style="camera", min_objects=1, max_objects=10)
    for count in range(1, 11):
        for _ in range(count_scenes):
            width, height = generator.frame_size()
            scene = render(generator.specs(width, height, count=count), width, height, rng=generator.rng,
                           style="camera")
            bar.update(1)
            if not scene.objects:
                continue
            truth = COUNT_WORDS[len(scene.objects)]
            right[truth] += captioner.caption(scene.image, task=GLOBAL_TASK)[0].caption.split(" ")[0] == truth
            total[truth] += 1
    counts = {word: round(right[word] / total[word], 4) for word in COUNT_WORDS.values() if total[word]}
    report["global_count_scenes"] = {word: total[word] for word in COUNT_WORDS.values() if total[word]}
    report["global_count"] = counts

    generator = SceneGenerator(split="eval", seed=np.random.default_rng([seed, 3000]).integers(2**32))
    report["consistency"] = consistency(captioner, [generator.specs(256, 256) for _ in range(consistency_scenes)],
                                        seed, bar.update)
    bar.close()
    return report


def consistency(captioner: Captioner, scene_specs, seed: int = 0, step=lambda n: None) -> dict:
    """Each scene's specs drawn at every `CONSISTENCY_SIZES` frame size and at 256x256 shifted by one pixel; among
    the regions whose truth is the same in all four (a centroid on a grid line may cross it), how many get the same
    dense caption in all four, and how many are right in all four."""
    same = compared = right = 0
    for specs in scene_specs:
        renders = [render(specs, w, h, rng=np.random.default_rng([seed, 3002])) for w, h in CONSISTENCY_SIZES]
        renders.append(render(specs, 256, 256, rng=np.random.default_rng([seed, 3002]), shift=(1, 1)))
        captions, truths = [], []
        for scene in renders:
            dense = captioner.caption(scene.image, scene.labels, task=DENSE_TASK)
            captions.append({r.region_id: r.caption for r in dense})
            truths.append({o.region_id: o.dense_caption() for o in scene.objects})
        for region_id, truth in truths[0].items():
            if all(t.get(region_id) == truth for t in truths):
                compared += 1
                same += len({c[region_id] for c in captions}) == 1
                right += all(c[region_id] == truth for c in captions)
        step(1)
    return {"sizes": [f"{w}x{h}" for w, h in CONSISTENCY_SIZES] + ["256x256 shifted 1 px"], "regions": compared,
            "same_caption": round(same / max(1, compared), 4), "right_in_all": round(right / max(1, compared), 4)}


def format_table(report: dict) -> str:
    """The report as a text table: one row per condition, then counts and consistency."""
    columns = list(ATTRIBUTES) + ["all_six", "dense"]
    short = {"relative_location": "relation", "category": "category", "all_six": "all six"}
    header = f"{'condition':34s} {'regions':>7s} " + " ".join(f"{short.get(c, c):>9s}" for c in columns)
    lines = [header, "-" * len(header)]

    def pct(value):
        return "    -    " if value is None else f"{100 * value:8.1f}%"

    for name, row in report["conditions"].items():
        values = [row["accuracy"][a] for a in ATTRIBUTES] + [row["all_six"], row["dense_all_right"]]
        lines.append(f"{name:34s} {row['regions']:7d} " + " ".join(pct(v) for v in values))
    lines.append("")
    lines.append("global count right: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in report["global_count"].items()))
    c = report["consistency"]
    lines.append(f"same dense caption at {', '.join(c['sizes'])}: {100 * c['same_caption']:.1f}% of {c['regions']} "
                 f"regions (right in all four: {100 * c['right_in_all']:.1f}%)")
    return "\n".join(lines)
