import json

import numpy as np
import pytest
from PIL import Image

from finecaption_ros.data.compositioncap import (
    CompositionCapFields,
    CompositionCapFormatError,
    decode_mask,
    encode_mask,
    iter_training_samples,
    load_compositioncap,
)

H, W = 12, 16


def _mask(top, left, size=4):
    m = np.zeros((H, W), dtype=bool)
    m[top:top + size, left:left + size] = True
    return m


def _write_image(path, color):
    Image.fromarray(np.full((H, W, 3), color, dtype=np.uint8)).save(path)


@pytest.fixture
def dataset(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    _write_image(images / "a.png", (255, 0, 0))
    _write_image(images / "b.png", (0, 0, 255))
    records = [
        {
            "image": "a.png", "height": H, "width": W, "global_caption": "a red picture",
            "regions": [
                {"id": 7, "mask": encode_mask(_mask(0, 0)),
                 "attribute_captions": {"color": "red", "material": "metal", "shape": ""},
                 "dense_caption": "a red metal box"},
                # a .npy payload carries its own shape (checked against the record's height/width)
                {"id": 8, "mask": encode_mask(_mask(5, 5), npy=True), "dense_caption": "a second box"},
            ],
        },
        {"image": "b.png", "height": H, "width": W, "regions": [
            {"mask": encode_mask(_mask(2, 8)), "attribute_captions": {"color": "blue"}}]},
    ]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(records))
    return ann, images, records


def test_mask_round_trip_raw_and_npy():
    rng = np.random.default_rng(0)
    mask = rng.random((H, W)) > 0.5
    assert np.array_equal(decode_mask(encode_mask(mask), H, W), mask)
    assert np.array_equal(decode_mask(encode_mask(mask, npy=True)), mask)
    assert decode_mask(encode_mask(mask), H, W).dtype == bool
    # any non-zero byte is foreground (some releases store 255)
    assert decode_mask(encode_mask(mask.astype(np.uint8) * 255), H, W).sum() == mask.sum()


def test_decode_mask_errors():
    with pytest.raises(CompositionCapFormatError, match=r"12 x 15 = 180"):
        decode_mask(encode_mask(_mask(0, 0)), H, W - 1)
    with pytest.raises(CompositionCapFormatError, match="height and width are needed"):
        decode_mask(encode_mask(_mask(0, 0)))
    with pytest.raises(CompositionCapFormatError, match="annotation says 12x15"):
        decode_mask(encode_mask(_mask(0, 0), npy=True), H, W - 1)
    with pytest.raises(CompositionCapFormatError, match="not gzip"):
        decode_mask("aGVsbG8=", H, W)  # base64 of "hello"
    with pytest.raises(CompositionCapFormatError, match="not valid base64"):
        decode_mask("abc", H, W)


def test_load_records(dataset):
    ann, images, _ = dataset
    records = load_compositioncap(ann, images)
    assert [r.image_path for r in records] == [images / "a.png", images / "b.png"]
    first = records[0]
    assert first.global_caption == "a red picture" and records[1].global_caption is None
    assert [r.region_id for r in first.regions] == [7, 8]
    assert records[1].regions[0].region_id == 0  # no id: position in the list
    assert first.regions[0].attribute_captions == {"color": "red", "material": "metal"}  # blank one dropped
    assert first.regions[1].attribute_captions == {} and first.regions[1].dense_caption == "a second box"
    assert np.array_equal(first.regions[0].mask, _mask(0, 0))
    assert np.array_equal(first.regions[1].mask, _mask(5, 5))


def test_jsonl_and_wrapped_object(dataset, tmp_path):
    ann, images, raw = dataset
    jsonl = tmp_path / "ann.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in raw) + "\n\n")
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"info": {}, "annotations": raw}))
    for path in (jsonl, wrapped):
        records = load_compositioncap(path, images)
        assert len(records) == 2 and len(records[0].regions) == 2


def test_custom_field_mapping(tmp_path):
    _write_image(tmp_path / "x.png", (0, 255, 0))
    record = {"file_name": "x.png", "objects": [
        {"segmentation": encode_mask(_mask(1, 1)), "h": H, "w": W, "attributes": {"color": "green"},
         "caption": "a green square", "region_id": "r1"}], "image_caption": "green"}
    ann = tmp_path / "custom.json"
    ann.write_text(json.dumps([record]))
    fields = CompositionCapFields(image="file_name", regions="objects", mask="segmentation", height="h", width="w",
                                  attributes="attributes", dense="caption", global_caption="image_caption",
                                  region_id="region_id")
    (rec,) = load_compositioncap(ann, tmp_path, fields)
    assert rec.regions[0].region_id == "r1" and rec.regions[0].dense_caption == "a green square"
    assert rec.global_caption == "green"
    with pytest.raises(CompositionCapFormatError, match="record 0: missing image field 'image'"):
        load_compositioncap(ann, tmp_path)


def _write(tmp_path, records, name="bad.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


def test_format_errors_name_record_and_fix(dataset, tmp_path):
    _, images, raw = dataset
    no_mask = [raw[0], {"image": "b.png", "regions": [{"dense_caption": "x"}]}]
    with pytest.raises(CompositionCapFormatError, match=r"record 1, region 0: missing mask field 'mask'.*CompositionCapFields.mask"):
        load_compositioncap(_write(tmp_path, no_mask), images)

    no_captions = [{"image": "b.png", "height": H, "width": W,
                    "regions": [{"mask": encode_mask(_mask(0, 0)), "caption": "x"}]}]
    with pytest.raises(CompositionCapFormatError, match=r"record 0, region 0: neither 'attribute_captions' nor 'dense_caption'"):
        load_compositioncap(_write(tmp_path, no_captions), images)

    bad_size = [raw[0], {"image": "b.png", "height": H, "width": W + 1,
                         "regions": [{"id": 3, "mask": encode_mask(_mask(0, 0)), "dense_caption": "x"}]}]
    with pytest.raises(CompositionCapFormatError, match=r"record 1, region 3: mask has 192 bytes but height x width"):
        load_compositioncap(_write(tmp_path, bad_size), images)
    # without the load-time check the same error surfaces when the mask is used
    records = load_compositioncap(_write(tmp_path, bad_size), images, check_masks=False)
    with pytest.raises(CompositionCapFormatError, match=r"record 1, region 3"):
        records[1].regions[0].mask

    no_size = [{"image": "b.png", "regions": [{"mask": encode_mask(_mask(0, 0)), "dense_caption": "x"}]}]
    with pytest.raises(CompositionCapFormatError, match=r"record 0, region 0: .*CompositionCapFields.height/width"):
        load_compositioncap(_write(tmp_path, no_size), images)

    bad_attrs = [{"image": "b.png", "height": H, "width": W,
                  "regions": [{"mask": encode_mask(_mask(0, 0)), "attribute_captions": ["red"]}]}]
    with pytest.raises(CompositionCapFormatError, match="must be an object mapping attribute name"):
        load_compositioncap(_write(tmp_path, bad_attrs), images)

    with pytest.raises(CompositionCapFormatError, match="record list under 'annotations'"):
        load_compositioncap(_write(tmp_path, {"images": raw}), images)

    not_json = tmp_path / "lines.json"
    not_json.write_text(json.dumps(raw[0]) + "\n" + json.dumps(raw[1]))
    with pytest.raises(CompositionCapFormatError, match=r"name it \*\.jsonl"):
        load_compositioncap(not_json, images)


def test_error_is_a_value_error():
    assert issubclass(CompositionCapFormatError, ValueError)


def test_iter_training_samples(dataset):
    ann, images, _ = dataset
    samples = list(iter_training_samples(load_compositioncap(ann, images)))
    summary = [(task, attr, cap) for _, _, task, attr, cap in samples]
    assert summary == [
        ("attribute", "color", "red"),
        ("attribute", "material", "metal"),
        ("dense", None, "a red metal box"),
        ("dense", None, "a second box"),
        ("global", None, "a red picture"),
        ("attribute", "color", "blue"),
    ]
    image, mask, *_ = samples[0]
    assert image.shape == (H, W, 3) and image.dtype == np.uint8 and tuple(image[0, 0]) == (255, 0, 0)
    assert mask.dtype == bool and np.array_equal(mask, _mask(0, 0))
    assert samples[4][1] is None  # global caption has no mask
    assert tuple(samples[5][0][0, 0]) == (0, 0, 255) and np.array_equal(samples[5][1], _mask(2, 8))

    only_global = list(iter_training_samples(load_compositioncap(ann, images), tasks=("global",)))
    assert [s[2] for s in only_global] == ["global"]
    with pytest.raises(ValueError, match="unknown tasks"):
        list(iter_training_samples([], tasks=("caption",)))


def test_iter_converts_to_rgb_and_checks_sizes(tmp_path):
    Image.fromarray(np.full((H, W), 128, dtype=np.uint8), mode="L").save(tmp_path / "gray.png")
    records = [{"image": "gray.png", "height": H, "width": W,
                "regions": [{"mask": encode_mask(_mask(0, 0)), "dense_caption": "grey"}]}]
    (sample,) = iter_training_samples(load_compositioncap(_write(tmp_path, records, "g.json"), tmp_path))
    assert sample[0].shape == (H, W, 3)

    small = [{"image": "gray.png", "height": H // 2, "width": W // 2,
              "regions": [{"mask": encode_mask(np.ones((H // 2, W // 2), bool)), "dense_caption": "grey"}]}]
    with pytest.raises(CompositionCapFormatError, match=r"record 0, region 0: mask is 6x8 but image .* is 12x16"):
        list(iter_training_samples(load_compositioncap(_write(tmp_path, small, "s.json"), tmp_path)))

    missing = [{"image": "nope.png", "global_caption": "x"}]
    with pytest.raises(FileNotFoundError, match="check image_root"):
        list(iter_training_samples(load_compositioncap(_write(tmp_path, missing, "m.json"), tmp_path)))
