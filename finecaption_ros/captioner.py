"""The captioner API: an image plus region masks in, one caption per region (and per attribute asked) out.

Efficient by construction: the high-res encoding of a frame runs once and every region shares it; all regions x
attributes of a frame decode as one batch with a KV cache, each sequence stopping at its own EOS. Backends
(`torch`, `onnxruntime`, `tensorrt`) only supply the three compute stages; validation, batching and the decode
loop are shared, so every backend answers the same way.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch

from .model.config import FineCaptionConfig
from .model.finecaption import DEFAULT_MODEL_DIR, FineCaptionModel, FrameFeatures, load_tokenizer, weights_digest
from .data.scenes import relation_phrases
from .model.generate import DecoderSession, TorchDecoderSession, greedy_decode, prefix_trie
from .model.inputs import normalise_frames, region_inputs, writable
from .results import RegionCaption
from .tasks import ATTRIBUTE_TASK, DEFAULT_MAX_NEW_TOKENS, GLOBAL_TASK, MAX_NEW_TOKENS, MAX_REGIONS, TASKS, prompt_for, tidy_caption

BACKENDS = ("torch", "onnxruntime", "tensorrt")
MAX_BATCH = 64  # sequences decoded together; bounds memory when a frame has very many regions x attributes
RELATION = "relative_location"
NAME_ATTRIBUTES = ("color", "category")  # how a relative location names a neighbour: "<colour> <category>"


class CaptionerInputError(ValueError):
    """Raised for input the captioner cannot caption; the message names the problem and the fix."""


class Backend(Protocol):
    name: str

    def encode_frames(self, hr_pixels: torch.Tensor | None) -> FrameFeatures: ...

    def visual_tokens(self, lr_pixels: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor,
                      frames: FrameFeatures, frame_index: torch.Tensor) -> torch.Tensor: ...

    def decoder_session(self) -> DecoderSession: ...


class TorchBackend:
    name = "torch"

    def __init__(self, model: FineCaptionModel):
        self.model = model.eval()

    @torch.inference_mode()
    def encode_frames(self, hr_pixels):
        return self.model.encode_frames(hr_pixels)

    @torch.inference_mode()
    def visual_tokens(self, lr_pixels, masks, boxes, frames, frame_index):
        return self.model.visual_tokens(lr_pixels, masks, boxes, frames, frame_index)

    def decoder_session(self):
        return TorchDecoderSession(self.model)


def _load_backend(name: str, model_dir: Path, engine_dir: str | Path | None, options: dict) -> Backend:
    if name == "torch":
        return TorchBackend(FineCaptionModel.from_pretrained(model_dir))
    from .engines import load_backend  # the engine layer is optional: onnxruntime / tensorrt live there

    return load_backend(name, model_dir, engine_dir, **options)


class Captioner:
    def __init__(self, model_dir: Path, config: FineCaptionConfig, tokenizer, backend: Backend, model_id: str,
                 grounded_relations: bool = False):
        self.model_dir = model_dir
        self.config = config
        self.tokenizer = tokenizer
        self.engine = backend
        self.model_id = model_id
        self._prompt_cache: dict[tuple[str, str | None], list[int]] = {}
        self.grounded_relations = grounded_relations
        # A neighbour's name, word by word: the world's colours and categories (config.aux_classes).
        self._class_tries = {a: self._trie(config.aux_classes[a]) for a in NAME_ATTRIBUTES} if grounded_relations \
            else {}

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, backend: str = "torch",
                        engine_dir: str | Path | None = None, num_threads: int | None = None,
                        grounded_relations: bool | None = None, **backend_options) -> "Captioner":
        """`path=None` loads the default model embedded in the package; any other path must be a local model
        directory (nothing is ever downloaded).

        `num_threads` sets torch's (process-wide) thread count and the engine's CPU threads. An engine backend
        that computes on this CPU (onnxruntime without a GPU) then sets torch to one thread: torch only
        preprocesses, and its idle OpenMP workers spin-wait on the cores the engine needs.

        `grounded_relations`: a relative location may name only a colour and category the model reads for another
        region of the same frame (or say it has none), instead of any pair its decoder favours. None (the default)
        grounds them for a model of the synthetic world, whose relative locations have `data/scenes.py`'s form;
        False decodes them freely; True insists, and refuses a model that answers in another form."""
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        model_dir = Path(path) if path is not None else DEFAULT_MODEL_DIR
        if not model_dir.is_dir():
            what = "is a file, not a folder" if model_dir.exists() else "does not exist"
            raise FileNotFoundError(f"model directory {model_dir} {what}; pass a directory written by "
                                    f"`finecaption train` (or save_pretrained), or omit the path for the default")
        if num_threads:
            torch.set_num_threads(num_threads)
        config = FineCaptionConfig.load(model_dir)
        tokenizer = load_tokenizer(model_dir)
        engine = _load_backend(backend, model_dir, engine_dir, backend_options)
        torch_threads = getattr(engine, "torch_threads", None)
        if torch_threads:  # an engine on this CPU leaves torch only the preprocessing (see OnnxRuntimeBackend)
            torch.set_num_threads(torch_threads)
        model_id = f"{config.name}-{weights_digest(model_dir)[:8]}"
        return cls(model_dir, config, tokenizer, engine, model_id, _grounding(config, grounded_relations, model_dir))

    @property
    def backend(self) -> str:
        return self.engine.name

    @property
    def supported_attributes(self) -> tuple[str, ...]:
        return tuple(self.config.attributes)

    @property
    def has_object_counter(self) -> bool:
        """Whether `count_objects` can answer: the model has a count token, read from its high-res features."""
        return self.config.has_object_counter

    # ---- the API ------------------------------------------------------------------------------------------------
    def caption(self, image: np.ndarray, masks=None, task: str = "dense", attributes: Sequence[str] | None = None,
                max_new_tokens: int | None = None, region_ids: Sequence[int] | None = None) -> list[RegionCaption]:
        """Captions every region of `masks` (or the whole image for the global task).

        `region_ids` captions only those regions (label values, or 1-based positions in a list of masks); the
        others still count as their neighbours, which relative locations are named after. Pass all the frame's
        regions in `masks` for relative locations; a region given alone has no neighbour to name.
        """
        return self.caption_frames([(image, masks, region_ids)], task, attributes, max_new_tokens)[0]

    def count_objects(self, image: np.ndarray) -> float:
        """The model's own object count for a frame: the sum of its object counter's density map, the number the
        global caption's count token encodes (not rounded). Tells a miscounted global caption apart: a wrong sum is
        the counter's error, a right sum with a wrong count word the decoder's."""
        image = _check_image(image)
        if not self.has_object_counter:
            raise CaptionerInputError(f"model {self.model_id} has no object counter (its config has count_token "
                                      f"false or no high-res encoder); count with a model trained with "
                                      f"--count-token true")
        encoded = self.engine.encode_frames(_hr_view(torch.from_numpy(writable(image))[None], self.config))
        return float(encoded.density.sum())

    def caption_frames(self, frames: Sequence[tuple], task: str = "dense", attributes: Sequence[str] | None = None,
                       max_new_tokens: int | None = None) -> list[list[RegionCaption]]:
        """`caption` for several frames (e.g. one per camera) in one call: `frames` is a list of
        (image, masks, region_ids) tuples, checked as `caption` checks its arguments; returns one list of results
        per frame. Each frame is encoded on its own and its regions' neighbours come from that frame only; the
        regions of all frames decode as one batch."""
        started = time.perf_counter()
        task, attributes = self._check_task(task, attributes)
        _check_max_new_tokens(max_new_tokens)
        if not frames:
            raise CaptionerInputError("no frames given: pass at least one (image, masks, region_ids) tuple")
        config = self.config
        hr, lr, coverage, boxes, pixel_boxes, frame_index, owners, areas = [], [], [], [], [], [], [], []
        for f, (image, masks, region_ids) in enumerate(frames):
            image = _check_image(image)
            if task == GLOBAL_TASK:
                present, region_masks = [0], np.ones((1,) + image.shape[:2], dtype=bool)
                wanted = present
            else:
                present, region_masks = _split_masks(masks, image.shape[:2])
                wanted = _check_region_ids(region_ids, present)
            if wanted != present and not config.neighbor_tokens:
                keep = [present.index(i) for i in wanted]  # no neighbour context: the others need no encoding
                present, region_masks = wanted, region_masks[keep]
            pixels = torch.from_numpy(writable(image))[None]
            if config.use_hr:
                hr.append(_hr_view(pixels, config))
            lr.append(normalise_frames(pixels, config.lr_image_size, config.image_mean, config.image_std))
            cover, box, pixel_box = region_inputs(region_masks, config.hr_image_size)
            coverage.append(cover)
            boxes.append(box)
            wanted_set = set(wanted)
            for k, region_id in enumerate(present):
                frame_index.append(f)
                owners.append((f, int(region_id), region_id in wanted_set))
                pixel_boxes.append(pixel_box[k])
                areas.append(int(region_masks[k].sum()))
        timings = {"preprocess": _ms(started)}

        stage = time.perf_counter()
        encoded = self.engine.encode_frames(torch.cat(hr) if hr else None)
        timings["frame_encoder"] = _ms(stage)
        stage = time.perf_counter()
        visual = self.engine.visual_tokens(torch.cat(lr), torch.cat(coverage), torch.cat(boxes), encoded,
                                           torch.tensor(frame_index, dtype=torch.long))
        timings["region_encoder"] = _ms(stage)

        requests = [(i, a) for i, (_, _, wanted) in enumerate(owners) if wanted for a in (attributes or [None])]
        stage = time.perf_counter()
        limit = max_new_tokens or DEFAULT_MAX_NEW_TOKENS
        allowed = {}
        if self.grounded_relations and task == ATTRIBUTE_TASK and RELATION in attributes:
            # First every region's name, wanted or not (a relation names its neighbour), each word one of the
            # world's classes; the answers asked for are decoded as always, so asking the relation changes no other.
            names = [(i, a) for i in range(len(owners)) for a in NAME_ATTRIBUTES]
            read = self._decode(visual, names, task, limit, {r: self._class_tries[r[1]] for r in names})
            allowed = self._relation_tries(owners, dict(zip(names, read)))
        answers = dict(zip(requests, self._decode(visual, requests, task, limit, allowed)))
        timings["decoder"] = _ms(stage)
        timings["total"] = _ms(started)

        results: list[list[RegionCaption]] = [[] for _ in frames]
        for i, attribute in requests:
            text, confidence = answers[(i, attribute)]
            f, region_id, _ = owners[i]
            x0, y0, x1, y1 = (int(v) for v in pixel_boxes[i])
            results[f].append(RegionCaption(
                region_id=region_id, task=task, attribute=attribute or "", caption=text, confidence=confidence,
                bbox=(x0, y0, x1 - x0, y1 - y0), mask_area=areas[i], timings_ms=dict(timings)))
        return results

    def _check_task(self, task: str, attributes) -> tuple[str, list[str] | None]:
        if task not in TASKS:
            raise CaptionerInputError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        if task != ATTRIBUTE_TASK:
            return task, None
        if isinstance(attributes, str):
            attributes = [attributes]
        if not attributes:
            raise CaptionerInputError(f"task 'attribute' needs attributes=[...], e.g. ['color']; this model knows "
                                      f"{', '.join(self.supported_attributes)}")
        unknown = [a for a in attributes if a not in self.supported_attributes]
        if unknown:
            raise CaptionerInputError(f"unknown attribute(s) {unknown}; this model knows "
                                      f"{', '.join(self.supported_attributes)}")
        return task, list(attributes)

    def _decode(self, visual: torch.Tensor, requests: list[tuple[int, str | None]], task: str, limit: int,
                allowed: dict | None = None) -> list[tuple[str, float]]:
        """(region index, attribute) requests -> (caption, confidence) each, decoded MAX_BATCH at a time;
        `allowed` maps a request to the `prefix_trie` of the answers it may give (the others decode freely)."""
        out = []
        for chunk_start in range(0, len(requests), MAX_BATCH):
            chunk = requests[chunk_start:chunk_start + MAX_BATCH]
            index = torch.tensor([i for i, _ in chunk])
            tries = [allowed.get(r) for r in chunk] if allowed else None
            generation = greedy_decode(
                self.engine.decoder_session(), visual[index], visual.shape[1],
                [self._prompt_ids(task, a) for _, a in chunk], eos_id=self.tokenizer.eos_token_id,
                pad_id=self.tokenizer.pad_token_id, max_new_tokens=limit, allowed=tries)
            texts = [tidy_caption(self.tokenizer.decode(t, skip_special_tokens=True)) for t in generation.token_ids]
            out += zip(texts, generation.confidences)
        return out

    def _relation_tries(self, owners: list[tuple[int, int, bool]], names: dict) -> dict:
        """Each region's relative location may name only what the model read for another region of its frame:
        one of `relation_phrases` of their "<colour> <category>"."""
        tries = {}
        for i, (frame, _, wanted) in enumerate(owners):
            if not wanted:
                continue
            others = [" ".join(names[(j, a)][0] for a in NAME_ATTRIBUTES)
                      for j, (other_frame, _, _) in enumerate(owners) if other_frame == frame and j != i]
            tries[(i, RELATION)] = self._trie(relation_phrases(others))
        return tries

    def _trie(self, answers: list[str]) -> dict:
        return prefix_trie([self.tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers],
                           self.tokenizer.eos_token_id)

    def _prompt_ids(self, task: str, attribute: str | None) -> list[int]:
        key = (task, attribute)
        if key not in self._prompt_cache:
            text = prompt_for(task, attribute)
            self._prompt_cache[key] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._prompt_cache[key]


def _grounding(config: FineCaptionConfig, wanted: bool | None, model_dir: Path) -> bool:
    """A model of the synthetic world (trained with its attribute classes) names neighbours as "<colour>
    <category>"; a model trained on a dataset's captions (no attribute classes) may phrase them any way."""
    world = all(a in config.aux_classes and a in config.attributes for a in NAME_ATTRIBUTES) \
        and RELATION in config.attributes
    if wanted and not world:
        raise CaptionerInputError(f"grounded_relations=True needs a model of the synthetic world; {model_dir} "
                                  f"was not trained on it (its config has no {'/'.join(NAME_ATTRIBUTES)} classes): "
                                  f"pass grounded_relations=None or False")
    return world if wanted is None else wanted


def _hr_view(pixels: torch.Tensor, config: FineCaptionConfig) -> torch.Tensor:
    """uint8 (1,H,W,3) -> the high-res encoder's normalised view (what the frame encoder, and so the counter, reads)."""
    return normalise_frames(pixels, config.hr_image_size, config.image_mean, config.image_std)


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000.0, 3)


def _check_image(image) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise CaptionerInputError(f"image must be a numpy array (HxWx3 uint8 RGB), got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise CaptionerInputError(f"image must be HxWx3 RGB, got shape {image.shape}; drop an alpha channel with "
                                  f"image[..., :3] or stack a grey image with np.repeat(img[..., None], 3, 2)")
    if image.dtype != np.uint8:
        raise CaptionerInputError(f"image must be uint8, got {image.dtype}; convert 0..1 floats with "
                                  f"(img * 255).round().astype(np.uint8)")
    if min(image.shape[:2]) < 2:
        raise CaptionerInputError(f"image of size {image.shape[1]}x{image.shape[0]} is too small to caption")
    return image


def _check_max_new_tokens(value) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= MAX_NEW_TOKENS:
        raise CaptionerInputError(f"max_new_tokens must be an integer in 1..{MAX_NEW_TOKENS}, got {value!r:.40}; "
                                  f"pass None for the default ({DEFAULT_MAX_NEW_TOKENS})")


def _split_masks(masks, shape: tuple[int, int]) -> tuple[list[int], np.ndarray]:
    """Label map (HxW int, 0 = background) or a list / (N,H,W) stack of bool masks -> (ids, (R,H,W) bool)."""
    if masks is None:
        raise CaptionerInputError("region tasks need masks: an HxW instance label map or a list of HxW bool masks")
    if isinstance(masks, np.ndarray) and masks.ndim == 2 and masks.dtype != bool:
        if masks.dtype.kind not in "iu":
            raise CaptionerInputError(f"a label map must hold integers (0 = background), got {masks.dtype}")
        _check_shape(masks.shape, shape, "label map")
        ids = np.unique(masks)
        ids = ids[ids != 0]
        if len(ids) == 0:
            raise CaptionerInputError("the label map has no regions (every pixel is 0 = background)")
        _check_region_count(len(ids))
        return [int(i) for i in ids], masks[None] == ids[:, None, None]
    if isinstance(masks, np.ndarray) and masks.ndim == 2:
        masks = [masks]
    stack = list(masks) if not isinstance(masks, np.ndarray) else list(masks)
    if not stack:
        raise CaptionerInputError("no masks given: pass at least one region")
    _check_region_count(len(stack))
    for i, mask in enumerate(stack):
        if not isinstance(mask, np.ndarray) or mask.ndim != 2:
            raise CaptionerInputError(f"mask {i} must be a 2-D numpy array")
        if mask.dtype != bool:
            raise CaptionerInputError(f"mask {i} must be bool, got {mask.dtype}; use mask > 0, or pass an integer "
                                      f"label map instead of a list")
        _check_shape(mask.shape, shape, f"mask {i}")
        if not mask.any():
            raise CaptionerInputError(f"mask {i} is empty: it selects no pixel")
    return list(range(1, len(stack) + 1)), np.stack(stack)


def _check_region_count(count: int) -> None:
    if count > MAX_REGIONS:
        raise CaptionerInputError(f"{count} regions is more than the {MAX_REGIONS} one frame may hold; keep the "
                                  "largest (the node's max_regions does) or merge labels")


def _check_region_ids(region_ids, present: list[int]) -> list[int]:
    if region_ids is None:
        return present
    wanted = [int(i) for i in region_ids]
    missing = sorted(set(wanted) - set(present))
    if missing:
        raise CaptionerInputError(f"region_ids {missing} are not regions of the masks (present: "
                                  f"{present[:10]}{' ...' if len(present) > 10 else ''})")
    if not wanted:
        raise CaptionerInputError("region_ids is empty: name at least one region, or pass None for all")
    wanted_set = set(wanted)
    return [i for i in present if i in wanted_set]


def _check_shape(got, expected, what: str) -> None:
    if tuple(got) != tuple(expected):
        raise CaptionerInputError(f"{what} is {got[1]}x{got[0]} but the image is {expected[1]}x{expected[0]}; "
                                  f"masks must match the image size")
