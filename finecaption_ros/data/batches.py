"""Training batches drawn fresh from the scene generator: frames, region masks, prompts and target captions."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..model.inputs import letterbox, letterbox_frames, region_inputs, writable
from ..tasks import ATTRIBUTE_TASK, ATTRIBUTES, DENSE_TASK, GLOBAL_TASK, prompt_for
from .camera import Camera, imperfect_masks
from .scenes import CATEGORIES, COLORS, COUNT_WORDS, POSITIONS, SIZES, TEXTURES, Scene, SceneGenerator

# Auxiliary heads: one classifier per closed-vocabulary attribute (relative location is open-ended).
AUX_CLASSES = {
    "category": list(CATEGORIES),
    "color": list(COLORS),
    "texture": list(TEXTURES),
    "size": list(SIZES),
    "position": [p for row in POSITIONS for p in row],
}


class TokenCache:
    """Prompts and captions repeat constantly; tokenise each distinct string once."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_token_id
        self._encode = lru_cache(maxsize=100_000)(self._encode_uncached)

    def _encode_uncached(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode(self, text: str) -> list[int]:
        return list(self._encode(text))


def region_samples(scene: Scene, rng: np.random.Generator, p_global: float, p_dense: float,
                   relation_boost: float = 1.0, p_imperfect: float = 0.0):
    """(mask or None, task, attribute, caption, aux labels or None): one per object, sometimes the whole image.
    With probability `p_imperfect` the frame's masks are the kind a real segmenter gives (`camera.imperfect_masks`);
    the captions stay the truth."""
    weights = np.array([relation_boost if a == "relative_location" else 1.0 for a in ATTRIBUTES])
    weights /= weights.sum()
    samples = []
    if rng.random() < p_global:
        samples.append((None, GLOBAL_TASK, None, scene.global_caption(), None))
    if p_imperfect and rng.random() < p_imperfect:
        masks = imperfect_masks(scene, rng, grow=(-3, 3), holes=0.3)
    else:
        masks = [scene.mask(obj.region_id) for obj in scene.objects]
    for obj, mask in zip(scene.objects, masks):
        aux = [values.index(obj.attribute(name)) for name, values in AUX_CLASSES.items()]
        if rng.random() < p_dense:
            samples.append((mask, DENSE_TASK, None, obj.dense_caption(), aux))
        else:
            # Unboosted draws keep the random stream of runs made before --relation-boost existed.
            pick = rng.integers(len(ATTRIBUTES)) if relation_boost == 1.0 else rng.choice(len(ATTRIBUTES), p=weights)
            attribute = ATTRIBUTES[pick]
            samples.append((mask, ATTRIBUTE_TASK, attribute, obj.attribute(attribute), aux))
    return samples


def view_centres(scene: Scene, side: int) -> list[tuple[float, float]]:
    """The objects' centroids in the letterboxed view, as fractions of its side (what the count head is taught)."""
    height, width = scene.labels.shape
    content_h, content_w, top, left = letterbox(height, width, side)
    return [((left + o.center[0] / width * content_w) / side, (top + o.center[1] / height * content_h) / side)
            for o in scene.objects]


def collate(frames: list[np.ndarray], samples_per_frame: list[list], tokens: TokenCache, side: int, pad_id: int,
            num_aux: int = len(AUX_CLASSES), centres_per_frame: list | None = None) -> dict[str, torch.Tensor]:
    """Frames (HxWx3 uint8, sizes may differ) and their samples -> one training batch (see FineCaptionModel.forward).

    Masks become coverage at the model's high-res side per frame; frames are letterboxed to side x side as the
    model's views letterbox them (`model.inputs.letterbox`), so a batch may mix image sizes. `centres_per_frame`:
    for each frame the (x, y) centres of all its objects as fractions of the letterboxed view (`view_centres`), or
    None where they are not all known (count training).
    Whole-image samples (global task) get their own neighbour group: they are nobody's neighbour.
    """
    coverages, boxes, frame_index, groups, sequences, prompt_lengths, aux = [], [], [], [], [], [], []
    images = []
    for frame, (image, samples) in enumerate(zip(frames, samples_per_frame)):
        masks = [np.ones(image.shape[:2], dtype=bool) if mask is None else mask for mask, *_ in samples]
        coverage, frame_boxes, _ = region_inputs(np.stack(masks), side)
        coverages.append(coverage)
        boxes.append(frame_boxes)
        images.append(letterbox_frames(torch.from_numpy(writable(image))[None], side)[0])
        for mask, task, attribute, caption, labels in samples:
            frame_index.append(frame)
            groups.append(2 * frame + (mask is None))
            prompt = tokens.encode(prompt_for(task, attribute))
            sequences.append(prompt + tokens.encode(caption) + [tokens.eos_id])
            prompt_lengths.append(len(prompt))
            aux.append(labels if labels is not None else [-100] * num_aux)
    length = max(len(s) for s in sequences)
    token_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), length), dtype=torch.long)
    labels = torch.full((len(sequences), length), -100, dtype=torch.long)
    for i, (seq, plen) in enumerate(zip(sequences, prompt_lengths)):
        token_ids[i, :len(seq)] = torch.tensor(seq)
        attention[i, :len(seq)] = 1
        labels[i, plen:len(seq)] = torch.tensor(seq[plen:])
    centres_per_frame = centres_per_frame or [None] * len(frames)
    centres = [(frame, x, y) for frame, known in enumerate(centres_per_frame) if known is not None
               for x, y in known]
    return {
        "images": torch.stack(images),
        "masks": torch.cat(coverages),
        "boxes": torch.cat(boxes),
        "frame_index": torch.tensor(frame_index),
        "groups": torch.tensor(groups),
        "object_centres": torch.tensor(centres, dtype=torch.float32).reshape(-1, 3),
        "centres_known": torch.tensor([known is not None for known in centres_per_frame]),
        "token_ids": token_ids,
        "attention": attention,
        "labels": labels,
        "aux_labels": torch.tensor(aux, dtype=torch.long).reshape(len(sequences), num_aux),
    }


def _worker_rng(seed: int, rank: int) -> np.random.Generator:
    """Each DataLoader worker of each DDP rank draws its own stream."""
    worker = get_worker_info()
    return np.random.default_rng(np.random.SeedSequence([seed, rank, worker.id if worker else 0]))


def frame_batch(scenes: list[Scene], side: int) -> dict[str, torch.Tensor]:
    """Scenes -> frames letterboxed to side x side and every object's centre (see `collate`), no regions."""
    images = [letterbox_frames(torch.from_numpy(writable(s.image))[None], side)[0] for s in scenes]
    centres = [(frame, x, y) for frame, s in enumerate(scenes) for x, y in view_centres(s, side)]
    return {"images": torch.stack(images),
            "object_centres": torch.tensor(centres, dtype=torch.float32).reshape(-1, 3),
            "centres_known": torch.ones(len(scenes), dtype=torch.bool)}


class SceneBatches(IterableDataset):
    """An endless stream of batches; each worker and each DDP rank draws its own scenes, under the training camera
    (`camera.Camera.training`: every frame size and rendering condition of the camera suite) unless `camera` says
    otherwise."""

    def __init__(self, tokenizer, scenes_per_batch: int, side: int, seed: int, rank: int = 0,
                 p_global: float = 0.25, p_dense: float = 0.3, scene_size: int = 256, relation_boost: float = 1.0,
                 camera: Camera | None = None, min_objects: int = 1, max_objects: int = max(COUNT_WORDS),
                 p_imperfect: float = 0.5, frames_only: bool = False):
        """`frames_only`: batches of frames and their object centres alone (what `train --count-head-only` uses);
        the scenes are the same as with regions, which are drawn from a stream of their own."""
        self.tokenizer = tokenizer
        self.scenes_per_batch = scenes_per_batch
        self.side = side
        self.seed = seed
        self.rank = rank
        self.p_global = p_global
        self.p_dense = p_dense
        self.scene_size = scene_size
        self.relation_boost = relation_boost
        self.camera = camera or Camera.training(render_side=side)
        self.min_objects, self.max_objects = min_objects, max_objects
        self.p_imperfect = p_imperfect
        self.frames_only = frames_only

    def __iter__(self):
        rng = _worker_rng(self.seed, self.rank)
        generator = SceneGenerator(self.scene_size, self.scene_size, split="train", seed=rng.integers(2**32),
                                   camera=self.camera, min_objects=self.min_objects, max_objects=self.max_objects)
        tokens = TokenCache(self.tokenizer)
        pad_id = self.tokenizer.pad_token_id
        while True:
            scenes = [generator.sample() for _ in range(self.scenes_per_batch)]
            if self.frames_only:
                yield frame_batch(scenes, self.side)
                continue
            samples = [region_samples(s, rng, self.p_global, self.p_dense, self.relation_boost, self.p_imperfect)
                       for s in scenes]
            centres = [view_centres(s, self.side) for s in scenes]
            yield collate([s.image for s in scenes], samples, tokens, self.side, pad_id, centres_per_frame=centres)


class CompositionCapBatches(IterableDataset):
    """Batches from a CompositionCap-format dataset: random images, up to `samples_per_image` of their captions
    (attribute, dense, global) each. No auxiliary labels: real attributes are open-vocabulary text."""

    def __init__(self, records, tokenizer, images_per_batch: int, side: int, seed: int, rank: int = 0,
                 samples_per_image: int = 6):
        if not records:
            raise ValueError("the CompositionCap annotation file holds no records")
        self.records = records
        self.tokenizer = tokenizer
        self.images_per_batch = images_per_batch
        self.side = side
        self.seed = seed
        self.rank = rank
        self.samples_per_image = samples_per_image

    def __iter__(self):
        from .compositioncap import iter_training_samples

        rng = _worker_rng(self.seed, self.rank)
        tokens = TokenCache(self.tokenizer)
        pad_id = self.tokenizer.pad_token_id
        while True:
            frames, samples = [], []
            for index in rng.integers(len(self.records), size=self.images_per_batch):
                drawn = list(iter_training_samples([self.records[index]]))
                if not drawn:
                    continue
                keep = rng.permutation(len(drawn))[:self.samples_per_image]
                frames.append(drawn[0][0])
                samples.append([(mask, task, attribute, caption, None)
                                for _, mask, task, attribute, caption in (drawn[i] for i in keep)])
            if frames:
                yield collate(frames, samples, tokens, self.side, pad_id, num_aux=0)
