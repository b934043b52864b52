"""Benchmark (not a test): ONNX Runtime vs torch eager, per frame, on this CPU.

One 640x480 frame with 8 regions, the regional ("dense") task, through `Captioner.caption` (preprocessing, frame
encoder, region encoder, batched KV-cached greedy decoding). Both backends run side by side in one process,
alternating frame by frame so background load hits both alike, with the same thread count. Reports the median
per-frame latency of each (and per stage), their ratio (target >= 1.3x), whether the captions agree, the export
time and the ONNX file sizes.

    PYTHONPATH=. python bench/engines_vs_torch.py [--model DIR] [--threads N] [--frames 30] [--json out.json]

Without --model it uses the packaged default model, or a random-init tiny model when that is absent (a random model
never emits EOS, so every caption runs to --max-new-tokens: the decoder's worst case).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from finecaption_ros.captioner import DEFAULT_MODEL_DIR, Captioner
from finecaption_ros.data.scenes import SceneGenerator
from finecaption_ros.engines.export import export_onnx

STAGES = ("preprocess", "frame_encoder", "region_encoder", "decoder", "total")


def frame_with_regions(seed: int, count: int = 8, height: int = 480, width: int = 640):
    """A synthetic 640x480 scene; objects first, then background tiles until there are `count` regions."""
    scene = SceneGenerator(height=height, width=width, min_objects=min(6, count), max_objects=min(6, count),
                           seed=seed).sample()
    masks = [scene.labels == o.region_id for o in scene.objects][:count]
    rows, cols = 2, 4
    tile = 0
    while len(masks) < count:
        r, c = divmod(tile, cols)
        box = np.zeros((height, width), dtype=bool)
        box[r * height // rows:(r + 1) * height // rows, c * width // cols:(c + 1) * width // cols] = True
        free = box & (scene.labels == 0)
        if free.any():
            masks.append(free)
        tile = (tile + 1) % (rows * cols)
    return scene.image, masks


def model_dir_or_random(path: str | None, scratch: Path) -> tuple[Path, str]:
    if path:
        return Path(path), "given"
    if (DEFAULT_MODEL_DIR / "model.safetensors").is_file():
        return DEFAULT_MODEL_DIR, "packaged default"
    from finecaption_ros.train import TrainSettings, new_model

    torch.manual_seed(0)
    model, tokenizer = new_model(TrainSettings())
    model.save_pretrained(scratch / "random", tokenizer)
    return scratch / "random", "random-init tiny (no packaged default model yet)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=None, help="threads for both backends (default: torch's)")
    parser.add_argument("--frames", type=int, default=30, help="timed frames per backend")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--regions", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    warnings.filterwarnings("ignore")

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        model_dir, source = model_dir_or_random(args.model, scratch)
        started = time.perf_counter()
        manifest = export_onnx(model_dir, scratch / "onnx", progress=lambda m: None)
        export_s = time.perf_counter() - started
        backends = {"torch": Captioner.from_pretrained(model_dir),
                    "onnxruntime": Captioner.from_pretrained(model_dir, backend="onnxruntime",
                                                             engine_dir=scratch / "onnx", num_threads=threads)}
        frames = [frame_with_regions(seed) for seed in range(args.warmup + args.frames)]
        timings = {name: {stage: [] for stage in STAGES} for name in backends}
        agree = total = 0
        for index, (image, masks) in enumerate(frames):
            outputs = {}
            order = list(backends) if index % 2 == 0 else list(reversed(backends))
            for name in order:
                begun = time.perf_counter()
                results = backends[name].caption(image, masks, task="dense", max_new_tokens=args.max_new_tokens)
                wall = (time.perf_counter() - begun) * 1000
                outputs[name] = [r.caption for r in results]
                if index >= args.warmup:
                    for stage in STAGES[:-1]:
                        timings[name][stage].append(results[0].timings_ms[stage])
                    timings[name]["total"].append(wall)
            agree += sum(a == b for a, b in zip(outputs["torch"], outputs["onnxruntime"]))
            total += len(outputs["torch"])

    medians = {name: {stage: statistics.median(v) for stage, v in stages.items()} for name, stages in timings.items()}
    ratio = medians["torch"]["total"] / medians["onnxruntime"]["total"]
    sizes = {name: graph["bytes"] for name, graph in manifest["graphs"].items()}
    print(f"model: {manifest['model']['name']} ({source}), {platform.processor() or platform.machine()}, "
          f"{threads} threads, torch {torch.__version__}")
    print(f"frame 640x480, {args.regions} regions, task dense, {args.frames} timed frames (+{args.warmup} warm-up), "
          f"median ms per frame:\n")
    print(f"{'stage':<16}{'torch eager':>14}{'onnxruntime':>14}{'speed-up':>10}")
    for stage in STAGES:
        t, o = medians["torch"][stage], medians["onnxruntime"][stage]
        print(f"{stage:<16}{t:>14.1f}{o:>14.1f}{t / max(o, 1e-9):>9.2f}x")
    print(f"\nONNX Runtime is {ratio:.2f}x torch eager per frame (target >= 1.3x: "
          f"{'met' if ratio >= 1.3 else 'NOT met'}); captions identical for {agree}/{total} regions")
    print(f"export: {export_s:.1f} s for {len(sizes)} graphs, "
          + ", ".join(f"{name} {b / 2**20:.2f} MiB" for name, b in sizes.items())
          + f" (total {sum(sizes.values()) / 2**20:.2f} MiB)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "model": manifest["model"], "model_source": source, "threads": threads, "frames": args.frames,
            "median_ms": medians, "ratio": ratio, "captions_identical": [agree, total],
            "export_seconds": export_s, "onnx_bytes": sizes}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
