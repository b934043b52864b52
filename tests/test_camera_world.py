"""Issue 9: frames of any size keep their aspect ratio, and the world's definitions hold in every drawn frame."""
import numpy as np
import pytest
import torch

from finecaption_ros.data.scenes import (COLOR_TOLERANCE, COLORS, COUNT_WORDS, NO_NEIGHBOUR, NOVEL_PAIRS, POSITIONS,
                                         SIZE_BANDS, ObjectSpec, SceneGenerator, perturb_masks, render)
from finecaption_ros.model.fusion import region_features
from finecaption_ros.model.inputs import Letterbox, letterbox_frames, normalise_frames, region_inputs

MEAN = (0.48145466, 0.4578275, 0.40821073)


@pytest.mark.parametrize("size", [(480, 640), (720, 1280), (640, 480), (256, 256), (241, 333)])
def test_letterbox_keeps_the_aspect_ratio_and_centres_the_frame(size):
    height, width = size
    box = Letterbox(height, width, 256)
    (ch, cw), (top, left) = box.content, box.offset
    assert max(ch, cw) == 256 and abs(cw / ch - width / height) < 0.02
    frame = torch.full((1, height, width, 3), 200, dtype=torch.uint8)
    out = letterbox_frames(frame, 256, MEAN)[0]
    assert out.shape == (256, 256, 3)
    assert (out[top:top + ch, left:left + cw] == 200).all()
    padding = torch.ones(256, 256, dtype=torch.bool)
    padding[top:top + ch, left:left + cw] = False
    assert (out[padding] == torch.tensor([123, 117, 104], dtype=torch.uint8)).all()
    pixels = normalise_frames(out[None], 256, MEAN, (0.27, 0.26, 0.28))
    assert padding.any() == (height != width)
    if padding.any():
        assert pixels[0, :, padding].abs().max() < 0.01  # the padding normalises to (almost) zero


def test_a_circle_stays_round_in_the_view_of_a_wide_frame():
    """A frame squashed to a square would make a circle of a 1280x720 frame 1.8x taller than wide."""
    height, width = 720, 1280
    yy, xx = np.mgrid[0:height, 0:width]
    mask = (yy - 360) ** 2 + (xx - 900) ** 2 <= 100 ** 2
    coverage, geometry, pixel_boxes = region_inputs(mask[None], 256)
    rows = np.flatnonzero(coverage[0, 0].sum(1) > 0.5)
    cols = np.flatnonzero(coverage[0, 0].sum(0) > 0.5)
    assert abs(len(rows) - len(cols)) <= 1
    assert tuple(pixel_boxes[0]) == (800, 260, 1001, 461)  # reported in the input frame's pixels
    x0, y0, x1, y1, cx, cy, cw, ch = geometry[0].tolist()
    assert (cw, ch) == (1.0, 0.5625) and abs(cx - 900.5 / 1280) < 1e-3
    # the model's view of it: the centroid as a fraction of the frame, the size relative to the shorter side
    fx, fy, w, h = region_features(geometry)[0, :4].tolist()
    assert abs(fx - 900.5 / 1280) < 1e-3 and abs(fy - 360.5 / 720) < 1e-3
    assert abs(w - 201 / 720) < 0.01 and abs(h - 201 / 720) < 0.01


def test_the_same_frame_at_two_resolutions_gives_the_same_region_view():
    spec = ObjectSpec(1, "square", "red", "solid", "large", COLORS["red"], 0.3, 0.6, 0.27, 0.0, 6.0, (0.0, 0.0), 0.0)
    views = []
    for width, height in ((640, 480), (1280, 960)):
        scene = render([spec], width, height)
        _, geometry, _ = region_inputs(scene.labels[None] > 0, 256)
        views.append(geometry[0])
    assert torch.allclose(views[0], views[1], atol=4e-3)


def _measured_extent(spec, width, height):
    scene = render([spec], width, height)
    ys, xs = np.nonzero(scene.labels)
    return max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) / min(width, height), scene


@pytest.mark.parametrize("width,height", [(256, 256), (640, 480), (1280, 720), (480, 640)])
def test_sizes_are_the_bounding_box_over_the_shorter_side(width, height):
    rng = np.random.default_rng(0)
    for category in ("circle", "square", "triangle", "diamond", "star", "cross"):
        for size, (low, high) in SIZE_BANDS.items():
            extent = rng.uniform(low, high)
            spec = ObjectSpec(1, category, "blue", "solid", size, COLORS["blue"], 0.5, 0.5, extent,
                              rng.uniform(-15, 15), 6.0, (0.0, 0.0), 0.0)
            measured, scene = _measured_extent(spec, width, height)
            assert abs(measured - extent) < 3 / min(width, height) + 0.01
            assert scene.objects[0].size == size


def test_positions_relations_counts_and_the_lone_object():
    alone = render([ObjectSpec(7, "star", "pink", "striped", "small", COLORS["pink"], 0.9, 0.1, 0.1, 0.0, 6.0,
                               (0.3, 0.3), 0.0)], 640, 480)
    assert alone.objects[0].position == "top right"
    assert alone.objects[0].relative_location == NO_NEIGHBOUR
    assert alone.global_caption() == "one objects: pink star"
    generator = SceneGenerator(split="eval", seed=4, style="camera", min_objects=1, max_objects=10)
    for _ in range(12):
        scene = generator.sample()
        h, w = scene.labels.shape
        for obj in scene.objects:
            ys, xs = np.nonzero(scene.labels == obj.region_id)
            cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
            assert obj.position == POSITIONS[min(2, int(3 * cy / h))][min(2, int(3 * cx / w))]
            others = [o for o in scene.objects if o is not obj]
            if not others:
                assert obj.relative_location == NO_NEIGHBOUR
                continue
            nearest = min(others, key=lambda o: np.hypot(o.center[0] - cx, o.center[1] - cy))
            assert obj.relative_location.endswith(f"the {nearest.color} {nearest.category}")
        assert scene.global_caption().startswith(COUNT_WORDS[len(scene.objects)] + " objects:")


def test_camera_frames_come_in_camera_sizes_with_in_tolerance_shades_and_no_novel_pair_in_training():
    generator = SceneGenerator(split="train", seed=9, style="camera", min_objects=1, max_objects=10)
    sizes, counts = set(), set()
    for _ in range(40):
        specs = generator.specs(*generator.frame_size())
        for spec in specs:
            anchor = np.array(COLORS[spec.color])
            assert np.all(np.abs(np.array(spec.rgb) - anchor) <= COLOR_TOLERANCE + 1e-9)
            assert (spec.category, spec.color) not in NOVEL_PAIRS
            assert 4.0 <= spec.period <= 8.0 and abs(spec.rotation) <= 15.0
        counts.add(len(specs))
        sizes.add(generator.frame_size())
    assert {(640, 480), (1280, 720), (320, 240), (848, 480)} <= sizes
    assert len(counts) >= 8


def test_segmenter_masks_grow_or_shrink_and_may_overlap():
    scene = SceneGenerator(split="eval", seed=2, style="camera", min_objects=4, max_objects=6).sample()
    masks = perturb_masks(scene, np.random.default_rng(0), strength=1.5)
    exact = [scene.labels == o.region_id for o in scene.objects]
    assert len(masks) == len(exact) and all(m.any() for m in masks)
    assert any(m.sum() != e.sum() for m, e in zip(masks, exact))


def test_one_pixel_shift_moves_the_frame_and_keeps_the_truths():
    generator = SceneGenerator(split="eval", seed=12)
    specs = generator.specs(256, 256)
    a = render(specs, 256, 256, rng=np.random.default_rng(1))
    b = render(specs, 256, 256, rng=np.random.default_rng(1), shift=(1, 1))
    assert not np.array_equal(a.image, b.image)
    assert [o.region_id for o in a.objects] == [o.region_id for o in b.objects]
    for before, after in zip(a.objects, b.objects):
        assert np.allclose(np.subtract(after.center, before.center), (1, 1), atol=0.05)
        near_a_third = any(abs(c - k * 256 / 3) < 1.5 for c in before.center for k in (1, 2))
        if not near_a_third:  # a centroid on a grid line may cross it
            assert after.dense_caption() == before.dense_caption()
