"""From decoded (or raw) image + mask pairs to region captions: region selection, caption reuse and the captioner
call. rclpy-free; the node turns the result into messages. Thread-safe: at most `concurrency` captioner calls run
at once (the node's inference workers).

Several frames (one per camera) go through one captioner call: each keeps its own region selection, reuse (keyed
by its source: the camera) and neighbours; only the decode is shared. A frame that fails fails alone. Tasks and
attributes are checked by the captioner (its CaptionerInputError becomes a FrameError here), the parameters by
params.py."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from ..results import RegionCaption
from ..tasks import ATTRIBUTE_TASK, GLOBAL_TASK
from .errors import FrameError
from .image_codec import decode_image, decode_mask
from .params import param_default
from .regions import bbox_of, keep_only, select_regions
from .reuse import CaptionReuse


@dataclass
class FrameResult:
    captions: list[RegionCaption]
    image: np.ndarray
    labels: np.ndarray | None
    decode_s: float = 0.0
    inference_s: float = 0.0  # the captioner call this frame was part of
    select_s: float = 0.0
    problems: list[tuple[str, str, int]] = field(default_factory=list)  # (counter, log line, count)
    reused: int = 0
    computed: int = 0


@dataclass
class PipelineConfig:  # the node's parameters of the same names (their defaults live in params.py)
    task: str = param_default("task")
    attributes: tuple[str, ...] = tuple(param_default("attributes"))
    max_regions: int = param_default("max_regions")
    min_region_area: int = param_default("min_region_area")
    max_new_tokens: int = param_default("max_new_tokens")
    max_image_pixels: int = param_default("max_image_pixels")
    caption_reuse: bool = param_default("caption_reuse")
    reuse_iou_threshold: float = param_default("reuse_iou_threshold")
    reuse_pixel_threshold: float = param_default("reuse_pixel_threshold")
    reuse_max_age: float = param_default("reuse_max_age")

    @classmethod
    def from_params(cls, values: dict) -> PipelineConfig:
        kwargs = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        if "attributes" in kwargs:
            kwargs["attributes"] = tuple(kwargs["attributes"])
        return cls(**kwargs)


@dataclass
class _Work:  # one frame between region selection and the captioner's answer
    result: FrameResult
    ids: list[int]
    masks: dict[int, np.ndarray]
    reused: dict[tuple[int, str], RegionCaption]
    compute: list[int]
    source: str = ""
    model_masks: np.ndarray | None = None
    only: list[int] | None = None


@dataclass
class Batch:  # frames between `begin` and `finish`
    config: PipelineConfig
    task: str
    attrs: tuple
    use_reuse: bool
    now_s: float
    works: list[_Work]
    call: object = None  # the captioner's submitted call (see CaptionerProcess.submit)
    started: float | None = None
    outputs: dict | None = None
    slots: list | None = None  # begin_messages: every pair's decoded frame or FrameError, in order
    decode_s: list = field(default_factory=list)


class CaptionPipeline:
    def __init__(self, captioner, config: PipelineConfig | None = None, concurrency: int = 1):
        self.captioner = captioner
        self.reuse = CaptionReuse()
        self.config = config or PipelineConfig()
        self.reuse.set_limits(self.config)
        self._model_lock = threading.BoundedSemaphore(concurrency)
        self._config_lock = threading.Lock()

    def configure(self, config: PipelineConfig) -> None:
        with self._config_lock:
            old, self.config = self.config, config
            self.reuse.set_limits(config)
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

    def process_messages(self, image_msg, mask_msg, **options) -> FrameResult:
        """One frame from its messages; raises FrameError. Options as process_batch's."""
        return _raised(self.process_message_batch([(image_msg, mask_msg)], **options)[0])

    def process(self, image: np.ndarray, labels: np.ndarray | None, **options) -> FrameResult:
        """One decoded frame; raises FrameError. Options as process_batch's."""
        return _raised(self.process_batch([(image, labels)], **options)[0])

    def process_message_batch(self, pairs, task: str | None = None, **options) -> list[FrameResult | FrameError]:
        """(image message, mask message) pairs -> one FrameResult, or the FrameError that refused it, per pair."""
        return self.finish(self.wait(self.begin_messages(pairs, task, **options)))

    def process_batch(self, frames, task: str | None = None, **options) -> list[FrameResult | FrameError]:
        """(image, labels) frames (from `sources`, default all "") -> one FrameResult, or the FrameError that refused
        it, per frame; the regions still to caption of all frames go to the captioner in one call."""
        return self.finish(self.wait(self.begin(frames, task, **options)))

    # A batch in three steps, so that a worker can hand the captioner its next frames between `wait` (the model's
    # answer is back: the model is idle from here) and `finish` (assembling and publishing this batch's captions).
    def begin_messages(self, pairs, task: str | None = None, **options) -> Batch:
        """Decode (image message, mask message) pairs and `begin` the batch; a pair that fails to decode keeps its
        FrameError in its place."""
        task, sources = task or self.config.task, options.pop("sources", None) or [""] * len(pairs)
        decoded, decode_s = [], []
        for image_msg, mask_msg in pairs:
            t0 = time.perf_counter()
            try:
                decoded.append(self.decode(image_msg, mask_msg, task))
            except FrameError as err:
                decoded.append(err)
            decode_s.append(time.perf_counter() - t0)
        ok = [k for k, d in enumerate(decoded) if not isinstance(d, FrameError)]
        batch = self.begin([decoded[k] for k in ok], task, sources=[sources[k] for k in ok], **options)
        batch.slots, batch.decode_s = decoded, decode_s
        return batch

    def begin(self, frames, task: str | None = None, attributes=None, use_reuse: bool = True,
              now_s: float | None = None, sources=None) -> Batch:
        """Select the regions of every frame and hand the ones to compute to the captioner: a captioner with
        `submit` (the child process) starts on them at once; any other is called in `wait`."""
        with self._config_lock:
            config = self.config
        task = task or config.task
        attrs = (tuple(attributes) if attributes else config.attributes) if task == ATTRIBUTE_TASK else ("",)
        use_reuse = use_reuse and config.caption_reuse
        now_s = time.monotonic() if now_s is None else now_s
        works = [self._select(config, image, labels, task, attrs, use_reuse, now_s, source)
                 for (image, labels), source in zip(frames, sources or [""] * len(frames))]
        batch = Batch(config, task, attrs, use_reuse, now_s, works)
        computed = [w for w in works if w.compute]
        submit = getattr(self.captioner, "submit", None)
        if computed and submit is not None:
            batch.started = time.perf_counter()
            batch.call = submit(*self._call_args(config, computed, task, attrs))
        return batch

    def wait(self, batch: Batch) -> Batch:
        """The captioner's answer for the batch (blocks until it is there)."""
        if batch.outputs is None:
            batch.outputs = self._caption(batch.config, [w for w in batch.works if w.compute], batch.task,
                                          batch.attrs, batch.call, batch.started)
        return batch

    def finish(self, batch: Batch) -> list[FrameResult | FrameError]:
        """The batch's FrameResults (its FrameErrors in their places), once `wait` has its answer."""
        outputs, results = batch.outputs or {}, []
        for work in batch.works:
            out = outputs.get(id(work), [])
            if isinstance(out, FrameError):
                results.append(out)
                continue
            computed = {(c.region_id, c.attribute): c for c in out}  # the captioner's own results, as they are
            for c in out if batch.use_reuse else ():
                if c.region_id in work.masks:
                    self.reuse.store((work.source, c.region_id, batch.task, c.attribute), work.masks[c.region_id],
                                     work.result.image, c, batch.now_s)
            work.result.captions = [item for i in work.ids for a in batch.attrs
                                    if (item := work.reused.get((i, a)) or computed.get((i, a))) is not None]
            work.result.reused, work.result.computed = len(work.reused), len(computed)
            results.append(work.result)
        if batch.use_reuse:
            self.reuse.prune(batch.now_s)
        if batch.slots is None:
            return results
        outs = iter(results)
        merged = [d if isinstance(d, FrameError) else next(outs) for d in batch.slots]
        for result, seconds in zip(merged, batch.decode_s):
            if isinstance(result, FrameResult):
                result.decode_s = seconds
        return merged

    def _select(self, config, image, labels, task, attrs, use_reuse, now_s, source) -> _Work:
        t0 = time.perf_counter()
        result = FrameResult([], image, labels)
        h, w = image.shape[:2]
        if task == GLOBAL_TASK:
            ids, areas, masks, selection = [0], {0: h * w}, {0: np.ones((h, w), dtype=bool)}, None
        else:
            selection = select_regions(labels, config.min_region_area, config.max_regions)
            result.problems = selection.problems(config.min_region_area, config.max_regions)
            ids, areas = selection.ids, selection.areas
            masks = {i: labels == i for i in ids}
        # Caption reuse: a region is recomputed when any of its captions cannot be reused.
        reused, compute = {}, []
        for region_id in ids:
            hits = {}
            for attr in attrs if use_reuse else ():
                decision = self.reuse.check((source, region_id, task, attr), masks[region_id], image, now_s)
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
        work = _Work(result, ids, masks, reused, compute, source)
        if compute and task == GLOBAL_TASK:
            work.model_masks = np.ones((h, w), dtype=np.int32)
        elif compute:  # every selected region goes in, reused ones too: they are the recomputed ones' neighbours
            work.model_masks = labels if len(ids) == selection.present else keep_only(labels, ids)
            work.only = compute if len(compute) < len(ids) else None
        result.select_s = time.perf_counter() - t0
        return work

    @staticmethod
    def _call_args(config, works: list[_Work], task, attrs) -> tuple:
        return ([(w.result.image, w.model_masks, w.only) for w in works], task,
                list(attrs) if task == ATTRIBUTE_TASK else None, config.max_new_tokens)

    def _caption(self, config, works: list[_Work], task, attrs, call=None,
                 started: float | None = None) -> dict[int, list | FrameError]:
        """{id(work): its captions, or the FrameError the captioner raised for it}; `call` is the submitted call to
        collect, if any. A batch the captioner refuses is retried frame by frame, so one bad frame does not cost the
        others their captions."""
        if not works:
            return {}
        t1 = time.perf_counter() if started is None else started
        try:
            if call is not None:
                outputs = call.result()
            else:
                frames, task, attributes, max_new_tokens = self._call_args(config, works, task, attrs)
                with self._model_lock:
                    outputs = self.captioner.caption_frames(frames, task=task, attributes=attributes,
                                                            max_new_tokens=max_new_tokens)
        except ValueError as err:  # CaptionerInputError is a ValueError
            if len(works) > 1:
                return {k: v for w in works for k, v in self._caption(config, [w], task, attrs).items()}
            return {id(works[0]): FrameError("captioner_error", f"captioner refused the frame: {err}")}
        for work in works:
            work.result.inference_s = time.perf_counter() - t1  # the frames of one call share its time
        return {id(w): out for w, out in zip(works, outputs)}


def _raised(out: FrameResult | FrameError) -> FrameResult:
    if isinstance(out, FrameError):
        raise out
    return out
