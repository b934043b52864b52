"""Captioner speed on this CPU: one 640x480 frame, 8 regions, regional (dense) task.

Prints ms/frame for the shared, batched path (frame encoded once, all regions decoded as one KV-cached batch) and
for the baseline a user of an off-the-shelf model would write (one full call per region: the frame is re-encoded
and each region decoded alone, still with a KV cache), their ratio, per-stage times and peak RSS. Medians of
--repeats runs, both paths measured alternately in the same process so machine noise hits both.

    python bench/captioner_bench.py [--model DIR] [--repeats 10] [--threads 2]
"""
from __future__ import annotations

import argparse
import resource
import statistics
import time

import numpy as np
import torch

from finecaption_ros.captioner import Captioner
from finecaption_ros.data.scenes import SceneGenerator


def frame_with_regions(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A 640x480 synthetic frame holding exactly `count` objects."""
    generator = SceneGenerator(480, 640, min_objects=count, max_objects=count, seed=seed)
    while True:
        scene = generator.sample()
        if len(scene.objects) == count:
            return scene.image, scene.labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--regions", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    captioner = Captioner.from_pretrained(args.model)
    image, labels = frame_with_regions(args.regions, args.seed)
    ids = [i for i in np.unique(labels) if i]
    masks = [labels == i for i in ids]

    def shared():
        return captioner.caption(image, labels, task="dense")

    def per_region():
        return [captioner.caption(image, [m], task="dense")[0] for m in masks]

    shared(), per_region()  # warm-up
    shared_ms, per_region_ms, stages = [], [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        results = shared()
        shared_ms.append((time.perf_counter() - start) * 1000)
        stages.append(results[0].timings_ms)
        start = time.perf_counter()
        per_region()
        per_region_ms.append((time.perf_counter() - start) * 1000)
    shared_median = statistics.median(shared_ms)
    per_region_median = statistics.median(per_region_ms)
    print(f"model {captioner.model_id}, backend {captioner.backend}, {args.threads} threads, frame 640x480, "
          f"{len(masks)} regions, dense task, median of {args.repeats}")
    print(f"{'path':<44}{'ms/frame':>10}")
    print(f"{'shared frame encoding + batched KV decoding':<44}{shared_median:>10.1f}")
    print(f"{'per-region full call (KV cache, re-encodes)':<44}{per_region_median:>10.1f}")
    print(f"speed-up (per-region / shared): {per_region_median / shared_median:.2f}x")
    for stage in stages[0]:
        print(f"  stage {stage:<16}{statistics.median(s[stage] for s in stages):>8.1f} ms")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print("captions:", "; ".join(r.caption for r in shared()[:3]), "...")


if __name__ == "__main__":
    main()
