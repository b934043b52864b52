"""What grounding relative locations costs: one 640x480 frame, 8 regions, the attribute task asking
relative_location alone, grounded (the default: each region's colour and category are decoded first, then each
relation may name only those of the frame's other regions) against free decoding.

Medians of --repeats runs, both measured alternately in the same process so machine noise hits both. How often
each is right is the camera suite's relation column (README).

    python bench/grounded_relations.py [--model DIR] [--regions 8] [--repeats 10] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from finecaption_ros.captioner import Captioner
from finecaption_ros.data.scenes import SceneGenerator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--regions", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    captioners = {"grounded": Captioner.from_pretrained(args.model, grounded_relations=True),
                  "free": Captioner.from_pretrained(args.model, grounded_relations=False)}
    scene = SceneGenerator(480, 640, min_objects=args.regions, max_objects=args.regions, split="eval",
                           seed=args.seed).sample()
    truth = {o.region_id: o.relative_location for o in scene.objects}

    def run(captioner):
        return captioner.caption(scene.image, scene.labels, task="attribute", attributes=["relative_location"])

    times: dict[str, list[float]] = {name: [] for name in captioners}
    for captioner in captioners.values():
        run(captioner)  # warm-up
    for _ in range(args.repeats):
        for name, captioner in captioners.items():
            start = time.perf_counter()
            results = run(captioner)
            times[name].append((time.perf_counter() - start) * 1000)
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"model {captioners['free'].model_id}, {args.threads} threads, frame 640x480, {len(truth)} regions, "
          f"attribute task: relative_location, median of {args.repeats}")
    print(f"{'relations':<12}{'ms/frame':>10}{'right here':>12}")
    for name, captioner in captioners.items():
        right = sum(r.caption == truth[r.region_id] for r in run(captioner))
        print(f"{name:<12}{medians[name]:>10.1f}{f'{right}/{len(truth)}':>12}")
    print(f"cost of grounding (grounded / free): {medians['grounded'] / medians['free']:.2f}x")


if __name__ == "__main__":
    main()
