"""fp16 graphs vs fp32 graphs under ONNX Runtime on the CPU: export time and sizes, ms per frame side by side,
and how many captions stay the same.

    python bench/fp16_graphs.py [--frames 24] [--threads 2] [--model DIR]

640x480 frame, 8 regions, dense task, `Captioner.caption` end to end; the two captioners alternate in blocks of 4
frames in one process (the first frame after a switch untimed); medians.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engines_vs_torch import frame_with_regions  # noqa: E402
from finecaption_ros.captioner import Captioner  # noqa: E402
from finecaption_ros.engines.export import export_onnx  # noqa: E402
from finecaption_ros.model.finecaption import DEFAULT_MODEL_DIR  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--frames", type=int, default=24, help="timed frames per precision")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--block", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="fp16_graphs_"))
    manifests = {}
    for precision in ("fp32", "fp16"):
        started = time.perf_counter()
        manifests[precision] = export_onnx(args.model, work / precision, progress=lambda m: None, precision=precision)
        manifests[precision]["wall_s"] = time.perf_counter() - started
    captioners = {p: Captioner.from_pretrained(args.model, backend="onnxruntime", engine_dir=work / p,
                                               num_threads=args.threads) for p in manifests}
    frames = [frame_with_regions(seed) for seed in range(8)]
    times = {p: [] for p in captioners}
    same = total = 0
    index = 0
    while min(len(t) for t in times.values()) < args.frames:
        captions = {}
        for precision, captioner in captioners.items():
            for k in range(args.block + 1):
                image, masks = frames[(index + k) % len(frames)]
                started = time.perf_counter()
                results = captioner.caption(image, masks, task="dense")
                if k:
                    times[precision].append((time.perf_counter() - started) * 1000)
                if k == 1:
                    captions[precision] = [r.caption for r in results]
        same += sum(a == b for a, b in zip(captions["fp32"], captions["fp16"]))
        total += len(captions["fp32"])
        index += args.block
    print(f"model {args.model}, {args.threads} threads, {args.frames} frames each, 640x480, 8 regions, dense\n")
    print(f"| graphs | export s | MiB (5 graphs) | ORT ms/frame (median) | max rel. error vs torch fp32 |")
    print("|---|---|---|---|---|")
    for precision, manifest in manifests.items():
        mib = sum(g["bytes"] for g in manifest["graphs"].values()) / 2**20
        sizes = " + ".join(f"{g['bytes'] / 2**20:.2f}" for g in manifest["graphs"].values())
        print(f"| {precision} | {manifest['wall_s']:.1f} | {mib:.1f} ({sizes}) | "
              f"{statistics.median(times[precision]):.1f} | {max(manifest['verification'].values()):.1e} |")
    ratio = statistics.median(times["fp16"]) / statistics.median(times["fp32"])
    print(f"\nfp16 / fp32 time: {ratio:.2f}x; captions identical: {same}/{total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
