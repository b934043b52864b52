"""The 1B-class config (`configs/finecaption_1b.json`) through the engine path on this machine: random weights,
fp16 export with external data, ONNX Runtime vs torch parity on a few frames, CPU ms per decode step.

    python bench/engines_1b.py [--work DIR] [--scenes 2] [--steps 8]

Prints export time, graph and data file sizes, peak RSS after each phase, the parity (captions and relative
error of the prefill logits against the fp32 torch model), and ONNX Runtime's median ms per decode step at 1, 8
and 32 regions (2 threads). Heavy (memory: bench/README.md); not part of the tests.
"""
from __future__ import annotations

import argparse
import gc
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from finecaption_ros.captioner import Captioner  # noqa: E402
from finecaption_ros.data.scenes import SceneGenerator  # noqa: E402
from finecaption_ros.engines.export import export_onnx, relative_error  # noqa: E402
from finecaption_ros.engines.ort_backend import OnnxRuntimeBackend  # noqa: E402
from finecaption_ros.model.config import FineCaptionConfig  # noqa: E402
from finecaption_ros.model.finecaption import DEFAULT_MODEL_DIR, FineCaptionModel, load_tokenizer  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "finecaption_ros" / "configs" / "finecaption_1b.json"
START = time.monotonic()


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def say(message: str) -> None:
    print(f"[{time.monotonic() - START:7.1f}s, peak RSS {rss_gib():5.2f} GiB] {message}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--scenes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="finecaption_1b_"))
    model_dir, onnx_dir = work / "model", work / "onnx_fp16"
    if not (model_dir / "model.safetensors").is_file():
        torch.manual_seed(0)
        model = FineCaptionModel(FineCaptionConfig.load(CONFIG)).eval()
        count = sum(p.numel() for p in model.parameters())
        model.save_pretrained(model_dir, load_tokenizer(DEFAULT_MODEL_DIR))
        say(f"random {CONFIG.name}: {count / 1e9:.3f} B parameters saved to {model_dir}")
        del model
        gc.collect()
    started = time.monotonic()
    manifest = export_onnx(model_dir, onnx_dir, precision="fp16", progress=say)
    export_s = time.monotonic() - started
    say(f"fp16 export in {export_s:.0f} s")
    files = {f: (onnx_dir / f).stat().st_size for f in sorted(p.name for p in onnx_dir.iterdir())
             if f.endswith(".onnx") or f.endswith(".data")}
    gc.collect()

    torch_captioner = Captioner.from_pretrained(model_dir)
    ort = Captioner.from_pretrained(model_dir, backend="onnxruntime", engine_dir=onnx_dir, num_threads=args.threads)
    torch.set_num_threads(args.threads)
    say("captioners loaded")
    generator = SceneGenerator(split="eval", seed=4242)
    same = total = 0
    for _ in range(args.scenes):
        scene = generator.sample()
        a = [r.caption for r in torch_captioner.caption(scene.image, scene.labels, task="dense", max_new_tokens=6)]
        b = [r.caption for r in ort.caption(scene.image, scene.labels, task="dense", max_new_tokens=6)]
        same += sum(x == y for x, y in zip(a, b))
        total += len(a)
    say(f"captions identical: {same}/{total}")

    backend: OnnxRuntimeBackend = ort.engine
    visual_tokens = manifest["num_visual_tokens"]
    step_ms = {}
    rng = np.random.default_rng(0)
    for regions in (1, 8, 32):
        visual = rng.standard_normal((regions, visual_tokens, manifest["hidden_size"])).astype(np.float16)
        prompt = np.full((regions, 12), 5, dtype=np.int64)
        attention = np.ones((regions, visual_tokens + 12), dtype=np.int64)
        session = backend.decoder_session()
        logits = session.prefill(visual, prompt, attention, np.cumsum(attention, 1) - 1)
        times = []
        for _ in range(args.steps):
            token = logits.argmax(1)[:, None].astype(np.int64)
            attention = np.concatenate([attention, np.ones((regions, 1), np.int64)], 1)
            started = time.perf_counter()
            logits = session.step(token, attention, attention.sum(1, keepdims=True) - 1)
            times.append((time.perf_counter() - started) * 1000)
        step_ms[regions] = statistics.median(times[1:])
        say(f"{regions} regions: {step_ms[regions]:.1f} ms per decode step")

    print(f"\n{CONFIG.name}, {manifest['model']['name']}: fp16 graphs, external data, opset {manifest['opset']}")
    print(f"export {export_s:.0f} s; peak RSS {rss_gib():.2f} GiB; captions identical {same}/{total}")
    print("| file | MiB |\n|---|---|")
    for name, size in files.items():
        print(f"| {name} | {size / 2**20:,.1f} |")
    print(f"| all | {sum(files.values()) / 2**20:,.1f} |")
    print("\n| graph | ORT vs torch fp32, max rel. error |\n|---|---|")
    for name, error in manifest["verification"].items():
        print(f"| {name} | {error:.1e} |")
    print(f"\n| regions | ORT ms per decode step ({args.threads} threads) |\n|---|---|")
    for regions, ms in step_ms.items():
        print(f"| {regions} | {ms:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
