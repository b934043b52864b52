"""Loader for CompositionCap-style annotations, so the model can be trained on real images and masks.

Expected layout (one record per image; a `.jsonl` file holds one record per line, any other file is one JSON
document: a list of records, or an object holding that list under `fields.records`):

    {
      "image": "000123.jpg",                     # relative to image_root, or absolute
      "height": 480, "width": 640,               # needed for raw masks, unless the region carries them
      "global_caption": "a kitchen with ...",    # optional
      "regions": [
        {
          "id": 7,                               # optional; defaults to the region's position in the list
          "mask": "<base64 of gzip of a uint8 HxW array>",
          "attribute_captions": {"color": "light brown", "material": "wooden"},
          "dense_caption": "a light brown wooden chair ..."
        }
      ]
    }

The gzip payload is either the raw HxW bytes in C order (then height and width come from the region, or else
from the image record) or a complete `.npy` file (recognised by its `\\x93NUMPY` magic; its shape is used).
Any non-zero byte is inside the mask.

The released files' key names were not available when this was written, so every key is a field of
`CompositionCapFields`; if yours differ, map them, e.g.

    fields = CompositionCapFields(image="file_name", attributes="attributes", dense="region_caption")
    records = load_compositioncap("train.json", "images/", fields)

A region must hold at least one of the attribute / dense keys (their values may be empty), so that a wrong mapping
fails loudly instead of yielding no samples. `encode_mask` writes the raw form, for converting other datasets.

Masks stay encoded in memory and decode on each `region.mask` access: a dataset's worth of full-resolution
boolean masks would not fit in RAM. `load_compositioncap(check_masks=True)` decodes each once while loading so
that corrupt or mis-sized masks fail at startup with the record index; pass False to skip that on large files.
"""
from __future__ import annotations

import base64
import binascii
import gzip
import io
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from ..tasks import ATTRIBUTE_TASK, DENSE_TASK, GLOBAL_TASK, TASKS

_NPY_MAGIC = b"\x93NUMPY"


class CompositionCapFormatError(ValueError):
    pass


@dataclass(frozen=True)
class CompositionCapFields:
    """Key names in the annotation file; override any that your release spells differently."""
    image: str = "image"
    regions: str = "regions"
    mask: str = "mask"
    height: str = "height"  # looked up on the region first, then on the image record
    width: str = "width"
    attributes: str = "attribute_captions"  # an object {attribute name: caption}
    dense: str = "dense_caption"
    global_caption: str = "global_caption"
    region_id: str = "id"
    records: str = "annotations"  # where the record list sits when the file's top level is an object


def encode_mask(mask: np.ndarray, npy: bool = False) -> str:
    """HxW mask -> base64(gzip(uint8 bytes)); `npy=True` wraps the array as a .npy file instead of raw bytes."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be 2-D (HxW), got shape {mask.shape}")
    array = (mask != 0).astype(np.uint8)
    if npy:
        buf = io.BytesIO()
        np.save(buf, array)
        payload = buf.getvalue()
    else:
        payload = np.ascontiguousarray(array).tobytes()
    return base64.b64encode(gzip.compress(payload, mtime=0)).decode("ascii")


def decode_mask(b64: str, height: int | None = None, width: int | None = None) -> np.ndarray:
    """Inverse of `encode_mask`; returns a bool HxW array. Height and width are required for raw payloads and
    checked against the shape stored in .npy payloads."""
    try:
        payload = gzip.decompress(base64.b64decode(b64))
    except (binascii.Error, ValueError, TypeError) as err:
        raise CompositionCapFormatError(f"mask is not valid base64 ({err})") from err
    except (OSError, EOFError, zlib.error) as err:
        raise CompositionCapFormatError(f"mask is base64 but not gzip data ({err})") from err

    if payload.startswith(_NPY_MAGIC):
        try:
            array = np.load(io.BytesIO(payload), allow_pickle=False)
        except ValueError as err:
            raise CompositionCapFormatError(f"mask holds a corrupt .npy file ({err})") from err
        if array.ndim != 2:
            raise CompositionCapFormatError(f"mask .npy has shape {array.shape}; expected a 2-D HxW array")
        if height is not None and width is not None and array.shape != (height, width):
            raise CompositionCapFormatError(
                f"mask .npy has shape {array.shape} but the annotation says {height}x{width}")
        return array != 0

    if height is None or width is None:
        raise CompositionCapFormatError(
            "mask holds raw bytes, so its height and width are needed; set them on the region or the image "
            "record, or point CompositionCapFields.height/width at the keys your file uses")
    if len(payload) != height * width:
        raise CompositionCapFormatError(
            f"mask has {len(payload)} bytes but height x width = {height} x {width} = {height * width}; "
            "check the height/width fields (are they swapped, or the image's size rather than the mask's?)")
    return np.frombuffer(payload, dtype=np.uint8).reshape(height, width) != 0


@dataclass
class CompositionCapRegion:
    region_id: int | str
    encoded_mask: str
    height: int | None
    width: int | None
    attribute_captions: dict[str, str] = field(default_factory=dict)
    dense_caption: str | None = None
    record_index: int = -1  # position of the owning record in the file, for error messages

    @property
    def mask(self) -> np.ndarray:
        try:
            return decode_mask(self.encoded_mask, self.height, self.width)
        except CompositionCapFormatError as err:
            raise CompositionCapFormatError(
                f"record {self.record_index}, region {self.region_id!r}: {err}") from None


@dataclass
class CompositionCapRecord:
    image_path: Path
    regions: list[CompositionCapRegion] = field(default_factory=list)
    global_caption: str | None = None
    index: int = -1


def _read_raw_records(path: Path, fields: CompositionCapFields) -> list:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        rows = []
        for line_no, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise CompositionCapFormatError(f"{path}, line {line_no}: not valid JSON ({err})") from err
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise CompositionCapFormatError(
            f"{path}: not valid JSON ({err}); if it holds one record per line, name it *.jsonl") from err
    if isinstance(data, dict):
        if not isinstance(data.get(fields.records), list):
            raise CompositionCapFormatError(
                f"{path}: top level is an object without a record list under {fields.records!r} "
                f"(keys: {sorted(data)[:10]}); set CompositionCapFields.records")
        data = data[fields.records]
    if not isinstance(data, list):
        raise CompositionCapFormatError(f"{path}: expected a list of records, got {type(data).__name__}")
    return data


def _optional_int(value, what: str, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CompositionCapFormatError(f"{where}: {what} must be a positive integer, got {value!r}")
    return value


def _optional_text(value, what: str, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise CompositionCapFormatError(f"{where}: {what} must be a string, got {type(value).__name__}")
    return value.strip() or None


def _parse_region(raw, index: int, position: int, record: dict, fields: CompositionCapFields) -> CompositionCapRegion:
    where = f"record {index}, region {position}"
    if not isinstance(raw, dict):
        raise CompositionCapFormatError(f"{where}: expected an object, got {type(raw).__name__}")
    if fields.mask not in raw:
        raise CompositionCapFormatError(
            f"{where}: missing mask field {fields.mask!r} (region keys: {sorted(raw)}); "
            "set CompositionCapFields.mask to the key holding the base64 mask")
    if fields.attributes not in raw and fields.dense not in raw:
        raise CompositionCapFormatError(
            f"{where}: neither {fields.attributes!r} nor {fields.dense!r} is present (region keys: {sorted(raw)}); "
            "set CompositionCapFields.attributes / .dense to your caption keys")
    if not isinstance(raw[fields.mask], str):
        raise CompositionCapFormatError(f"{where}: mask must be a base64 string, got {type(raw[fields.mask]).__name__}")

    attributes = raw.get(fields.attributes) or {}
    if not isinstance(attributes, dict):
        raise CompositionCapFormatError(
            f"{where}: {fields.attributes!r} must be an object mapping attribute name to caption, "
            f"got {type(attributes).__name__}")
    captions = {}
    for name, caption in attributes.items():
        caption = _optional_text(caption, f"attribute caption {name!r}", where)
        if caption:  # an attribute left blank by the annotators is not a training target
            captions[str(name)] = caption

    # region size overrides image size: masks may be stored at their own resolution
    height = raw.get(fields.height, record.get(fields.height))
    width = raw.get(fields.width, record.get(fields.width))
    return CompositionCapRegion(
        region_id=raw.get(fields.region_id, position),
        encoded_mask=raw[fields.mask],
        height=_optional_int(height, fields.height, where),
        width=_optional_int(width, fields.width, where),
        attribute_captions=captions,
        dense_caption=_optional_text(raw.get(fields.dense), fields.dense, where),
        record_index=index,
    )


def load_compositioncap(annotation_path: str | Path, image_root: str | Path,
                        fields: CompositionCapFields = CompositionCapFields(),
                        check_masks: bool = True) -> list[CompositionCapRecord]:
    annotation_path, image_root = Path(annotation_path), Path(image_root)
    records = []
    for index, raw in enumerate(_read_raw_records(annotation_path, fields)):
        where = f"record {index}"
        if not isinstance(raw, dict):
            raise CompositionCapFormatError(f"{where}: expected an object, got {type(raw).__name__}")
        image = raw.get(fields.image)
        if not isinstance(image, str) or not image:
            raise CompositionCapFormatError(
                f"{where}: missing image field {fields.image!r} (record keys: {sorted(raw)}); "
                "set CompositionCapFields.image to the key holding the image file name")
        raw_regions = raw.get(fields.regions, [])
        if not isinstance(raw_regions, list):
            raise CompositionCapFormatError(f"{where}: {fields.regions!r} must be a list of regions")
        regions = [_parse_region(r, index, pos, raw, fields) for pos, r in enumerate(raw_regions)]
        if check_masks:
            for region in regions:
                region.mask  # decoding raises with the record index and region id
        records.append(CompositionCapRecord(
            image_path=image_root / image,  # an absolute `image` replaces image_root
            regions=regions,
            global_caption=_optional_text(raw.get(fields.global_caption), fields.global_caption, where),
            index=index,
        ))
    return records


def load_image(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"image {path} not found; check image_root and CompositionCapFields.image")
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def iter_training_samples(records: list[CompositionCapRecord], tasks: tuple[str, ...] = TASKS
                          ) -> Iterator[tuple[np.ndarray, np.ndarray | None, str, str | None, str]]:
    """Yield (image HxWx3 uint8, mask HxW bool or None, task, attribute or None, caption), one per caption.

    Each image is read once and shared by all of its samples; copy it before modifying it in place.
    """
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown tasks {sorted(unknown)}; choose from {TASKS}")
    for record in records:
        image = load_image(record.image_path)
        for region in record.regions:
            wanted = (ATTRIBUTE_TASK in tasks and region.attribute_captions) or \
                     (DENSE_TASK in tasks and region.dense_caption)
            if not wanted:
                continue
            mask = region.mask
            if mask.shape != image.shape[:2]:
                raise CompositionCapFormatError(
                    f"record {record.index}, region {region.region_id!r}: mask is {mask.shape[0]}x{mask.shape[1]} "
                    f"but image {record.image_path} is {image.shape[0]}x{image.shape[1]}; "
                    "masks must be stored at the image's resolution")
            if ATTRIBUTE_TASK in tasks:
                for attribute, caption in region.attribute_captions.items():
                    yield image, mask, ATTRIBUTE_TASK, attribute, caption
            if DENSE_TASK in tasks and region.dense_caption:
                yield image, mask, DENSE_TASK, None, region.dense_caption
        if GLOBAL_TASK in tasks and record.global_caption:
            yield image, None, GLOBAL_TASK, None, record.global_caption
