"""The 1B-class config (`configs/finecaption_1b.json`) through the engine path on this machine: random weights,
fp16 export with external data, ONNX Runtime vs torch parity on a few frames, CPU ms per decode step.

    python bench/engines_1b.py [--work DIR] [--stages model,export,torch,ort] [--scenes 2] [--steps 8]

Resumable: each stage runs in its own process (so its peak RSS is its own, and memory is returned between stages)
and writes `<work>/results/<stage>.json`; a stage whose file exists is skipped, so rerunning the same command with
the same `--work` goes on where it stopped. The stages:
- model: random weights (seed 0) saved as a model directory.
- export: `export_onnx(..., precision="fp16")`: time, graph and data file sizes, ONNX Runtime vs fp32 torch error
  of each graph on the exporter's example inputs.
- torch: fp32 torch captions (dense, 6 new tokens) of `--scenes` eval scenes, as token ids: random weights pick ids
  past the demo tokenizer's vocabulary, which decode to empty text, so text would agree vacuously.
- ort: the same scenes under ONNX Runtime (fp16 graphs): how many token-id captions match torch's; then ms per step
  at 1, 8 and 32 regions (the step graph fed a random KV cache of visual + 12 prompt tokens, so no 32-region
  prefill is needed; medians of `--steps`).
At the end the tables of every finished stage are printed, and the stages still missing are named.
Heavy: ~5.6 GB of fp32 weights on disk, ~3 GB of graphs, ~14 GiB peak RSS; not part of the tests. Results:
README, "Real-size models".
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIG = ROOT / "finecaption_ros" / "configs" / "finecaption_1b.json"
STAGES = ("model", "export", "torch", "ort")
SCENE_SEED = 4242


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}, peak RSS {peak_rss_gib():5.2f} GiB] {message}", flush=True)


def scenes(count: int):
    from finecaption_ros.data.scenes import SceneGenerator

    generator = SceneGenerator(split="eval", seed=SCENE_SEED)
    return [generator.sample() for _ in range(count)]


def stage_model(work: Path, args) -> dict:
    import torch

    from finecaption_ros.model.config import FineCaptionConfig
    from finecaption_ros.model.finecaption import DEFAULT_MODEL_DIR, FineCaptionModel, load_tokenizer

    started = time.monotonic()
    torch.manual_seed(0)
    model = FineCaptionModel(FineCaptionConfig.load(CONFIG)).eval()
    count = sum(p.numel() for p in model.parameters())
    model.save_pretrained(work / "model", load_tokenizer(DEFAULT_MODEL_DIR))
    return {"parameters": count, "seconds": round(time.monotonic() - started, 1)}


def stage_export(work: Path, args) -> dict:
    from finecaption_ros.engines.export import export_onnx

    out = work / "onnx_fp16"
    started = time.monotonic()
    manifest = export_onnx(work / "model", out, precision="fp16", progress=say)
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.name.endswith((".onnx", ".data"))}
    return {"seconds": round(time.monotonic() - started, 1), "files": files, "verification": manifest["verification"],
            "graph_seconds": {n: g["export_seconds"] for n, g in manifest["graphs"].items()}}


def as_token_ids(captioner):
    """The captioner's captions become the generated token ids, space-separated (see the torch stage)."""
    captioner.tokenizer.decode = lambda ids, skip_special_tokens=True: " ".join(str(int(i)) for i in ids)
    return captioner


def stage_torch(work: Path, args) -> dict:
    from finecaption_ros.captioner import Captioner

    captioner = as_token_ids(Captioner.from_pretrained(work / "model"))
    captions, started = [], time.monotonic()
    for scene in scenes(args.scenes):
        captions.append([r.caption for r in captioner.caption(scene.image, scene.labels, task="dense",
                                                              max_new_tokens=args.new_tokens)])
        say(f"torch scene {len(captions)}: {captions[-1]}")
    return {"captions": captions, "seconds": round(time.monotonic() - started, 1)}


def stage_ort(work: Path, args) -> dict:
    import numpy as np

    from finecaption_ros.captioner import Captioner
    from finecaption_ros.engines import graphs as G

    reference = json.loads((work / "results" / "torch.json").read_text())["captions"]
    captioner = as_token_ids(Captioner.from_pretrained(work / "model", backend="onnxruntime",
                                                       engine_dir=work / "onnx_fp16", num_threads=args.threads))
    say("ONNX Runtime captioner loaded")
    captions, started = [], time.monotonic()
    for scene in scenes(len(reference)):
        captions.append([r.caption for r in captioner.caption(scene.image, scene.labels, task="dense",
                                                              max_new_tokens=args.new_tokens)])
        say(f"ONNX Runtime scene {len(captions)}: {captions[-1]}")
    caption_seconds = time.monotonic() - started
    same = sum(a == b for got, ref in zip(captions, reference) for a, b in zip(got, ref))
    total = sum(len(ref) for ref in reference)

    backend = captioner.engine
    manifest = backend.manifest
    heads, head_dim = manifest["num_key_value_heads"], manifest["head_dim"]
    past = manifest["num_visual_tokens"] + 12
    rng = np.random.default_rng(0)
    step_ms = {}
    for regions in (1, 8, 32):
        session = backend.decoder_session()
        # A random cache of the right shape stands in for the prefill's: a step costs the same either way.
        session.shards = backend.runner.split(regions)
        session.caches = [[rng.standard_normal((s.stop - s.start, heads, past, head_dim)).astype(np.float16)
                           for _ in range(2 * manifest["num_layers"])] for s in session.shards]
        attention = np.ones((regions, past), np.int64)
        token = np.full((regions, 1), 5, np.int64)
        times = []
        for _ in range(args.steps):
            attention = np.concatenate([attention, np.ones((regions, 1), np.int64)], 1)
            started = time.perf_counter()
            logits = session.step(token, attention, attention.sum(1, keepdims=True) - 1)
            times.append((time.perf_counter() - started) * 1000)
            token = logits.argmax(1)[:, None].astype(np.int64)
        step_ms[regions] = round(statistics.median(times[1:] or times), 1)
        say(f"{regions} regions: {step_ms[regions]} ms per decode step")
    return {"captions": captions, "same": same, "total": total, "caption_seconds": round(caption_seconds, 1),
            "step_ms": step_ms, "threads": args.threads}


def run_stage(name: str, work: Path, args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    say(f"stage {name} started")
    result = globals()[f"stage_{name}"](work, args)
    result["peak_rss_gib"] = round(peak_rss_gib(), 2)
    (work / "results").mkdir(exist_ok=True)
    (work / "results" / f"{name}.json").write_text(json.dumps(result, indent=1))
    say(f"stage {name} done")


def report(work: Path) -> None:
    results = {s: json.loads((work / "results" / f"{s}.json").read_text()) for s in STAGES
               if (work / "results" / f"{s}.json").is_file()}
    print(f"\n{CONFIG.name} in {work}: stages finished {', '.join(results) or 'none'}; "
          f"missing {', '.join(s for s in STAGES if s not in results) or 'none'}")
    print("| stage | seconds | peak RSS GiB |\n|---|---|---|")
    for name, result in results.items():
        seconds = result.get("seconds", result.get("caption_seconds"))
        print(f"| {name} | {seconds} | {result['peak_rss_gib']} |")
    if "model" in results:
        print(f"\nparameters: {results['model']['parameters'] / 1e9:.3f} B")
    if "export" in results:
        files = results["export"]["files"]
        print("\n| file | MiB |\n|---|---|")
        for name, size in files.items():
            print(f"| {name} | {size / 2**20:,.1f} |")
        print(f"| all | {sum(files.values()) / 2**20:,.1f} |")
        print("\n| graph | export s | ORT fp16 vs torch fp32, max rel. error |\n|---|---|---|")
        for name, error in results["export"]["verification"].items():
            print(f"| {name} | {results['export']['graph_seconds'][name]} | {error:.1e} |")
    if "ort" in results:
        ort = results["ort"]
        print(f"\ncaptions (token ids) identical, ONNX Runtime fp16 vs torch fp32: {ort['same']}/{ort['total']} "
              "regions")
        print(f"\n| regions | ORT ms per decode step ({ort['threads']} threads) |\n|---|---|")
        for regions, ms in ort["step_ms"].items():
            print(f"| {regions} | {ms} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "engines_1b")
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # one stage, in this process
    parser.add_argument("--scenes", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=6)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.stage:
        run_stage(args.stage, args.work, args)
        return 0
    for name in args.stages.split(","):
        if name not in STAGES:
            parser.error(f"unknown stage {name!r}; stages: {','.join(STAGES)}")
        if (args.work / "results" / f"{name}.json").is_file():
            say(f"stage {name}: done before, skipped")
            continue
        command = [sys.executable, __file__, "--stage", name, "--work", str(args.work), "--scenes", str(args.scenes),
                   "--new-tokens", str(args.new_tokens), "--steps", str(args.steps), "--threads", str(args.threads)]
        if subprocess.run(command).returncode != 0:
            say(f"stage {name} failed; rerun the same command to retry it")
            break
    report(args.work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
