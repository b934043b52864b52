"""The node benchmarks' frames: a demo-camera scene of any size with exactly `count` regions."""
from __future__ import annotations

import numpy as np

from finecaption_ros.data.scenes import SceneGenerator


def frame_with_regions(count: int, seed: int = 5, size: tuple[int, int] = (256, 256)) -> tuple[np.ndarray, np.ndarray]:
    """(image, labels) of size (width, height): the scene's objects first, then background squares as regions."""
    width, height = size
    scene = SceneGenerator(height=height, width=width, seed=seed, min_objects=6, max_objects=6, split="train").sample()
    labels = np.zeros_like(scene.labels)
    ids = [o.region_id for o in scene.objects][:count]
    for i in ids:
        labels[scene.labels == i] = i
    side = max(24, min(width, height) // 10)
    k = 0
    while len(ids) < count:  # extra regions: background squares
        y, x = divmod(k, width // (side + 8))
        k += 1
        box = (slice(y * (side + 8), y * (side + 8) + side), slice(x * (side + 8), x * (side + 8) + side))
        if box[0].stop <= height and (scene.labels[box] == 0).all():
            new_id = 256 - len(ids)
            labels[box] = new_id
            ids.append(new_id)
    return scene.image, labels
