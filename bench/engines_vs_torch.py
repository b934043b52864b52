"""Benchmark (not a test): ONNX Runtime vs torch eager, per frame, on this CPU.

One 640x480 frame with 8 regions, the regional ("dense") task, through `Captioner.caption` (preprocessing, frame
encoder, region encoder, batched KV-cached greedy decoding), each backend in its own persistent worker process, fed
the same frames in alternating blocks of `--block` frames (the first frame after a switch untimed; why:
bench/README.md). Reports the median per-frame latency of each (and per stage), their ratio (target >= 1.3x),
whether the captions agree, the export time and the ONNX file sizes.

    PYTHONPATH=. python bench/engines_vs_torch.py [--model DIR] [--threads N] [--frames 40] [--block 5] [--json out.json]

Without --model it uses the packaged default model, or a random-init tiny model when that is absent (a random model
never emits EOS, so every caption runs to --max-new-tokens: the decoder's worst case).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
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


def load_captioner(backend: str, model_dir: Path, engine_dir: Path, threads: int) -> Captioner:
    """The Captioner a worker process serves, with the same CPU budget, `threads`, for both: torch's threads in
    the torch worker, ONNX Runtime's in the other (whose captioner then sets torch, used only to preprocess, to one
    thread: see OnnxRuntimeBackend)."""
    torch.set_num_threads(threads)
    if backend == "torch":
        return Captioner.from_pretrained(model_dir, num_threads=threads)
    return Captioner.from_pretrained(model_dir, backend="onnxruntime", engine_dir=engine_dir, num_threads=threads)


def worker(connection, backend: str, model_dir: str, engine_dir: str, threads: int) -> None:
    """One backend in its own process: load once, then caption each frame sent until None arrives.

    Replies ("ready", None), then per frame ("ok", (captions, stage timings of the frame, wall ms)); any failure is
    ("error", traceback) and ends the worker."""
    warnings.filterwarnings("ignore")
    try:
        captioner = load_captioner(backend, Path(model_dir), Path(engine_dir), threads)
        connection.send(("ready", None))
        while (message := connection.recv()) is not None:
            image, masks, max_new_tokens = message
            begun = time.perf_counter()
            results = captioner.caption(image, masks, task="dense", max_new_tokens=max_new_tokens)
            wall = (time.perf_counter() - begun) * 1000
            connection.send(("ok", ([r.caption for r in results], results[0].timings_ms, wall)))
    except BaseException:  # noqa: BLE001 - report anything to the parent, which raises it
        connection.send(("error", traceback.format_exc()))
    finally:
        connection.close()


class Worker:
    """The parent's handle on one worker process."""

    def __init__(self, context, backend: str, model_dir: Path, engine_dir: Path, threads: int):
        self.backend = backend
        self.connection, child = context.Pipe()
        self.process = context.Process(
            target=worker, args=(child, backend, str(model_dir), str(engine_dir), threads),
            name=f"bench-{backend}", daemon=True)
        self.process.start()
        child.close()

    def receive(self):
        try:
            status, payload = self.connection.recv()
        except EOFError:
            raise RuntimeError(f"the {self.backend} worker died (exit code {self.process.exitcode})") from None
        if status == "error":
            raise RuntimeError(f"the {self.backend} worker failed:\n{payload}")
        return payload

    def caption(self, image, masks, max_new_tokens):
        self.connection.send((image, masks, max_new_tokens))
        return self.receive()

    def close(self):
        try:
            self.connection.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=None, help="threads for both backends (default: torch's)")
    parser.add_argument("--frames", type=int, default=40, help="frames per backend after the warm-up")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--block", type=int, default=5,
                        help="frames each backend captions back to back before the other takes over; the first "
                             "frame after a switch is not timed (1 = alternate every frame, all timed)")
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
        frames = [frame_with_regions(seed, args.regions) for seed in range(args.warmup + args.frames)]
        context = multiprocessing.get_context("spawn")
        backends = {name: Worker(context, name, model_dir, scratch / "onnx", threads)
                    for name in ("torch", "onnxruntime")}
        try:
            for handle in backends.values():
                handle.receive()  # ("ready"): both loaded before the first frame
            timings = {name: {stage: [] for stage in STAGES} for name in backends}
            agree = total = 0
            for block, start in enumerate(range(0, len(frames), args.block)):
                chunk = range(start, min(start + args.block, len(frames)))
                outputs = {name: {} for name in backends}
                order = list(backends) if block % 2 == 0 else list(reversed(backends))
                for name in order:
                    for index in chunk:
                        image, masks = frames[index]
                        captions, stage_ms, wall = backends[name].caption(image, masks, args.max_new_tokens)
                        outputs[name][index] = captions
                        switched = args.block > 1 and index == chunk[0]  # the other worker ran just before
                        if index >= args.warmup and not switched:
                            for stage in STAGES[:-1]:
                                timings[name][stage].append(stage_ms[stage])
                            timings[name]["total"].append(wall)
                for index in chunk:
                    agree += sum(a == b for a, b in zip(outputs["torch"][index], outputs["onnxruntime"][index]))
                    total += len(outputs["torch"][index])
        finally:
            for handle in backends.values():
                handle.close()

    medians = {name: {stage: statistics.median(v) for stage, v in stages.items()} for name, stages in timings.items()}
    ratio = medians["torch"]["total"] / medians["onnxruntime"]["total"]
    sizes = {name: graph["bytes"] for name, graph in manifest["graphs"].items()}
    print(f"model: {manifest['model']['name']} ({source}), {platform.processor() or platform.machine()}, "
          f"{threads} threads, torch {torch.__version__}, one worker process per backend")
    timed = len(timings["torch"]["total"])
    print(f"frame 640x480, {args.regions} regions, task dense, {timed} timed frames per backend in blocks of "
          f"{args.block} (+{args.warmup} warm-up), median ms per frame:\n")
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
