import numpy as np
import pytest

from finecaption_ros.captioner import Captioner, CaptionerInputError
from finecaption_ros.data.scenes import SceneGenerator


@pytest.fixture(scope="module")
def random_captioner(random_model_dir):
    return Captioner.from_pretrained(random_model_dir)


@pytest.fixture(scope="module")
def scene():
    return SceneGenerator(split="eval", seed=11).sample()


def test_one_result_per_region_and_attribute_with_geometry(random_captioner, scene):
    results = random_captioner.caption(scene.image, scene.labels, task="attribute", attributes=["color", "size"])
    ids = sorted(o.region_id for o in scene.objects)
    assert [(r.region_id, r.attribute) for r in results] == [(i, a) for i in ids for a in ("color", "size")]
    for r in results:
        mask = scene.labels == r.region_id
        ys, xs = np.nonzero(mask)
        assert r.bbox == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        assert r.mask_area == mask.sum()
        assert 0.0 < r.confidence <= 1.0
        assert {"preprocess", "frame_encoder", "region_encoder", "decoder", "total"} <= set(r.timings_ms)


def test_batched_decoding_matches_each_region_alone(random_captioner, scene):
    """All regions x attributes decode as one padded batch; each must get exactly what it would get alone (the
    other regions still given, as its neighbours)."""
    batched = random_captioner.caption(scene.image, scene.labels, task="attribute",
                                       attributes=["color", "relative_location"])
    for r in batched:
        alone = random_captioner.caption(scene.image, scene.labels, task="attribute", attributes=[r.attribute],
                                         region_ids=[r.region_id])[0]
        assert alone.caption == r.caption
        assert alone.confidence == pytest.approx(r.confidence, rel=1e-4)


def test_overlapping_bool_masks_and_label_maps_agree(random_captioner, scene):
    ids = sorted(o.region_id for o in scene.objects)
    from_labels = random_captioner.caption(scene.image, scene.labels, task="dense")
    from_list = random_captioner.caption(scene.image, [scene.labels == i for i in ids], task="dense")
    assert [r.caption for r in from_labels] == [r.caption for r in from_list]
    assert [r.region_id for r in from_list] == list(range(1, len(ids) + 1))
    union = scene.labels > 0  # overlaps another mask entirely: allowed
    assert len(random_captioner.caption(scene.image, [union, scene.labels == ids[0]])) == 2


def test_any_image_size(random_captioner):
    image = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    labels = np.zeros((480, 640), dtype=np.uint16)
    labels[100:200, 300:420] = 700
    [result] = random_captioner.caption(image, labels)
    assert result.region_id == 700 and result.bbox == (300, 100, 120, 100)


def test_global_task_describes_the_whole_frame(random_captioner, scene):
    [result] = random_captioner.caption(scene.image, task="global")
    assert result.region_id == 0 and result.bbox == (0, 0, 256, 256) and result.mask_area == 256 * 256


@pytest.mark.parametrize("call, message", [
    (lambda c, s: c.caption(s.image[..., :2], s.labels), "HxWx3"),
    (lambda c, s: c.caption(s.image.astype(np.float32), s.labels), "uint8"),
    (lambda c, s: c.caption(s.image, s.labels[:-1]), "must match the image size"),
    (lambda c, s: c.caption(s.image, np.zeros_like(s.labels)), "no regions"),
    (lambda c, s: c.caption(s.image, []), "no masks"),
    (lambda c, s: c.caption(s.image, [np.zeros(s.labels.shape, bool)]), "empty"),
    (lambda c, s: c.caption(s.image, s.labels.astype(np.float32)), "integers"),
    (lambda c, s: c.caption(s.image, s.labels, task="poem"), "unknown task"),
    (lambda c, s: c.caption(s.image, s.labels, task="attribute"), "needs attributes"),
    (lambda c, s: c.caption(s.image, s.labels, task="attribute", attributes=["smell"]), "unknown attribute"),
    (lambda c, s: c.caption(s.image, None), "need masks"),
])
def test_invalid_input_raises_one_clear_error(random_captioner, scene, call, message):
    with pytest.raises(CaptionerInputError, match=message):
        call(random_captioner, scene)


def test_missing_model_directory_and_unknown_backend(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Captioner.from_pretrained(tmp_path / "nope")
    with pytest.raises(ValueError, match="unknown backend"):
        Captioner.from_pretrained(backend="cuda-magic")


# ---- the embedded default model ----------------------------------------------------------------------------

def test_default_model_is_embedded_and_small():
    from finecaption_ros.captioner import DEFAULT_MODEL_DIR

    weights = DEFAULT_MODEL_DIR / "model.safetensors"
    assert weights.is_file() and weights.stat().st_size <= 30 * 1024 * 1024


def test_two_masks_on_one_image_get_different_correct_captions(default_captioner):
    """The same frame, two different regions: the captions must follow the mask."""
    generator = SceneGenerator(split="eval", seed=5)
    for _ in range(20):  # find a scene whose first two objects differ in colour and category
        scene = generator.sample()
        a, b = scene.objects[:2]
        if a.color != b.color and a.category != b.category:
            break
    first = default_captioner.caption(scene.image, [scene.mask(a.region_id)], task="attribute",
                                      attributes=["color", "category"])
    second = default_captioner.caption(scene.image, [scene.mask(b.region_id)], task="attribute",
                                       attributes=["color", "category"])
    assert [r.caption for r in first] == [a.color, a.category]
    assert [r.caption for r in second] == [b.color, b.category]


def _dense_right(captioner, generator, scenes: int) -> tuple[int, int]:
    """(exact dense captions, regions) over `scenes` fresh scenes of `generator`."""
    right = total = 0
    for _ in range(scenes):
        scene = generator.sample()
        truth = {o.region_id: o.dense_caption() for o in scene.objects}
        for r in captioner.caption(scene.image, scene.labels, task="dense"):
            right += r.caption == truth[r.region_id]
            total += 1
    return right, total


def test_default_model_captions_fresh_scenes_correctly(default_captioner):
    right, total = _dense_right(default_captioner, SceneGenerator(split="eval", seed=1234), 5)
    assert right / total >= 0.7, f"{right}/{total} dense captions exact"


def test_default_model_names_each_regions_nearest_neighbour(default_captioner):
    """Relative location needs the other regions of the frame (neighbour tokens): measured 79.8% on 300 scenes."""
    generator = SceneGenerator(split="eval", seed=4321)
    right = total = 0
    for _ in range(10):
        scene = generator.sample()
        truth = {o.region_id: o.relative_location for o in scene.objects}
        for r in default_captioner.caption(scene.image, scene.labels, task="attribute",
                                           attributes=["relative_location"]):
            right += r.caption == truth[r.region_id]
            total += 1
    assert right / total >= 0.7, f"{right}/{total} relative locations exact"


def test_default_model_counts_the_objects_of_a_frame(default_captioner):
    """The global caption starts with the object count (count token). The default gets 17 of these 20 (11 before
    its density head was retrained, stage 6 in the README); this guards the level reached."""
    from finecaption_ros.data.scenes import COUNT_WORDS

    generator = SceneGenerator(split="eval", seed=99)
    right = 0
    for _ in range(20):
        scene = generator.sample()
        caption = default_captioner.caption(scene.image, task="global", max_new_tokens=3)[0].caption
        right += caption.split(" ")[0] == COUNT_WORDS[len(scene.objects)]
    assert right >= 15, f"{right}/20 object counts right"


def test_count_objects_is_the_sum_the_global_caption_counts_by(default_captioner):
    """count_objects reads the counter the count token is built from: on 640x480 frames of 2-4 objects (where the
    suite finds the counter right on every frame) its rounded sum is the true count, and the global caption's count
    word follows it."""
    from finecaption_ros.data.scenes import COUNT_WORDS

    generator = SceneGenerator(480, 640, 2, 4, split="eval", seed=41)
    sums_right = words_follow = 0
    for _ in range(10):
        scene = generator.sample()
        counted = default_captioner.count_objects(scene.image)
        sums_right += round(counted) == len(scene.objects)
        word = default_captioner.caption(scene.image, task="global", max_new_tokens=3)[0].caption.split(" ")[0]
        words_follow += word == COUNT_WORDS.get(round(counted))
    assert sums_right >= 9 and words_follow >= 9, (sums_right, words_follow)


def test_count_objects_refuses_a_model_without_an_object_counter(random_model_dir, tmp_path, scene):
    from finecaption_ros.model.config import FineCaptionConfig
    from finecaption_ros.model.finecaption import FineCaptionModel, load_tokenizer

    assert Captioner.from_pretrained(random_model_dir).has_object_counter
    config = FineCaptionConfig.load(random_model_dir)
    config.count_token = False
    directory = tmp_path / "no_counter"
    FineCaptionModel(config).save_pretrained(directory, load_tokenizer(random_model_dir))
    captioner = Captioner.from_pretrained(directory)
    assert not captioner.has_object_counter
    with pytest.raises(CaptionerInputError, match="has no object counter"):
        captioner.count_objects(scene.image)
    with pytest.raises(CaptionerInputError, match="image"):
        Captioner.from_pretrained(random_model_dir).count_objects(np.zeros((4, 4), dtype=np.uint8))


def test_default_model_gives_the_same_captions_at_camera_sizes_and_one_pixel_shifts(default_captioner):
    """The same layouts at 256x256, 640x480, 1280x720 and shifted by 1 px: the share of regions with the same dense
    caption in all four. Issue 9's target is 95% (the camera suite's consistency row, README); this guards
    the level reached, and the README states the gap."""
    from finecaption_ros.camera_suite import _consistency

    result = _consistency(default_captioner, scenes=6, seed=5)
    assert result["regions"] >= 18
    assert result["same_caption"] >= 0.75, result


def test_default_model_captions_camera_frames(default_captioner):
    """640x480 and 1280x720 frames, letterboxed, are captioned (the previous default got 8% of dense captions right at
    these sizes; the camera suite's rows are in the README)."""
    for width, height in ((640, 480), (1280, 720)):
        right, total = _dense_right(default_captioner, SceneGenerator(height, width, split="eval", seed=width), 6)
        assert right / total >= 0.8, f"{width}x{height}: {right}/{total} dense captions exact"


def test_region_ids_caption_a_subset_with_the_other_regions_as_neighbours(random_model_dir):
    from finecaption_ros.captioner import Captioner, CaptionerInputError
    from finecaption_ros.data.scenes import SceneGenerator

    captioner = Captioner.from_pretrained(random_model_dir)
    assert captioner.config.neighbor_tokens > 0
    scene = SceneGenerator(seed=11).sample()
    ids = sorted(o.region_id for o in scene.objects)
    everything = captioner.caption(scene.image, scene.labels, task="attribute", attributes=["relative_location"],
                                   max_new_tokens=4)
    subset = captioner.caption(scene.image, scene.labels, task="attribute", attributes=["relative_location"],
                               max_new_tokens=4, region_ids=[ids[1]])
    assert [r.region_id for r in subset] == [ids[1]]
    assert subset[0].caption == everything[1].caption
    with pytest.raises(CaptionerInputError, match="not regions"):
        captioner.caption(scene.image, scene.labels, region_ids=[999])


def test_several_frames_in_one_call_match_each_frame_alone(random_captioner):
    """caption_frames (the node's cameras, one batch): each frame is encoded alone and its regions' neighbours come
    from that frame only, so every frame gets exactly what it gets in a call of its own; sizes may differ."""
    generator = SceneGenerator(split="eval", seed=23)
    a, b = generator.sample(), generator.sample()
    small = (b.image[::2, ::2].copy(), b.labels[::2, ::2].copy())
    frames = [(a.image, a.labels, None), (small[0], small[1], None), (a.image, a.labels, [int(a.labels.max())])]
    together = random_captioner.caption_frames(frames, task="attribute", attributes=["relative_location", "color"])
    assert len(together) == 3
    for (image, labels, ids), got in zip(frames, together):
        alone = random_captioner.caption(image, labels, task="attribute", attributes=["relative_location", "color"],
                                         region_ids=ids)
        assert [(r.region_id, r.attribute, r.caption, r.bbox, r.mask_area) for r in got] == \
            [(r.region_id, r.attribute, r.caption, r.bbox, r.mask_area) for r in alone]
        assert [r.confidence for r in got] == pytest.approx([r.confidence for r in alone], rel=1e-4)
    with pytest.raises(CaptionerInputError, match="no frames"):
        random_captioner.caption_frames([])
    with pytest.raises(CaptionerInputError, match="label map is"):  # a bad frame is named by the same checks
        random_captioner.caption_frames([frames[0], (a.image, small[1], None)])


def test_grounded_relations_name_only_other_regions_of_the_frame_in_the_worlds_words(random_model_dir):
    """An untrained decoder says anything; grounded, every relative location is a side and the colour and category
    of another region of the frame, each one of the world's words, and a region alone in its frame has none. The
    other attributes asked with it are decoded as always."""
    from finecaption_ros.data.scenes import ALONE, CATEGORIES, COLORS, relation_phrases

    scene = SceneGenerator(split="eval", seed=31, min_objects=4, max_objects=5).sample()
    asked = ["color", "relative_location"]
    grounded = Captioner.from_pretrained(random_model_dir)
    free = Captioner.from_pretrained(random_model_dir, grounded_relations=False)
    assert grounded.grounded_relations and not free.grounded_relations
    results = grounded.caption(scene.image, scene.labels, task="attribute", attributes=asked)
    unconstrained = free.caption(scene.image, scene.labels, task="attribute", attributes=asked)
    names = [f"{c} {k}" for c in COLORS for k in CATEGORIES]
    relations = [r for r in results if r.attribute == "relative_location"]
    assert all(r.caption in relation_phrases(names) for r in relations), [r.caption for r in relations]
    assert [r.caption for r in relations] != [r.caption for r in unconstrained if r.attribute == "relative_location"]
    assert [r.caption for r in results if r.attribute == "color"] == \
        [r.caption for r in unconstrained if r.attribute == "color"]
    one = scene.labels == scene.objects[0].region_id
    assert grounded.caption(scene.image, [one], task="attribute", attributes=["relative_location"])[0].caption == ALONE


def test_grounded_relations_are_refused_for_a_model_that_phrases_relations_its_own_way(random_model_dir, tmp_path):
    from finecaption_ros.model.config import FineCaptionConfig
    from finecaption_ros.model.finecaption import FineCaptionModel, load_tokenizer

    config = FineCaptionConfig.load(random_model_dir)
    config.aux_classes, config.neighbor_names = {}, False  # as `finecaption train` makes a model of a dataset
    directory = tmp_path / "dataset_model"
    FineCaptionModel(config).save_pretrained(directory, load_tokenizer(random_model_dir))
    assert not Captioner.from_pretrained(directory).grounded_relations
    with pytest.raises(CaptionerInputError, match="grounded_relations=True needs a model of the synthetic world"):
        Captioner.from_pretrained(directory, grounded_relations=True)


def test_default_model_grounded_relations_beat_free_decoding_on_camera_frames(default_captioner):
    """Free decoding named neighbours the frame does not hold (mostly the held-out pairs); the README's camera
    suite has the rows; on these frames (the README's throwaway check) free decoding got 207 of 233 right, grounded
    220. Fixed frames, so the comparison is exact, not a sample."""
    from finecaption_ros.data.camera import Camera

    free = Captioner.from_pretrained(grounded_relations=False)
    generator = SceneGenerator(480, 640, split="eval", camera=Camera(), seed=777)
    right = {"grounded": 0, "free": 0}
    total = 0
    for _ in range(60):
        scene = generator.sample()
        truth = {o.region_id: o.relative_location for o in scene.objects}
        for name, captioner in (("grounded", default_captioner), ("free", free)):
            for r in captioner.caption(scene.image, scene.labels, task="attribute",
                                       attributes=["relative_location"]):
                right[name] += r.caption == truth[r.region_id]
        total += len(truth)
    assert right["grounded"] >= right["free"] + 0.03 * total, (right, total)
    assert right["grounded"] / total >= 0.9, (right, total)


def test_default_model_relations_name_a_colour_and_category_it_gives_another_region(default_captioner):
    from finecaption_ros.data.camera import Camera

    generator = SceneGenerator(480, 640, split="eval", camera=Camera(max_rotation=15.0), seed=778)
    for _ in range(6):
        scene = generator.sample()
        results = default_captioner.caption(scene.image, scene.labels, task="attribute",
                                            attributes=["color", "category", "relative_location"])
        answers = {(r.region_id, r.attribute): r.caption for r in results}
        for region in {r.region_id for r in results}:
            others = {f"{answers[(i, 'color')]} {answers[(i, 'category')]}" for i, a in answers
                      if a == "color" and i != region}
            assert answers[(region, "relative_location")].split(" the ", 1)[1] in others, (region, answers)
