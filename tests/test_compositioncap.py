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


# ---- untrusted files: paths, encodings, bombs, base64 -----------------------------------------------------------
@pytest.mark.parametrize("name", ["../outside/secret.png", "sub/../../secret.png", "/etc/hostname",
                                  "../../etc/hostname"])
def test_image_paths_stay_inside_the_image_root(tmp_path, name):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    _write_image(tmp_path / "outside" / "secret.png", (1, 2, 3))  # it exists: refused for its path, not absence
    records = [{"image": name, "global_caption": "x"}]
    with pytest.raises(CompositionCapFormatError, match=r"record 0: image path .* must be relative to the image "
                                                        r"root, without '\.\.'"):
        load_compositioncap(_write(tmp_path, records), root, check_images=False)


def test_non_image_files_are_one_format_error(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    for name in ("notes.png", "empty.png"):
        with pytest.raises(CompositionCapFormatError, match=rf"record 0: .*{name} is not an image that can be read"):
            load_compositioncap(_write(tmp_path, [{"image": name, "global_caption": "x"}]), tmp_path)
    # and the same when the load-time check is skipped and the image is first read for training
    records = load_compositioncap(_write(tmp_path, [{"image": "notes.png", "global_caption": "x"}]), tmp_path,
                                  check_images=False)
    with pytest.raises(CompositionCapFormatError, match="notes.png is not an image"):
        list(iter_training_samples(records))


def test_mask_size_is_checked_against_the_image_at_load(dataset, tmp_path):
    _, images, _ = dataset
    records = [{"image": "a.png", "height": H // 2, "width": W // 2,
                "regions": [{"mask": encode_mask(np.ones((H // 2, W // 2), bool)), "dense_caption": "x"}]}]
    with pytest.raises(CompositionCapFormatError, match=r"record 0, region 0: mask is 6x8 but image .* is 12x16"):
        load_compositioncap(_write(tmp_path, records), images)


def test_non_utf8_annotations_and_missing_files(tmp_path):
    latin1 = tmp_path / "latin1.json"
    text = json.dumps([{"image": "x.png", "global_caption": "caf\u00e9"}], ensure_ascii=False)
    latin1.write_bytes(text.encode("latin-1"))
    with pytest.raises(CompositionCapFormatError, match=r"latin1.json is not UTF-8 text \(byte 0xe9 at offset"):
        load_compositioncap(latin1, tmp_path)
    with pytest.raises(FileNotFoundError, match="annotation file .*nope.json does not exist"):
        load_compositioncap(tmp_path / "nope.json", tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a file"):
        load_compositioncap(tmp_path, tmp_path)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CompositionCapFormatError, match="nested too deeply"):
        load_compositioncap(deep, tmp_path)


def test_gzip_bomb_is_refused_without_inflating_it():
    import base64
    import gzip
    import tracemalloc

    bomb = base64.b64encode(gzip.compress(b"\x01" * (256 << 20), compresslevel=9)).decode()
    assert len(bomb) < 1 << 20  # about 350 KB of base64 that inflates to 256 MiB
    tracemalloc.start()
    try:
        with pytest.raises(CompositionCapFormatError, match=r"mask has more than 192 bytes but height x width"):
            decode_mask(bomb, H, W)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20  # the base64 and its bytes, nothing near the 256 MiB it would inflate to

    npy_bomb = base64.b64encode(gzip.compress(_npy_bytes(np.ones((H, W), np.uint8)) + b"\0" * (64 << 20))).decode()
    with pytest.raises(CompositionCapFormatError, match="holds more data than its header declares"):
        decode_mask(npy_bomb)
    huge_claim = encode_mask(np.ones((1, 1), bool))
    with pytest.raises(CompositionCapFormatError, match="more than the 67108864 this loader accepts"):
        decode_mask(huge_claim, 100_000, 100_000)
    huge_npy = base64.b64encode(gzip.compress(_npy_header((100_000, 100_000)))).decode()
    with pytest.raises(CompositionCapFormatError, match="more than the 67108864 this loader accepts"):
        decode_mask(huge_npy)


def _npy_bytes(array) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _npy_header(shape) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buf.getvalue()


@pytest.mark.parametrize("text,message", [
    ("!!!!", "not valid base64"),
    ("", "empty string, not base64"),
    ("   ", "empty string, not base64"),
    ("ab\u00e9c", "not valid base64"),
    ("aGVsbG8=", "not gzip data"),
])
def test_invalid_base64_is_named_as_such(text, message):
    with pytest.raises(CompositionCapFormatError, match=message):
        decode_mask(text, H, W)


def test_corrupt_gzip_and_npy_payloads():
    import base64
    import gzip

    whole = gzip.compress(np.ones((H, W), np.uint8).tobytes())
    with pytest.raises(CompositionCapFormatError, match="truncated"):
        decode_mask(base64.b64encode(whole[: len(whole) // 2]).decode(), H, W)
    pickled = base64.b64encode(gzip.compress(_npy_bytes(np.array([[{"a": 1}]], dtype=object)))).decode()
    with pytest.raises(CompositionCapFormatError, match="holds object values"):
        decode_mask(pickled)
    three_d = base64.b64encode(gzip.compress(_npy_bytes(np.ones((2, H, W), np.uint8)))).decode()
    with pytest.raises(CompositionCapFormatError, match="expected a 2-D HxW array"):
        decode_mask(three_d)
    # base64 wrapped over lines, as some writers do, still decodes
    wrapped = "\n".join(encode_mask(_mask(0, 0))[i:i + 8] for i in range(0, len(encode_mask(_mask(0, 0))), 8))
    assert np.array_equal(decode_mask(wrapped, H, W), _mask(0, 0))
