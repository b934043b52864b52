"""A stand-in captioner for the rclpy-free unit tests (the node process tests use the real Captioner)."""
from __future__ import annotations

import numpy as np

from finecaption_ros.results import RegionCaption as FakeResult  # the captioner's own (torch-free) result type
from finecaption_ros.tasks import ATTRIBUTES, TASKS


class FakeInputError(ValueError):
    pass


class FakeCaptioner:
    model_id = "fake-00000000"
    backend = "torch"
    supported_attributes = ATTRIBUTES

    def __init__(self):
        self.calls: list[dict] = []
        self.batches: list[int] = []

    def caption_frames(self, frames, task="dense", attributes=None, max_new_tokens=None):
        """As the Captioner's: each frame on its own, in one call (counted once in `batches`)."""
        self.batches.append(len(frames))
        return [self.caption(image, masks, task, attributes, max_new_tokens, region_ids)
                for image, masks, region_ids in frames]

    def caption(self, image, masks, task="dense", attributes=None, max_new_tokens=None, region_ids=None):
        if task not in TASKS:
            raise FakeInputError(f"unknown task {task!r}")
        unknown = [a for a in attributes or () if a not in ATTRIBUTES]
        if unknown:
            raise FakeInputError(f"unknown attribute(s) {unknown}")
        if task == "global":
            h, w = image.shape[:2]
            self.calls.append({"task": task, "ids": [0]})
            return [FakeResult(0, task, "", "the whole image", 0.9, (0, 0, w, h), h * w)]
        if masks.shape != image.shape[:2]:
            raise FakeInputError(f"label map is {masks.shape} but the image is {image.shape[:2]}")
        ids = [int(i) for i in np.unique(masks) if i]
        if not ids:
            raise FakeInputError("the label map has no regions")
        context = ids
        if region_ids is not None:
            assert set(region_ids) <= set(ids), "region_ids must be regions of the masks"
            ids = [i for i in ids if i in set(region_ids)]
        self.calls.append({"task": task, "ids": ids, "context": context, "attributes": attributes})
        out = []
        for i in ids:
            m = masks == i
            ys, xs = np.nonzero(m)
            bbox = (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))
            mean = image[m].mean(axis=0).round().astype(int).tolist()
            for attr in (attributes or [""]):
                text = f"region {i} {attr or 'dense'} rgb {mean}"
                out.append(FakeResult(i, task, attr, text, 0.5, bbox, int(m.sum())))
        return out
