"""Loader for CompositionCap-style annotations, so the model can be trained on real images and masks.

Expected layout (one record per image; a `.jsonl` file holds one record per line, any other file is one JSON
document: a list of records, or an object holding that list under `fields.records`):

    {
      "image": "000123.jpg",                     # relative to image_root (no absolute paths, no "..")
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
boolean masks would not fit in RAM. `load_compositioncap(check_masks=True, check_images=True)` decodes each mask
once and reads each image's header while loading, so that corrupt, missing or mis-sized files fail at startup with
the record index; pass False to skip either on large files.

The files are untrusted input: image paths stay inside image_root, a mask is inflated to at most the size its
height x width (or its .npy header) allows, and every problem is a CompositionCapFormatError naming the record
(a missing image: FileNotFoundError).
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
_NPY_HEADER_MAX = 1 << 16  # numpy itself refuses .npy headers over 10 000 bytes
MAX_MASK_PIXELS = 1 << 26  # 8192 x 8192: a mask claiming more is refused before it is inflated


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


def _b64decode(b64: str) -> bytes:
    text = "".join(b64.split())  # some writers wrap long base64 lines
    if not text:
        raise CompositionCapFormatError("mask is an empty string, not base64 of gzip data")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:  # a non-ASCII string is a ValueError
        raise CompositionCapFormatError(f"mask is not valid base64 ({err})") from None


def _gunzip(data: bytes, limit: int) -> bytes:
    """Inflate gzip `data` (one member or several) to at most `limit` + 1 bytes: a longer result means a longer
    payload, found without inflating it all (a small mask can inflate to gigabytes)."""
    out = bytearray()
    try:
        while True:
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # 16: gzip header and trailer
            out += inflater.decompress(data, limit + 1 - len(out))  # never 0 here, which would mean no limit
            if len(out) > limit:
                return bytes(out)
            if not inflater.eof:
                raise CompositionCapFormatError("mask's gzip data is truncated")
            data = inflater.unused_data
            if not data:
                return bytes(out)
    except zlib.error as err:
        raise CompositionCapFormatError(f"mask is base64 but not gzip data ({err})") from None


def _npy_size(head: bytes, height: int | None, width: int | None) -> int:
    """Bytes of the whole .npy payload, from its header, after checking the shape it declares."""
    stream = io.BytesIO(head)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        version = np.lib.format.read_magic(stream)
        if version not in readers:
            raise ValueError(f".npy format version {version} is not supported; save it with np.save")
        shape, _, dtype = readers[version](stream)
    except (ValueError, SyntaxError, EOFError) as err:
        raise CompositionCapFormatError(f"mask holds a corrupt .npy file ({err})") from None
    if len(shape) != 2:
        raise CompositionCapFormatError(f"mask .npy has shape {shape}; expected a 2-D HxW array")
    if height is not None and width is not None and tuple(shape) != (height, width):
        raise CompositionCapFormatError(f"mask .npy has shape {tuple(shape)} but the annotation says {height}x{width}")
    if dtype.hasobject or dtype.kind not in "biu":
        raise CompositionCapFormatError(f"mask .npy holds {dtype} values; expected integers or bools")
    _check_pixels(shape[0], shape[1])
    return stream.tell() + shape[0] * shape[1] * dtype.itemsize


def _check_pixels(height: int, width: int) -> None:
    if height * width > MAX_MASK_PIXELS:
        raise CompositionCapFormatError(f"mask is {height}x{width} = {height * width} pixels, more than the "
                                        f"{MAX_MASK_PIXELS} this loader accepts")


def decode_mask(b64: str, height: int | None = None, width: int | None = None) -> np.ndarray:
    """Inverse of `encode_mask`; returns a bool HxW array. Height and width are required for raw payloads and
    checked against the shape stored in .npy payloads."""
    if not isinstance(b64, str):
        raise CompositionCapFormatError(f"mask must be a base64 string, got {type(b64).__name__}")
    data = _b64decode(b64)
    head = _gunzip(data, _NPY_HEADER_MAX)
    if head.startswith(_NPY_MAGIC):
        size = _npy_size(head, height, width)
        payload = _gunzip(data, size)
        if len(payload) != size:
            raise CompositionCapFormatError(f"mask .npy holds {'more' if len(payload) > size else 'less'} data than "
                                            "its header declares")
        return np.load(io.BytesIO(payload), allow_pickle=False) != 0

    if height is None or width is None:
        raise CompositionCapFormatError(
            "mask holds raw bytes, so its height and width are needed; set them on the region or the image "
            "record, or point CompositionCapFields.height/width at the keys your file uses")
    _check_pixels(height, width)
    payload = _gunzip(data, height * width)
    if len(payload) != height * width:
        got = f"{len(payload)} bytes" if len(payload) < height * width else f"more than {height * width} bytes"
        raise CompositionCapFormatError(
            f"mask has {got} but height x width = {height} x {width} = {height * width}; "
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


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist" if not path.exists()
                                else f"annotation file {path} is not a file")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")  # -sig: a byte-order mark some editors write is not part of the JSON
    except UnicodeDecodeError as err:
        raise CompositionCapFormatError(
            f"{path} is not UTF-8 text (byte {data[err.start]:#04x} at offset {err.start}); annotation files are "
            "UTF-8 JSON: convert it, e.g. with iconv -t UTF-8") from None


def _parse_json(text: str, where: str, hint: str = ""):
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise CompositionCapFormatError(f"{where}: not valid JSON ({err}){hint}") from None
    except RecursionError:
        raise CompositionCapFormatError(f"{where}: not valid JSON (nested too deeply){hint}") from None


def _read_raw_records(path: Path, fields: CompositionCapFields) -> list:
    text = _read_text(path)
    if path.suffix == ".jsonl":
        rows = []
        for line_no, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                rows.append(_parse_json(line, f"{path}, line {line_no}"))
        return rows
    data = _parse_json(text, str(path), "; if it holds one record per line, name it *.jsonl")
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
            f"{where}: missing mask field {fields.mask!r} (region keys: {sorted(raw)[:10]}); "
            "set CompositionCapFields.mask to the key holding the base64 mask")
    if fields.attributes not in raw and fields.dense not in raw:
        raise CompositionCapFormatError(
            f"{where}: neither {fields.attributes!r} nor {fields.dense!r} is present "
            f"(region keys: {sorted(raw)[:10]}); "
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
    region_id = raw.get(fields.region_id, position)
    if isinstance(region_id, bool) or not isinstance(region_id, (int, str)):
        raise CompositionCapFormatError(f"{where}: {fields.region_id!r} must be an integer or a string, got "
                                        f"{type(region_id).__name__}")
    return CompositionCapRegion(
        region_id=region_id,
        encoded_mask=raw[fields.mask],
        height=_optional_int(height, fields.height, where),
        width=_optional_int(width, fields.width, where),
        attribute_captions=captions,
        dense_caption=_optional_text(raw.get(fields.dense), fields.dense, where),
        record_index=index,
    )


def _image_path(image: str, image_root: Path, where: str) -> Path:
    """The record's image inside image_root: a file name from an annotation file must not reach outside it."""
    relative = Path(image)
    if relative.is_absolute() or ".." in relative.parts or "\0" in image:
        raise CompositionCapFormatError(
            f"{where}: image path {image!r:.120} must be relative to the image root, without '..' (or a NUL); "
            "put the images under --image-root and name them relative to it")
    return image_root / relative


def load_compositioncap(annotation_path: str | Path, image_root: str | Path,
                        fields: CompositionCapFields = CompositionCapFields(),
                        check_masks: bool = True, check_images: bool = True) -> list[CompositionCapRecord]:
    annotation_path, image_root = Path(annotation_path), Path(image_root)
    records = []
    for index, raw in enumerate(_read_raw_records(annotation_path, fields)):
        where = f"record {index}"
        if not isinstance(raw, dict):
            raise CompositionCapFormatError(f"{where}: expected an object, got {type(raw).__name__}")
        image = raw.get(fields.image)
        if not isinstance(image, str) or not image:
            raise CompositionCapFormatError(
                f"{where}: missing image field {fields.image!r} (record keys: {sorted(raw)[:10]}); "
                "set CompositionCapFields.image to the key holding the image file name")
        raw_regions = raw.get(fields.regions, [])
        if not isinstance(raw_regions, list):
            raise CompositionCapFormatError(f"{where}: {fields.regions!r} must be a list of regions")
        regions = [_parse_region(r, index, pos, raw, fields) for pos, r in enumerate(raw_regions)]
        image_path = _image_path(image, image_root, where)
        # Read the image's header and decode each mask once now, so that a missing, non-image or mis-sized file
        # fails at startup with its record, not mid-training.
        size = _image_size(image_path, where) if check_images else None
        for region in regions if check_masks else ():
            shape = region.mask.shape  # decoding raises with the record index and region id
            if size is not None and shape != size:
                raise CompositionCapFormatError(
                    f"{where}, region {region.region_id!r}: mask is {shape[0]}x{shape[1]} but image {image_path} "
                    f"is {size[0]}x{size[1]}; masks must be stored at the image's resolution")
        records.append(CompositionCapRecord(
            image_path=image_path,
            regions=regions,
            global_caption=_optional_text(raw.get(fields.global_caption), fields.global_caption, where),
            index=index,
        ))
    return records


def _open_image(path: Path, where: str) -> Image.Image:
    if not path.is_file():
        raise FileNotFoundError(f"{where}: image {path} not found; check image_root and CompositionCapFields.image")
    try:
        return Image.open(path)
    # PIL reports a file it cannot read as any of these, and a decompression bomb with its own error.
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as err:
        raise CompositionCapFormatError(f"{where}: {path} is not an image that can be read ({err})") from None


def _image_size(path: Path, where: str) -> tuple[int, int]:
    with _open_image(path, where) as img:
        return img.height, img.width


def load_image(path: Path, where: str = "image") -> np.ndarray:
    with _open_image(path, where) as img:
        try:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as err:
            raise CompositionCapFormatError(f"{where}: {path} is not an image that can be read ({err})") from None


def iter_training_samples(records: list[CompositionCapRecord], tasks: tuple[str, ...] = TASKS
                          ) -> Iterator[tuple[np.ndarray, np.ndarray | None, str, str | None, str]]:
    """Yield (image HxWx3 uint8, mask HxW bool or None, task, attribute or None, caption), one per caption.

    Each image is read once and shared by all of its samples; copy it before modifying it in place.
    """
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown tasks {sorted(unknown)}; choose from {TASKS}")
    for record in records:
        image = load_image(record.image_path, f"record {record.index}")
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
