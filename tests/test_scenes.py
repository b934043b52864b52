"""The synthetic world as data/scenes.py states it: anyone drawing a scene by these rules gets the same truth."""
import numpy as np
import pytest
import torch

from finecaption_ros.data.camera import CAMERA_SIZES, RENDER_OVERSAMPLE, Camera, imperfect_masks
from finecaption_ros.data.scenes import (ALONE, COLOR_TOLERANCE, COLORS, COUNT_WORDS, DENSE_FIELDS, NOVEL_PAIRS,
                                         POSITIONS, SIZES, TEXTURE_PERIOD, SceneGenerator, _texture_mask,
                                         parse_dense_caption, world_texts)
from finecaption_ros.model.inputs import letterbox_frames


@pytest.mark.parametrize("width,height", [(256, 256), (640, 480), (1280, 720), (480, 640)])
def test_truth_follows_the_stated_world_at_every_frame_size(width, height):
    generator = SceneGenerator(height, width, 1, 10, split="eval", seed=width + height)
    short = min(width, height)
    for _ in range(6):
        layout = generator.layout()
        for item in layout:
            low, high = SIZES[item.size]
            assert low <= item.radius <= high  # radius as a share of the shorter side
            assert TEXTURE_PERIOD[0] <= item.period <= TEXTURE_PERIOD[1]
        scene = generator.camera.render(layout, height, width, generator.rng)
        assert scene.image.shape == (height, width, 3) and scene.labels.shape == (height, width)
        for obj in scene.objects:
            ys, xs = np.nonzero(scene.mask(obj.region_id))
            cx, cy = xs.mean() + 0.5, ys.mean() + 0.5  # the visible mask's centroid
            assert obj.center == pytest.approx((cx, cy))
            assert obj.position == POSITIONS[min(2, int(3 * cy / height))][min(2, int(3 * cx / width))]
            others = [o for o in scene.objects if o is not obj]
            if not others:
                assert obj.relative_location == ALONE
                continue
            near = min(others, key=lambda o: np.hypot(o.center[0] - cx, o.center[1] - cy))
            dx, dy = cx - near.center[0], cy - near.center[1]
            side = ("left of" if dx < 0 else "right of") if abs(dx) >= abs(dy) else ("above" if dy < 0 else "below")
            assert obj.relative_location == f"{side} the {near.color} {near.category}"
            extent = max(xs.max() - xs.min(), ys.max() - ys.min()) + 1
            assert extent <= 2.2 * SIZES["large"][1] * short


def test_counts_run_from_one_to_ten_and_one_object_stands_alone():
    generator = SceneGenerator(480, 640, 1, 10, split="eval", seed=4)
    for number in (1, 2, 7, 10):
        scene = generator.sample(count=number)
        assert len(scene.objects) == number
        assert scene.global_caption().startswith(f"{COUNT_WORDS[number]} object{'s' if number > 1 else ''}: ")
    alone = generator.sample(count=1)
    assert alone.objects[0].relative_location == ALONE
    words = " ".join(world_texts()).split()
    assert {"black", "gray", "brown", "pink", "ten", "object"} <= set(words)


def test_a_dense_caption_reads_back_to_the_attributes_it_names():
    scene = SceneGenerator(480, 640, 8, 10, split="eval", seed=5).sample()
    assert any(" " in o.position for o in scene.objects)  # two-word positions ("top left") are read too
    for obj in scene.objects:
        assert parse_dense_caption(obj.dense_caption()) == {name: obj.attribute(name) for name in DENSE_FIELDS}
    assert parse_dense_caption("a red circle") is None
    assert parse_dense_caption("a small red solid circle") is None


def test_textures_are_bands_of_the_stated_period_at_any_phase():
    yy, xx = np.mgrid[0:64, 0:64].astype(float) + 0.5
    for period, phase in ((4.0, 0.0), (6.0, 1.7), (8.0, 5.0)):
        stripes = _texture_mask("striped", yy, xx, period, (0.0, phase))
        column = stripes[:, 0].astype(int)
        runs = np.diff(np.flatnonzero(np.diff(column)))
        assert set(runs.tolist()) <= {int(period // 2), int(np.ceil(period / 2))}
        assert not stripes[:, 0].all() and stripes.all(axis=1).sum() == stripes[:, 0].sum()  # horizontal bands
        checks = _texture_mask("checkered", yy, xx, period, (phase, phase))
        assert abs(checks.mean() - 0.5) < 0.08
    shifted = _texture_mask("striped", yy, xx, 6.0, (0.0, 1.0))
    assert not np.array_equal(shifted, _texture_mask("striped", yy, xx, 6.0, (0.0, 0.0)))


def test_training_never_draws_a_held_out_pair_and_shades_stay_in_tolerance():
    generator = SceneGenerator(split="train", seed=1, camera=Camera.training(), min_objects=1, max_objects=10)
    for _ in range(40):
        for item in generator.layout():
            assert (item.category, item.color) not in NOVEL_PAIRS
            anchor = np.array(COLORS[item.color])
            assert np.all(np.abs(np.array(item.rgb) - anchor) <= COLOR_TOLERANCE + 1e-6)
    evaluation = SceneGenerator(split="eval", seed=1)
    assert any((i.category, i.color) in NOVEL_PAIRS for _ in range(20) for i in evaluation.layout())


def test_the_training_camera_draws_camera_frame_shapes_at_twice_the_models_view_size():
    generator = SceneGenerator(seed=2, camera=Camera.training(render_side=256), min_objects=1, max_objects=10)
    aspects = {round(w / h, 2) for w, h in CAMERA_SIZES}
    seen = set()
    for _ in range(30):
        scene = generator.sample()
        height, width = scene.labels.shape
        assert max(height, width) <= 256 * RENDER_OVERSAMPLE
        seen.add(round(width / height, 2))
    assert seen <= aspects | {round(w / h, 2) for w, h in ((512, 384), (512, 290), (512, 288))} and len(seen) >= 3


def test_a_training_rendering_looks_to_the_model_as_the_full_size_frame_does():
    """What the model's 256 px view holds of a training frame that stands for a 1280x720 one matches the view of
    that frame rendered at full size: rendered at the view's own side, its 2-4 px stripes come out as hard bands a
    real downscale blurs, and the model learned them instead of what cameras give."""
    def view(image):
        return letterbox_frames(torch.from_numpy(image)[None], 256)[0].float().numpy()

    generator = SceneGenerator(720, 1280, 4, 5, split="eval", seed=4)
    training, at_view = Camera(render_side=256), Camera(render_side=256 // RENDER_OVERSAMPLE)
    errors = {"training": [], "at the view's side": []}
    for _ in range(3):
        layout = generator.layout()
        full = view(Camera().render(layout, 720, 1280, np.random.default_rng(0)).image)
        for name, camera in (("training", training), ("at the view's side", at_view)):
            height, width, scale = camera.frame_size(np.random.default_rng(0), 720, 1280)
            image = camera.render(layout, height, width, np.random.default_rng(0), scale).image
            errors[name].append(np.abs(view(image) - full).mean())
    training_error, view_error = np.mean(errors["training"]), np.mean(errors["at the view's side"])
    assert training_error < 1.5 and training_error < 0.5 * view_error, errors


def test_a_one_pixel_shift_moves_the_pixels_and_keeps_the_truth():
    generator = SceneGenerator(480, 640, 3, 5, split="eval", seed=9)
    layout = generator.layout()
    plain = Camera(backgrounds=("flat",)).render(layout, 480, 640, np.random.default_rng(0))
    moved = Camera(backgrounds=("flat",), offset=(1.0, 1.0)).render(layout, 480, 640, np.random.default_rng(0))
    assert np.array_equal(moved.labels[1:, 1:], plain.labels[:-1, :-1])
    assert [o.dense_caption() for o in moved.objects] == [o.dense_caption() for o in plain.objects]


def test_growing_a_mask_matches_pooling_the_whole_frame():
    """`_grow` pools only around the mask; it must give the pixels whole-frame pooling gives, at the frame's edges
    too (which do not erode)."""
    import torch
    import torch.nn.functional as F

    from finecaption_ros.data.camera import _grow

    def whole_frame(mask, pixels):
        t = torch.from_numpy(mask.astype(np.float32))[None, None]
        reach = abs(pixels)
        pooled = (F.max_pool2d(t, 2 * reach + 1, stride=1, padding=reach) if pixels > 0
                  else -F.max_pool2d(-t, 2 * reach + 1, stride=1, padding=reach))
        return pooled[0, 0].numpy() > 0.5

    rng = np.random.default_rng(0)
    for _ in range(200):
        height, width = rng.integers(5, 50, size=2)
        mask = np.zeros((height, width), dtype=bool)
        y, x = rng.integers(0, height), rng.integers(0, width)
        mask[y:y + rng.integers(1, 25), x:x + rng.integers(1, 25)] = True  # often cut by the frame's edge
        mask &= rng.random(mask.shape) > 0.2
        for pixels in (-4, -2, -1, 1, 3, 4):
            assert np.array_equal(_grow(mask, pixels), whole_frame(mask, pixels)), (height, width, pixels)
    assert not _grow(np.zeros((8, 8), dtype=bool), 2).any()


def test_imperfect_masks_grow_shrink_and_hole_but_never_vanish():
    scene = SceneGenerator(480, 640, 4, 4, split="eval", seed=3).sample()
    rng = np.random.default_rng(0)
    truth = [scene.mask(o.region_id) for o in scene.objects]
    for grown, exact in zip(imperfect_masks(scene, rng, grow=(2, 3)), truth):
        assert np.all(grown[exact]) and grown.sum() > exact.sum()
    for shrunk, exact in zip(imperfect_masks(scene, rng, grow=(-3, -2)), truth):
        assert not np.any(shrunk & ~exact) and 0 < shrunk.sum() < exact.sum()
    for holed, exact in zip(imperfect_masks(scene, rng, grow=(0, 0), holes=1.0), truth):
        assert not np.any(holed & ~exact) and holed.any()
