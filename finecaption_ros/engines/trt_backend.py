"""The TensorRT backend: plan selection (load, rebuild or refuse) and a thin binding layer.

Policy (`load_plans`): the plans for this process live in `<onnx dir>/tensorrt/<key>/` where the key names the
running TensorRT version, GPU, compute capability and precision. They are used when their manifest matches that
key, the ONNX export's sha256 and the requested limits, and every plan deserializes. Otherwise, with
`on_mismatch="rebuild"` (default) they are rebuilt here (minutes, once), and with `on_mismatch="refuse"` a
`PlanMismatchError` / `PlanLoadError` names each mismatch and the `finecaption build-engine` command that fixes it.

Binding (`TrtEngine`): deserialize, set input shapes, hand TensorRT the addresses of torch CUDA tensors,
`execute_async_v3` on torch's current stream. Everything else (decode loop, pre/post-processing) is shared with the
other backends, so the ONNX Runtime tests in CI cover it.
"""
from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ..model.finecaption import FrameFeatures
from . import graphs as G
from .manifest import (BackendUnavailableError, PlanLimits, PlanLoadError, PlanManifest, PlanMismatchError,
                       plan_mismatches, read_graphs)
from .trt_build import build_engines, default_plan_dir, import_tensorrt, limits_with, runtime_target

log = logging.getLogger("finecaption.engines")

ON_MISMATCH = ("rebuild", "refuse")


def check_tensorrt_available() -> None:
    """Raises BackendUnavailableError when tensorrt, a CUDA build of torch or a GPU is missing."""
    import_tensorrt()
    if not torch.cuda.is_available():
        detail = "this torch is a CPU-only build" if torch.version.cuda is None else "torch sees no CUDA device"
        raise BackendUnavailableError(
            f"backend 'tensorrt' needs an NVIDIA GPU visible to a CUDA build of torch ({detail}); the TensorRT "
            f"binding keeps its buffers in torch CUDA tensors. Use backend 'onnxruntime' on this machine.")


def fix_command(onnx_dir: Path, precision: str, limits: PlanLimits) -> str:
    defaults = PlanLimits()
    parts = ["finecaption", "build-engine", "--onnx", str(onnx_dir), "--precision", precision]
    for name in ("max_regions", "max_batch", "max_prompt", "max_new_tokens", "max_frames"):
        if getattr(limits, name) != getattr(defaults, name):
            parts += ["--" + name.replace("_", "-"), str(getattr(limits, name))]
    return " ".join(shlex.quote(p) for p in parts)


def _deserialize(runtime, path: Path):
    try:
        data = path.read_bytes()
    except OSError as error:
        raise PlanLoadError(f"plan {path} cannot be read: {error}") from error
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise PlanLoadError(f"plan {path} does not deserialize with TensorRT (corrupt, truncated or built by "
                            f"another TensorRT version)")
    return engine


class LoadedPlans(NamedTuple):
    engines: dict[str, Any]  # graph name -> deserialized ICudaEngine
    manifest: PlanManifest
    runtime: Any  # the trt.Runtime that deserialized them: kept alive as long as the engines


def load_plans(onnx_dir: str | Path, precision: str = "fp16", plan_dir: str | Path | None = None,
               on_mismatch: str = "rebuild", limits: PlanLimits | None = None, workspace_mib: int = 4096,
               timing_cache: str | Path | None = None, device: int = 0, progress=None):
    """The deserialized plans for this GPU / TensorRT / precision, following the policy in the module docstring."""
    if on_mismatch not in ON_MISMATCH:
        raise ValueError(f"on_mismatch must be one of {ON_MISMATCH}, got {on_mismatch!r}")
    trt = import_tensorrt()
    onnx_dir = Path(onnx_dir)
    target = runtime_target(precision, device)
    manifest = read_graphs(onnx_dir, precision)[1]
    plan_dir = Path(plan_dir) if plan_dir is not None else default_plan_dir(onnx_dir, target)
    onnx_sha = {name: spec["sha256"] for name, spec in manifest["graphs"].items()}
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))

    def attempt():
        """(engines, manifest) or None, the problems found, and whether a file failed to load."""
        if not (plan_dir / "manifest.json").is_file():
            return None, [f"no plans for {target.gpu} (sm {target.compute_capability}), TensorRT {target.tensorrt}, "
                          f"{precision} in {plan_dir}"], False
        try:
            plans = PlanManifest.load(plan_dir)
            problems = plan_mismatches(plans, target, onnx_sha, limits)
            if problems:
                return None, problems, False
            engines = {name: _deserialize(runtime, plan_dir / plans.plans.get(name, f"{name}.plan"))
                       for name in manifest["graphs"]}
        except PlanLoadError as error:
            return None, [str(error)], True
        return LoadedPlans(engines, plans, runtime), [], False

    loaded, problems, unreadable = attempt()
    if loaded is not None:
        return loaded
    wanted = limits or _previous_limits(plan_dir) or PlanLimits()
    command = fix_command(onnx_dir, precision, wanted)
    if on_mismatch == "refuse":
        kind = PlanLoadError if unreadable else PlanMismatchError
        raise kind("TensorRT plans unusable: " + "; ".join(problems) + f". Rebuild them for this GPU with "
                   f"`{command}` (or load with on_mismatch='rebuild')")
    log.warning("TensorRT plans unusable (%s): rebuilding them now, which takes minutes, once (`%s` does it ahead "
                "of time)", "; ".join(problems), command)
    build_engines(onnx_dir, plan_dir, precision, wanted, workspace_mib, timing_cache, progress=progress,
                  device=device)
    loaded, problems, _ = attempt()
    if loaded is None:
        raise PlanLoadError("freshly built TensorRT plans are unusable: " + "; ".join(problems))
    return loaded


def _previous_limits(plan_dir: Path) -> PlanLimits | None:
    try:
        return PlanManifest.load(plan_dir).limits
    except PlanLoadError:
        return None


# ---- binding ------------------------------------------------------------------------------------------------------
def _torch_dtype(trt, dtype):
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
             trt.int64: torch.int64, trt.bool: torch.bool, trt.int8: torch.int8}
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    return table[dtype]


class TrtEngine:
    """One deserialized plan: named torch tensors in, named torch CUDA tensors out."""

    def __init__(self, trt, engine, name: str, device: torch.device):
        self.name = name
        self.engine = engine
        self.device = device
        self.context = engine.create_execution_context()
        if self.context is None:
            raise PlanLoadError(f"TensorRT could not create an execution context for {name} (out of GPU memory?)")
        self.inputs, self.outputs, self.dtypes = [], [], {}
        for index in range(engine.num_io_tensors):
            tensor = engine.get_tensor_name(index)
            self.dtypes[tensor] = _torch_dtype(trt, engine.get_tensor_dtype(tensor))
            is_input = engine.get_tensor_mode(tensor) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs).append(tensor)

    def __call__(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        keep = []
        for tensor in self.inputs:
            value = feeds[tensor].to(self.device, self.dtypes[tensor]).contiguous()
            keep.append(value)
            if not self.context.set_input_shape(tensor, tuple(value.shape)):
                raise ValueError(f"{self.name}: input {tensor} of shape {tuple(value.shape)} is outside the plan's "
                                 f"optimisation profile; rebuild with larger limits (finecaption build-engine)")
            self.context.set_tensor_address(tensor, value.data_ptr())
        results = {}
        for tensor in self.outputs:
            shape = tuple(self.context.get_tensor_shape(tensor))
            results[tensor] = torch.empty(shape, dtype=self.dtypes[tensor], device=self.device)
            self.context.set_tensor_address(tensor, results[tensor].data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution of {self.name} failed (see the TensorRT log)")
        stream.synchronize()  # inputs in `keep` must outlive the kernels; outputs are read right after
        return results


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, loaded: LoadedPlans, manifest: dict, device: torch.device):
        trt = import_tensorrt()
        self.runtime = loaded.runtime
        self.plans = loaded.manifest
        self.limits = loaded.manifest.limits
        self.manifest = manifest
        self.device = device
        self.engines = {name: TrtEngine(trt, engine, name, device) for name, engine in loaded.engines.items()}
        self.num_layers = int(manifest["num_layers"])
        self.num_visual = int(manifest["num_visual_tokens"])
        self.use_hr = bool(manifest["use_hr"])

    @classmethod
    def load(cls, onnx_dir: str | Path, precision: str = "fp16", plan_dir: str | Path | None = None,
             on_mismatch: str = "rebuild", max_regions: int | None = None, max_batch: int | None = None,
             max_prompt: int | None = None, max_new_tokens: int | None = None, max_frames: int | None = None,
             workspace_mib: int = 4096, timing_cache: str | Path | None = None, device: int = 0,
             progress=None) -> "TensorRTBackend":
        check_tensorrt_available()
        requested = None
        if any(v is not None for v in (max_regions, max_batch, max_prompt, max_new_tokens, max_frames)):
            requested = limits_with(None, max_regions=max_regions, max_batch=max_batch, max_prompt=max_prompt,
                                    max_new_tokens=max_new_tokens, max_frames=max_frames)
        loaded = load_plans(onnx_dir, precision, plan_dir, on_mismatch, requested, workspace_mib, timing_cache,
                            device, progress)
        return cls(loaded, read_graphs(onnx_dir, precision)[1], torch.device("cuda", device))

    def encode_frames(self, hr_pixels) -> FrameFeatures:
        if hr_pixels is None or G.FRAME_ENCODER not in self.engines:
            return FrameFeatures(None, None)
        outputs = []
        for start in range(0, hr_pixels.shape[0], self.limits.max_frames):
            outputs.append(self.engines[G.FRAME_ENCODER](
                {"hr_pixels": torch.as_tensor(hr_pixels[start:start + self.limits.max_frames])}))
        density = torch.cat([o["density"] for o in outputs]) if "density" in outputs[0] else None
        return FrameFeatures(torch.cat([o["coarse"] for o in outputs]), torch.cat([o["fine"] for o in outputs]),
                             density)

    def visual_tokens(self, lr_pixels, masks, boxes, frames: FrameFeatures, frame_index) -> torch.Tensor:
        if lr_pixels.shape[0] > self.limits.max_frames:
            raise ValueError(f"{lr_pixels.shape[0]} frames in one call exceed the plans' max_frames "
                             f"{self.limits.max_frames}; rebuild with --max-frames")
        shared = {"lr_pixels": torch.as_tensor(lr_pixels)}
        if self.use_hr:
            shared.update(coarse=frames.coarse, fine=frames.fine)
        count, step = masks.shape[0], self.limits.max_regions
        scene = self.engines.get(G.SCENE_CONTEXT)
        if scene is not None and count > step:
            # Neighbour tokens are chosen among all the regions of a frame: they cannot be computed in chunks.
            raise ValueError(f"{count} regions in one call exceed the plans' max_regions {step} of a model with "
                             f"scene-context tokens; rebuild with `finecaption build-engine --max-regions {count}`")
        chunks = []
        for start in range(0, count, step):  # more regions than the profile allows: run in chunks
            feeds = dict(shared, masks=torch.as_tensor(masks[start:start + step]),
                         boxes=torch.as_tensor(boxes[start:start + step]),
                         frame_index=torch.as_tensor(frame_index[start:start + step]))
            chunks.append(self.engines[G.REGION_ENCODER](feeds)["region_tokens"])
        tokens = torch.cat(chunks)
        if scene is None:
            return tokens
        available = {"region_tokens": tokens, "boxes": torch.as_tensor(boxes),
                     "frame_index": torch.as_tensor(frame_index), "density": frames.density}
        return scene({name: available[name] for name in scene.inputs})["visual"]

    def decoder_session(self) -> "TrtDecoderSession":
        return TrtDecoderSession(self)


class TrtDecoderSession:
    """`DecoderSession` over the prefill and step plans; the KV cache stays on the GPU between calls."""

    def __init__(self, backend: TensorRTBackend):
        self.prefill_engine = backend.engines[G.DECODER_PREFILL]
        self.step_engine = backend.engines[G.DECODER_STEP]
        self.limits = backend.limits
        self.num_visual = backend.num_visual
        self.past_names = G.cache_names(backend.num_layers, "past_key_values")
        self.present_names = G.cache_names(backend.num_layers, "present")
        self.cache = None

    def _check(self, batch: int, length: int) -> None:
        limits = self.limits
        if batch > limits.max_batch:
            raise ValueError(f"{batch} sequences exceed the plans' max_batch {limits.max_batch}; rebuild with "
                             f"`finecaption build-engine --max-batch {batch}`")
        if length > limits.max_sequence(self.num_visual):
            raise ValueError(f"sequence length {length} exceeds the plans' {limits.max_sequence(self.num_visual)} "
                             f"({self.num_visual} visual + max_prompt {limits.max_prompt} + max_new_tokens "
                             f"{limits.max_new_tokens}); rebuild with larger --max-prompt / --max-new-tokens")

    def prefill(self, visual, prompt_ids, attention, positions) -> np.ndarray:
        if prompt_ids.shape[1] > self.limits.max_prompt:
            raise ValueError(f"prompt of {prompt_ids.shape[1]} tokens exceeds the plans' max_prompt "
                             f"{self.limits.max_prompt}; rebuild with `finecaption build-engine --max-prompt N`")
        self._check(prompt_ids.shape[0], attention.shape[1])
        out = self.prefill_engine({"visual": torch.as_tensor(visual), "prompt_ids": torch.from_numpy(prompt_ids),
                                   "attention_mask": torch.from_numpy(attention),
                                   "position_ids": torch.from_numpy(positions)})
        self.cache = [out[name] for name in self.present_names]
        return out["logits"].float().cpu().numpy()

    def step(self, token_ids, attention, positions) -> np.ndarray:
        if self.cache is None:
            raise RuntimeError("step() before prefill()")
        self._check(token_ids.shape[0], attention.shape[1])
        feeds = {"input_ids": torch.from_numpy(token_ids), "attention_mask": torch.from_numpy(attention),
                 "position_ids": torch.from_numpy(positions)}
        feeds.update(zip(self.past_names, self.cache))
        out = self.step_engine(feeds)
        self.cache = [out[name] for name in self.present_names]
        return out["logits"].float().cpu().numpy()
