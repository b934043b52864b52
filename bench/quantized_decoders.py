"""Weight-only int8 and int4 decoder graphs against float ones under ONNX Runtime (CPU): decoder sizes, ms per decode
step, and how many regions keep the same greedy captions.

    python bench/quantized_decoders.py [--model DIR] [--precision fp32|fp16] [--scenes 20] [--steps 16]
                                       [--max-new-tokens N]

The three exports of the same model and precision, the decode steps timed in turn in one process (8 regions,
2 threads, medians); captions over fresh eval scenes, dense task plus two attributes every fourth scene, compared
as generated token ids (a model with random weights, e.g. the 1B config's, emits ids that the demo tokenizer
decodes to empty text). Each export runs in a process of its own (`finecaption export-onnx`), so that a big
model's export peak (~18 GiB for the 1B config in fp32) is not added to the captioners already loaded; they go to
a temporary folder, removed at the end.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import numpy as np  # noqa: E402

from finecaption_ros.captioner import Captioner  # noqa: E402
from finecaption_ros.data.scenes import SceneGenerator  # noqa: E402
from finecaption_ros.engines.manifest import MANIFEST_NAME  # noqa: E402
from finecaption_ros.model.finecaption import DEFAULT_MODEL_DIR  # noqa: E402
from engines_1b import as_token_ids  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16"))
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--regions", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weights", default="float,int8,int4", help="comma-separated, float first")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="caption length (default: the model's)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="quantized_"))
    try:
        return run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args, work: Path) -> int:
    manifests, captioners = {}, {}
    kinds = args.weights.split(",")
    for weights in kinds:
        subprocess.run([sys.executable, "-m", "finecaption_ros.cli", "export-onnx", "--model", str(args.model),
                        "--out", str(work / weights), "--precision", args.precision, "--weights", weights],
                       check=True, stdout=subprocess.DEVNULL)
        manifests[weights] = json.loads((work / weights / MANIFEST_NAME).read_text())
    for weights in kinds:
        captioners[weights] = as_token_ids(Captioner.from_pretrained(args.model, backend="onnxruntime",
                                                                     engine_dir=work / weights,
                                                                     num_threads=args.threads))
    generator = SceneGenerator(split="eval", seed=777)
    same, scenes_same, total = dict.fromkeys(kinds, 0), dict.fromkeys(kinds, 0), 0
    for index in range(args.scenes):
        scene = generator.sample()
        task, attributes = ("attribute", ["color", "relative_location"]) if index % 4 == 3 else ("dense", None)
        got = {w: [r.caption for r in c.caption(scene.image, scene.labels, task=task, attributes=attributes,
                                                max_new_tokens=args.max_new_tokens)] for w, c in captioners.items()}
        total += len(got["float"])
        for weights in kinds:
            same[weights] += sum(a == b for a, b in zip(got["float"], got[weights]))
            scenes_same[weights] += got["float"] == got[weights]
    manifest = manifests["float"]
    rng = np.random.default_rng(0)
    dtype = np.float16 if args.precision == "fp16" else np.float32
    visual = rng.standard_normal((args.regions, manifest["num_visual_tokens"], manifest["hidden_size"])).astype(dtype)
    sessions = {w: c.engine.decoder_session() for w, c in captioners.items()}
    state = {}
    for weights, session in sessions.items():
        prompt = np.full((args.regions, 10), 5, dtype=np.int64)
        attention = np.ones((args.regions, visual.shape[1] + 10), dtype=np.int64)
        state[weights] = (session.prefill(visual, prompt, attention, np.cumsum(attention, 1) - 1), attention)
    times = {w: [] for w in sessions}
    for _ in range(args.steps):
        for weights, session in sessions.items():
            logits, attention = state[weights]
            attention = np.concatenate([attention, np.ones((args.regions, 1), np.int64)], 1)
            started = time.perf_counter()
            logits = session.step(logits.argmax(1)[:, None].astype(np.int64), attention,
                                  attention.sum(1, keepdims=True) - 1)
            times[weights].append((time.perf_counter() - started) * 1000)
            state[weights] = (logits, attention)
    print(f"{manifest['model']['name']} ({args.model}), {args.precision} graphs, ONNX Runtime CPU, "
          f"{args.threads} threads\n")
    print(f"| decoder weights | decoder graphs MiB (prefill + step) | ms per decode step, {args.regions} regions | "
          f"max rel. error vs torch fp32 (prefill, step) | captions (token ids) same as float |")
    print("|---|---|---|---|---|")
    for weights, m in manifests.items():
        sizes = [m["graphs"][g]["bytes"] / 2**20 for g in ("decoder_prefill", "decoder_step")]
        errors = [m["verification"][g] for g in ("decoder_prefill", "decoder_step")]
        agreement = "" if weights == "float" else \
            f"{same[weights]}/{total} regions, {scenes_same[weights]}/{args.scenes} scenes"
        print(f"| {weights} | {sizes[0]:.2f} + {sizes[1]:.2f} | {statistics.median(times[weights][1:]):.2f} | "
              f"{errors[0]:.1e}, {errors[1]:.1e} | {agreement} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
