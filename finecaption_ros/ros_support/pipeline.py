"""From a decoded (or raw) image + mask pair to region captions: region selection, caption reuse and the captioner
call. rclpy-free; the node turns the result into messages. Thread-safe: one captioner call at a time."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from ..results import RegionCaption
from ..tasks import ATTRIBUTE_TASK, GLOBAL_TASK, TASKS
from .errors import FrameError
from .image_codec import decode_image, decode_mask
from .regions import bbox_of, keep_only, select_regions
from .reuse import CaptionReuse


@dataclass
class FrameResult:
    captions: list[RegionCaption]
    image: np.ndarray
    labels: np.ndarray | None
    decode_s: float = 0.0
    inference_s: float = 0.0
    select_s: float = 0.0
    problems: list[tuple[str, str, int]] = field(default_factory=list)  # (counter, log line, count)
    reused: int = 0
    computed: int = 0


@dataclass
class PipelineConfig:
    task: str = "dense"
    attributes: tuple[str, ...] = ("color", "category")
    max_regions: int = 16
    min_region_area: int = 16
    max_new_tokens: int = 0
    max_image_pixels: int = 3840 * 2160 * 2
    caption_reuse: bool = True
    reuse_iou_threshold: float = 0.9
    reuse_pixel_threshold: float = 4.0
    reuse_max_age: float = 10.0

    @classmethod
    def from_params(cls, values: dict) -> PipelineConfig:
        names = cls.__dataclass_fields__
        kwargs = {k: v for k, v in values.items() if k in names}
        if "attributes" in kwargs:
            kwargs["attributes"] = tuple(kwargs["attributes"])
        return cls(**kwargs)


class CaptionPipeline:
    def __init__(self, captioner, config: PipelineConfig | None = None):
        self.captioner = captioner
        self.config = config or PipelineConfig()
        self.reuse = CaptionReuse()
        self._apply_reuse_config()
        self._model_lock = threading.Lock()
        self._config_lock = threading.Lock()

    def _apply_reuse_config(self) -> None:
        c = self.config
        self.reuse.iou_threshold = c.reuse_iou_threshold
        self.reuse.pixel_threshold = c.reuse_pixel_threshold
        self.reuse.max_age_s = c.reuse_max_age

    def configure(self, config: PipelineConfig) -> None:
        with self._config_lock:
            old = self.config
            self.config = config
            self._apply_reuse_config()
            if (old.task, old.attributes, old.max_new_tokens) != (config.task, config.attributes,
                                                                   config.max_new_tokens) or not config.caption_reuse:
                self.reuse.clear()

    def decode(self, image_msg, mask_msg, task: str) -> tuple[np.ndarray, np.ndarray | None]:
        limit = self.config.max_image_pixels
        image = decode_image(image_msg, limit)
        if task == GLOBAL_TASK and (mask_msg is None or mask_msg.width * mask_msg.height == 0):
            return image, None
        labels = decode_mask(mask_msg, limit)
        if labels.shape != image.shape[:2]:
            raise FrameError("size_mismatch", f"image is {image.shape[1]}x{image.shape[0]} but mask is "
                                              f"{labels.shape[1]}x{labels.shape[0]}; frame skipped")
        return image, labels

    def process_messages(self, image_msg, mask_msg, task: str | None = None, attributes=None,
                         use_reuse: bool = True, now_s: float | None = None) -> FrameResult:
        t0 = time.perf_counter()
        task = task or self.config.task
        image, labels = self.decode(image_msg, mask_msg, task)
        decode_s = time.perf_counter() - t0
        result = self.process(image, labels, task, attributes, use_reuse, now_s)
        result.decode_s = decode_s
        return result

    def process(self, image: np.ndarray, labels: np.ndarray | None, task: str | None = None, attributes=None,
                use_reuse: bool = True, now_s: float | None = None) -> FrameResult:
        with self._config_lock:
            config = self.config
        task = task or config.task
        if task not in TASKS:
            raise FrameError("bad_request", f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        attrs = tuple(attributes) if attributes else config.attributes
        if task != ATTRIBUTE_TASK:
            attrs = ("",)
        elif not attrs:
            raise FrameError("bad_request", "task 'attribute' needs attribute names")
        else:
            known = tuple(getattr(self.captioner, "supported_attributes", ()) or ())
            unknown = [a for a in attrs if known and a not in known]
            if unknown:
                raise FrameError("bad_request", f"unknown attribute(s) {', '.join(map(repr, unknown))}; this model "
                                                f"knows {', '.join(known)}")
        use_reuse = use_reuse and config.caption_reuse
        now_s = time.monotonic() if now_s is None else now_s
        t0 = time.perf_counter()
        result = FrameResult([], image, labels)
        h, w = image.shape[:2]

        if task == GLOBAL_TASK:
            masks = {0: np.ones((h, w), dtype=bool)}
            areas = {0: h * w}
            ids = [0]
        else:
            selection = select_regions(labels, config.min_region_area, config.max_regions)
            if not selection.areas:
                result.problems.append(("empty_masks", "mask has no regions (all background); nothing to caption", 1))
            if selection.below_min_area:
                result.problems.append((
                    "regions_below_min_area",
                    f"{len(selection.below_min_area)} region(s) smaller than min_region_area = "
                    f"{config.min_region_area} px skipped (ids {_ids(selection.below_min_area)})",
                    len(selection.below_min_area)))
            if selection.over_limit:
                result.problems.append((
                    "regions_over_limit",
                    f"{selection.present - len(selection.below_min_area)} regions is more than max_regions = "
                    f"{config.max_regions}; the {len(selection.over_limit)} smallest skipped "
                    f"(ids {_ids(selection.over_limit)})", len(selection.over_limit)))
            ids = selection.ids
            areas = selection.areas
            masks = {i: labels == i for i in ids}

        # Caption reuse: a region is recomputed when any of its captions cannot be reused.
        reused: dict[tuple[int, str], RegionCaption] = {}
        compute: list[int] = []
        for region_id in ids:
            hits = {}
            if use_reuse:
                for attr in attrs:
                    decision = self.reuse.check((region_id, task, attr), masks[region_id], image, now_s)
                    if decision.result is None:
                        break
                    hits[attr] = decision.result
            if use_reuse and len(hits) == len(attrs):
                box = (0, 0, w, h) if region_id == 0 else bbox_of(masks[region_id])
                for attr, old in hits.items():
                    reused[(region_id, attr)] = RegionCaption(region_id, task, attr, old.caption, old.confidence,
                                                              box, areas[region_id], reused=True)
            else:
                compute.append(region_id)
        result.select_s = time.perf_counter() - t0

        computed: dict[tuple[int, str], RegionCaption] = {}
        if compute:
            if task == GLOBAL_TASK:
                model_masks, only = np.ones((h, w), dtype=np.int32), None
            else:
                # Every selected region goes in, reused ones too: they are the recomputed regions' neighbours.
                model_masks = labels if len(ids) == selection.present else keep_only(labels, ids)
                only = compute if len(compute) < len(ids) else None
            t1 = time.perf_counter()
            try:
                with self._model_lock:
                    outputs = self.captioner.caption(
                        image, model_masks, task=task,
                        attributes=list(attrs) if task == ATTRIBUTE_TASK else None,
                        max_new_tokens=config.max_new_tokens or None, region_ids=only)
            except ValueError as err:  # CaptionerInputError is a ValueError
                raise FrameError("captioner_error", f"captioner refused the frame: {err}") from err
            result.inference_s = time.perf_counter() - t1
            for out in outputs:  # the captioner's own results, used as they are
                computed[(out.region_id, out.attribute)] = out
                if use_reuse and out.region_id in masks:
                    self.reuse.store((out.region_id, task, out.attribute), masks[out.region_id], image, out, now_s)
        if use_reuse:
            self.reuse.prune(now_s)

        for region_id in ids:
            for attr in attrs:
                item = reused.get((region_id, attr)) or computed.get((region_id, attr))
                if item is not None:
                    result.captions.append(item)
        result.reused = len(reused)
        result.computed = len(computed)
        return result


def _ids(ids: list[int], limit: int = 8) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")
