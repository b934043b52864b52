"""GPU check for the engine layer (< 5 minutes on a machine with an NVIDIA GPU): export (fp32 graphs, and the fp16
graphs that fp16 plans are built from), build fp16 TensorRT plans (strongly typed on TensorRT >= 10.12), compare
TensorRT with ONNX Runtime and torch (tokens and relative error), time them, print one table.

    engine/gpu_check.sh [--model DIR] [--frames 20] [--scenes 10] [--precision fp16] [--out DIR] [--json FILE]

Each piece that is missing (no GPU, CPU-only torch, no onnxruntime-gpu, no tensorrt) is reported and skipped; the
rest still runs, so a machine without `tensorrt` still yields the CUDA torch and ONNX Runtime rows. Timings are the
median latency of one 640x480 frame with 8 regions, dense task, through `Captioner.caption`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from finecaption_ros.captioner import Captioner  # noqa: E402
from finecaption_ros.data.scenes import SceneGenerator  # noqa: E402
from finecaption_ros.engines.export import example_inputs, export_onnx, relative_error  # noqa: E402
from finecaption_ros.model.finecaption import DEFAULT_MODEL_DIR, FineCaptionModel  # noqa: E402

START = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - START:6.1f}s] {message}", flush=True)


def environment() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["compute_capability"] = "%d.%d" % torch.cuda.get_device_capability(0)
    elif shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True).stdout.strip()
        info["gpu"] = out or "nvidia-smi gave no answer"
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
        info["ort_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        info["onnxruntime"] = None
    try:
        import tensorrt

        info["tensorrt"] = tensorrt.__version__
    except ImportError as error:
        info["tensorrt"] = None
        info["tensorrt_error"] = str(error)
    return info


class CudaTorchBackend:
    """torch eager on the GPU (the captioner's own torch backend runs on the CPU)."""

    name = "torch-cuda"

    def __init__(self, model_dir: Path):
        self.model = FineCaptionModel.from_pretrained(model_dir).cuda().eval()

    @torch.inference_mode()
    def encode_frames(self, hr):
        return self.model.encode_frames(hr.cuda() if hr is not None else None)

    @torch.inference_mode()
    def visual_tokens(self, lr, masks, boxes, frames, frame_index):
        return self.model.visual_tokens(lr.cuda(), masks.cuda(), boxes.cuda(), frames, frame_index.cuda())

    def decoder_session(self):
        return CudaTorchSession(self.model)


class CudaTorchSession:
    """TorchDecoderSession with the model and every tensor on the GPU."""

    def __init__(self, model):
        self.model, self.cache = model, None

    @torch.inference_mode()
    def prefill(self, visual, prompt_ids, attention, positions):
        from transformers import DynamicCache

        embeds = torch.cat([torch.as_tensor(visual).cuda(), self.model.embed_tokens(_gpu(prompt_ids))], dim=1)
        self.cache = DynamicCache()
        out = self.model.decoder(inputs_embeds=embeds, attention_mask=_gpu(attention), position_ids=_gpu(positions),
                                 past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].float().cpu().numpy()

    @torch.inference_mode()
    def step(self, token_ids, attention, positions):
        out = self.model.decoder(input_ids=_gpu(token_ids), attention_mask=_gpu(attention),
                                 position_ids=_gpu(positions), past_key_values=self.cache, use_cache=True)
        return out.logits[:, -1].float().cpu().numpy()


def _gpu(array) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).cuda()


def frame_with_regions(seed: int):
    from engines_vs_torch import frame_with_regions as make

    return make(seed)


def time_backend(captioner: Captioner, frames, warmup: int = 2) -> tuple[float, list[list[str]]]:
    latencies, captions = [], []
    for index, (image, masks) in enumerate(frames):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        results = captioner.caption(image, masks, task="dense")
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if index >= warmup:
            latencies.append((time.perf_counter() - started) * 1000)
        captions.append([r.caption for r in results])
    return statistics.median(latencies), captions


def encoder_and_logit_errors(backend, reference, model: FineCaptionModel) -> float:
    """Max relative error of frame features, visual tokens and prefill logits, backend vs reference backend."""
    x = example_inputs(model, frames=1, regions=6, seed=1)
    x["frame_index"] = torch.zeros(6, dtype=torch.long)
    errors = []
    outputs = {}
    for name, b in (("test", backend), ("ref", reference)):
        frames = b.encode_frames(x["hr"])
        visual = b.visual_tokens(x["lr"], x["masks"], x["boxes"], frames, x["frame_index"])
        session = b.decoder_session()
        prompts = np.full((6, 8), 7, dtype=np.int64)
        attention = np.ones((6, visual.shape[1] + 8), dtype=np.int64)
        positions = np.cumsum(attention, axis=1) - 1
        logits = session.prefill(visual, prompts, attention, positions)
        outputs[name] = [frames.coarse, frames.fine, visual, logits]
    for got, want in zip(outputs["test"], outputs["ref"]):
        if got is None:
            continue
        got = got.float().cpu().numpy() if isinstance(got, torch.Tensor) else got
        want = want.float().cpu().numpy() if isinstance(want, torch.Tensor) else want
        errors.append(relative_error(got, want))
    return max(errors)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model dir (default: packaged model, else random-init tiny)")
    parser.add_argument("--frames", type=int, default=20, help="timed frames per backend")
    parser.add_argument("--scenes", type=int, default=10, help="scenes for the token comparison")
    parser.add_argument("--precision", choices=("fp16", "fp32"), default="fp16")
    parser.add_argument("--out", default=None, help="work dir (default: a temp dir, removed afterwards)")
    parser.add_argument("--json", default=None, help="also write the table as JSON here")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")

    env = environment()
    say("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    if not env["cuda_available"]:
        say("NOTE: torch sees no CUDA GPU (CPU-only torch or no GPU): the torch-cuda and tensorrt rows are skipped")
    if env["tensorrt"] is None:
        say("NOTE: tensorrt is not installed (pip install 'tensorrt-cu12>=10,<11.5' on CUDA 12, "
            "'tensorrt-cu13>=10.13,<11.5' on CUDA 13, apt install python3-libnvinfer on Jetson): the tensorrt rows "
            "are skipped")
    if env["onnxruntime"] is None:
        say("NOTE: onnxruntime is not installed: the onnxruntime rows are skipped")

    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="finecaption_gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.model:
        model_dir, source = Path(args.model), "given"
    elif (DEFAULT_MODEL_DIR / "model.safetensors").is_file():
        model_dir, source = DEFAULT_MODEL_DIR, "packaged default"
    else:
        from finecaption_ros.train import TrainSettings, new_model

        torch.manual_seed(0)
        model, tokenizer = new_model(TrainSettings())
        model_dir, source = work / "random_model", "random-init tiny (no packaged model)"
        model.save_pretrained(model_dir, tokenizer)
    say(f"model {model_dir} ({source})")

    onnx_dir = work / "onnx"
    rows, notes = [], []
    try:
        started = time.monotonic()
        manifest = export_onnx(model_dir, onnx_dir, progress=lambda m: None)
        say(f"exported in {time.monotonic() - started:.1f} s; ORT-CPU vs torch-CPU max rel. error "
            f"{max(manifest['verification'].values()):.2e}")
        if args.precision == "fp16":  # what fp16 plans are built from, where build_engines looks for them
            manifest = export_onnx(model_dir, onnx_dir / "fp16", progress=lambda m: None, precision="fp16")
            say(f"fp16 graphs exported; ORT-CPU fp16 vs torch-CPU fp32 max rel. error "
                f"{max(manifest['verification'].values()):.2e}")
    except Exception as error:  # without graphs only the torch rows remain
        traceback.print_exc()
        notes.append(f"export failed: {error}")
        onnx_dir = None

    cpu_threads = torch.get_num_threads()
    captioners = {"torch (cpu, fp32)": Captioner.from_pretrained(model_dir)}
    if env["cuda_available"]:
        cuda = Captioner.from_pretrained(model_dir)
        cuda.engine = CudaTorchBackend(model_dir)
        captioners["torch (cuda, fp32)"] = cuda
    if onnx_dir is not None and env["onnxruntime"]:
        captioners["onnxruntime (cpu, fp32)"] = Captioner.from_pretrained(
            model_dir, backend="onnxruntime", engine_dir=onnx_dir, providers=["CPUExecutionProvider"])
        if args.precision == "fp16":
            captioners["onnxruntime (cpu, fp16 graphs)"] = Captioner.from_pretrained(
                model_dir, backend="onnxruntime", engine_dir=onnx_dir / "fp16", providers=["CPUExecutionProvider"])
        if "CUDAExecutionProvider" in env.get("ort_providers", []):
            captioners["onnxruntime (cuda, fp32)"] = Captioner.from_pretrained(
                model_dir, backend="onnxruntime", engine_dir=onnx_dir,
                providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    if onnx_dir is not None and env["tensorrt"] and env["cuda_available"]:
        try:
            started = time.monotonic()
            say(f"building {args.precision} TensorRT plans (progress below)")
            from finecaption_ros.engines.trt_build import build_engines

            plan_dir = build_engines(onnx_dir, precision=args.precision, progress=lambda m: say("  " + m))
            say(f"plans: {json.loads((plan_dir / 'manifest.json').read_text())['typing']} network")
            build_s = time.monotonic() - started
            captioners[f"tensorrt (cuda, {args.precision})"] = Captioner.from_pretrained(
                model_dir, backend="tensorrt", engine_dir=onnx_dir, precision=args.precision, on_mismatch="refuse")
            notes.append(f"TensorRT {args.precision} build: {build_s:.0f} s")
        except Exception as error:
            traceback.print_exc()
            notes.append(f"tensorrt failed: {error}")

    # Token agreement on fresh scenes and encoder/logit errors, against torch on the CPU (fp32 reference).
    reference = captioners["torch (cpu, fp32)"]
    scenes = [SceneGenerator(split="eval", seed=900 + i).sample() for i in range(args.scenes)]
    expected = [[r.caption for r in reference.caption(s.image, s.labels, task="dense")] for s in scenes]
    frames = [frame_with_regions(seed) for seed in range(args.frames + 2)]
    ref_model = FineCaptionModel.from_pretrained(model_dir)
    torch_ms = None
    for name, captioner in captioners.items():
        say(f"running {name}")
        # torch's thread count is per process: give each captioner what it set for itself (an ONNX Runtime one on
        # the CPU sets torch to one thread, which must not slow the torch rows)
        torch.set_num_threads(getattr(captioner.engine, "torch_threads", None) or cpu_threads)
        try:
            got = [[r.caption for r in captioner.caption(s.image, s.labels, task="dense")] for s in scenes]
            same = sum(a == b for g, e in zip(got, expected) for a, b in zip(g, e))
            total = sum(len(e) for e in expected)
            error = 0.0 if captioner is reference else encoder_and_logit_errors(
                captioner.engine, reference.engine, ref_model)
            median_ms, _ = time_backend(captioner, frames)
            torch_ms = torch_ms or median_ms
            rows.append({"backend": name, "median_ms": median_ms, "speedup_vs_torch_cpu": torch_ms / median_ms,
                         "captions_identical": f"{same}/{total}", "max_rel_error": error})
        except Exception as error:
            traceback.print_exc()
            notes.append(f"{name} failed: {error}")

    gpu = env.get("gpu", "no GPU")
    print(f"\nFineCaption engine check on {gpu} (torch {env['torch']}, onnxruntime {env['onnxruntime']}, "
          f"tensorrt {env['tensorrt']}); model {source}")
    print("640x480 frame, 8 regions, dense task; captions vs torch-cpu fp32 on "
          f"{args.scenes} fresh scenes; rel. error = max|x-ref|/max|ref| over frame features, visual tokens, "
          "prefill logits\n")
    print(f"| {'backend':<26} | {'median ms/frame':>15} | {'vs torch cpu':>12} | {'captions identical':>18} | "
          f"{'max rel. error':>14} |")
    print(f"|{'-' * 28}|{'-' * 17}|{'-' * 14}|{'-' * 20}|{'-' * 16}|")
    for row in rows:
        print(f"| {row['backend']:<26} | {row['median_ms']:>15.1f} | {row['speedup_vs_torch_cpu']:>11.2f}x | "
              f"{row['captions_identical']:>18} | {row['max_rel_error']:>14.2e} |")
    for note in notes:
        print(f"note: {note}")
    print(f"total time {time.monotonic() - START:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "model": source, "rows": rows, "notes": notes},
                                              indent=2) + "\n")
    if not args.out:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
