"""The baseline a node's throughput is measured against: the same captioner (the embedded default model, or
--model) captioning the same frames in a plain process of its own, with no ROS in it. A process of its own,
because a Python thread that spins an rclpy executor beside it (as in the test process) takes the GIL from
torch's many small ops and slows it several times over.

    python tests/ros/inprocess_rate.py --seed 7 --n 8 --rounds 2      # prints frames/s and ms/frame as JSON
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def frames_per_second(seed: int = 7, n: int = 8, rounds: int = 2, model: str = "", threads: int = 0) -> dict:
    """Run this file in a fresh interpreter; returns {"fps": ..., "ms": ...}."""
    cmd = [sys.executable, str(Path(__file__)), "--seed", str(seed), "--n", str(n), "--rounds", str(rounds),
           "--threads", str(threads)]
    if model:
        cmd += ["--model", model]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--model", default="")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from finecaption_ros.captioner import Captioner
    from finecaption_ros.data.scenes import SceneGenerator

    captioner = Captioner.from_pretrained(args.model or None, num_threads=args.threads or None)
    generator = SceneGenerator(seed=args.seed, split="train")
    frames = [(s.image, s.labels) for s in (generator.sample() for _ in range(args.n))]
    captioner.caption(frames[0][0], frames[0][1], task="dense")  # warm
    times = []
    for _ in range(args.rounds):
        for image, labels in frames:
            t0 = time.perf_counter()
            captioner.caption(image, labels, task="dense")
            times.append(time.perf_counter() - t0)
    times.sort()
    print(json.dumps({"fps": len(times) / sum(times), "ms": 1e3 * times[len(times) // 2]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
