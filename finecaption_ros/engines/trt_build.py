"""`finecaption build-engine`: ONNX export -> TensorRT plans for the GPU this runs on (TensorRT >= 10 Python API).

Every dynamic axis gets an optimisation profile (min/opt/max from `PlanLimits`), plans are written with a
`PlanManifest` into `<onnx dir>/tensorrt/<key>/` (key: TensorRT version, GPU, compute capability, precision), and
the equivalent `trtexec` commands can be printed for people who prefer that tool. A timing cache makes rebuilds
fast. In fp16 the decoder's RMSNorm layers are kept in fp32 (their squares overflow fp16 on large activations).
"""
from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

from . import graphs as G
from .manifest import (BackendUnavailableError, PlanLimits, PlanManifest, RuntimeTarget, graph_sha256, plan_key,
                       read_onnx_manifest)

log = logging.getLogger("finecaption.engines")

PRECISIONS = ("fp32", "fp16")
MIN_TENSORRT = (10, 0)
PLANS_SUBDIR = "tensorrt"


def import_tensorrt():
    """The tensorrt module, or BackendUnavailableError saying how to get it."""
    try:
        import tensorrt as trt
    except ImportError as error:
        raise BackendUnavailableError(
            "backend 'tensorrt' needs NVIDIA TensorRT >= 10 for Python, which is not installed: `pip install "
            "'tensorrt>=10'` on a desktop with an NVIDIA GPU (on Jetson it comes with JetPack 6: `sudo apt install "
            "python3-libnvinfer`). Without it, use backend 'onnxruntime'.") from error
    version = tuple(int(p) for p in str(getattr(trt, "__version__", "0")).split(".")[:2] if p.isdigit())
    if version < MIN_TENSORRT:
        raise BackendUnavailableError(f"TensorRT {getattr(trt, '__version__', '?')} is too old: the engine layer "
                                      f"uses the TensorRT >= 10 API (`pip install 'tensorrt>=10'`)")
    return trt


def gpu_info(device: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") of CUDA device `device`, from torch or nvidia-smi."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(device)
            return torch.cuda.get_device_name(device), f"{major}.{minor}"
    except Exception:  # a broken CUDA install must not hide the nvidia-smi answer
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,compute_cap", "--format=csv,noheader", f"-i={device}"],
                                 capture_output=True, text=True, timeout=20, check=True).stdout.strip()
            name, capability = (part.strip() for part in out.splitlines()[0].rsplit(",", 1))
            return name, capability
        except (subprocess.SubprocessError, ValueError, IndexError):
            pass
    raise BackendUnavailableError("no NVIDIA GPU found (torch.cuda.is_available() is False and nvidia-smi gives "
                                  "no answer): TensorRT plans can only be built and run on the GPU that uses them")


def runtime_target(precision: str, device: int = 0) -> RuntimeTarget:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    trt = import_tensorrt()
    name, capability = gpu_info(device)
    return RuntimeTarget(tensorrt=str(trt.__version__), gpu=name, compute_capability=capability,
                         precision=precision)


def default_plan_dir(onnx_dir: str | Path, target: RuntimeTarget) -> Path:
    return Path(onnx_dir) / PLANS_SUBDIR / plan_key(target)


# ---- optimisation profiles ----------------------------------------------------------------------------------------
def axis_ranges(manifest: dict, limits: PlanLimits) -> dict[str, tuple[int, int, int]]:
    """(min, opt, max) of every symbolic axis the export uses."""
    visual = int(manifest["num_visual_tokens"])
    longest = limits.max_sequence(visual)
    position_limit = int(manifest.get("max_position_embeddings") or 0)
    if position_limit and longest > position_limit:
        raise ValueError(f"{visual} visual + {limits.max_prompt} prompt + {limits.max_new_tokens} new tokens = "
                         f"{longest} exceeds the decoder's {position_limit} positions; lower --max-prompt or "
                         f"--max-new-tokens")
    typical_prompt = min(12, limits.max_prompt)
    return {
        "frames": (1, 1, limits.max_frames),
        "regions": (1, min(8, limits.max_regions), limits.max_regions),
        "batch": (1, min(8, limits.max_batch), limits.max_batch),
        "prompt": (1, typical_prompt, limits.max_prompt),
        "sequence": (visual + 1, visual + typical_prompt, visual + limits.max_prompt),
        "past": (visual + 1, visual + typical_prompt + limits.max_new_tokens // 2, longest - 1),
        "total": (visual + 2, visual + typical_prompt + limits.max_new_tokens // 2 + 1, longest),
    }


def profile_shapes(graph_spec: dict, ranges: dict[str, tuple[int, int, int]]) -> dict[str, tuple[tuple, ...]]:
    """input name -> (min shape, opt shape, max shape) for every input with a dynamic axis."""
    shapes = {}
    for value in graph_spec["inputs"]:
        dims = value["shape"]
        if all(isinstance(d, int) for d in dims):
            continue
        shapes[value["name"]] = tuple(
            tuple(d if isinstance(d, int) else ranges[d][k] for d in dims) for k in range(3))
    return shapes


def trtexec_commands(onnx_dir: str | Path, plan_dir: str | Path, precision: str = "fp16",
                     limits: PlanLimits | None = None, workspace_mib: int = 4096,
                     timing_cache: str | Path | None = None) -> list[str]:
    """The `trtexec` command lines that build the same plans. trtexec writes no manifest: afterwards run
    `finecaption build-engine --adopt` with the same options to check the plans and write it."""
    onnx_dir, plan_dir = Path(onnx_dir), Path(plan_dir)
    manifest = read_onnx_manifest(onnx_dir)
    ranges = axis_ranges(manifest, limits or PlanLimits())
    commands = []
    for name, spec in manifest["graphs"].items():
        shapes = profile_shapes(spec, ranges)
        parts = ["trtexec", f"--onnx={onnx_dir / spec['file']}", f"--saveEngine={plan_dir / (name + '.plan')}",
                 f"--memPoolSize=workspace:{workspace_mib}M"]
        if precision == "fp16":
            parts.append("--fp16")
        if timing_cache:
            parts.append(f"--timingCacheFile={timing_cache}")
        for flag, k in (("--minShapes", 0), ("--optShapes", 1), ("--maxShapes", 2)):
            if shapes:
                parts.append(flag + "=" + ",".join(f"{n}:{'x'.join(map(str, s[k]))}" for n, s in shapes.items()))
        commands.append(" ".join(shlex.quote(p) for p in parts))
    return commands


# ---- building -----------------------------------------------------------------------------------------------------
def _progress_monitor(trt, say):
    """A TensorRT IProgressMonitor printing top-level build phases (TensorRT >= 8.6), or None."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class Monitor(base):
        def __init__(self):
            base.__init__(self)
            self.depth = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.depth[phase_name] = self.depth.get(parent_phase, -1) + 1 if parent_phase else 0
            if self.depth[phase_name] <= 1:
                say(f"    {'  ' * self.depth[phase_name]}{phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            return True  # keep building

        def phase_finish(self, phase_name):
            self.depth.pop(phase_name, None)

    return Monitor()


class _Heartbeat:
    """Prints the elapsed time every `every` seconds while a graph builds (TensorRT can be silent for minutes)."""

    def __init__(self, say, label: str, every: float = 15.0):
        self.say, self.label, self.every = say, label, every
        self.stop = threading.Event()
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.wait(self.every):
            self.say(f"    ... still building {self.label} ({time.monotonic() - self.started:.0f} s)")

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def _keep_norms_fp32(trt, network) -> int:
    """In fp16 builds, pin the decoder's RMSNorm layers (named `.../input_layernorm/...`, `.../norm/...` by the
    exporter) to fp32; returns how many layers were pinned."""
    pinned = 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if "layernorm" in layer.name or "/norm/" in layer.name:
            if layer.type in (trt.LayerType.CONSTANT, trt.LayerType.SHAPE, trt.LayerType.GATHER):
                continue
            layer.precision = trt.float32
            for out in range(layer.num_outputs):
                if layer.get_output(out).dtype in (trt.float32, trt.float16):
                    layer.set_output_type(out, trt.float32)
            pinned += 1
    return pinned


def _builder_config(trt, builder, precision: str, workspace_mib: int, monitor):
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    if monitor is not None:
        config.progress_monitor = monitor
    return config


def build_engines(onnx_dir: str | Path, out_dir: str | Path | None = None, precision: str = "fp16",
                  limits: PlanLimits | None = None, workspace_mib: int = 4096,
                  timing_cache: str | Path | None = None, progress=None, device: int = 0) -> Path:
    """Builds one plan per graph for the GPU this runs on; returns the plan directory (with its manifest).

    `timing_cache` defaults to `<onnx dir>/tensorrt/timing.cache`, shared by every precision and graph."""
    say = progress or (lambda message: log.info("%s", message))
    trt = import_tensorrt()
    target = runtime_target(precision, device)
    onnx_dir = Path(onnx_dir)
    manifest = read_onnx_manifest(onnx_dir)
    limits = limits or PlanLimits()
    ranges = axis_ranges(manifest, limits)
    plan_dir = Path(out_dir) if out_dir is not None else default_plan_dir(onnx_dir, target)
    plan_dir.mkdir(parents=True, exist_ok=True)
    (plan_dir / "manifest.json").unlink(missing_ok=True)  # plans count as valid only once the manifest is rewritten
    timing_cache = Path(timing_cache) if timing_cache else onnx_dir / PLANS_SUBDIR / "timing.cache"

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if precision == "fp16" and not getattr(builder, "platform_has_fast_fp16", True):
        say(f"warning: {target.gpu} has no fast fp16; building fp16 plans anyway")
    monitor = _progress_monitor(trt, say)
    cache = None
    say(f"building {precision} TensorRT {target.tensorrt} plans for {target.gpu} (sm {target.compute_capability}) "
        f"into {plan_dir}")
    started = time.monotonic()
    onnx_sha, plans = {}, {}
    names = list(manifest["graphs"])
    for number, name in enumerate(names, 1):
        spec = manifest["graphs"][name]
        source = onnx_dir / spec["file"]
        onnx_sha[name] = graph_sha256(source)
        if onnx_sha[name] != spec["sha256"]:
            say(f"warning: {source} changed since export (its sha256 differs from {onnx_dir}/manifest.json)")
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(source)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT cannot parse {source}: {errors}")
        if precision == "fp16" and name in (G.DECODER_PREFILL, G.DECODER_STEP):
            _keep_norms_fp32(trt, network)
        config = _builder_config(trt, builder, precision, workspace_mib, monitor)
        if cache is None:
            cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=True)
        profile = builder.create_optimization_profile()
        for input_name, (low, opt, high) in profile_shapes(spec, ranges).items():
            profile.set_shape(input_name, low, opt, high)
        config.add_optimization_profile(profile)
        say(f"[{number}/{len(names)}] {name}")
        graph_started = time.monotonic()
        with _Heartbeat(say, name):
            serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f"TensorRT failed to build {name} (see the TensorRT log above)")
        plan = plan_dir / f"{name}.plan"
        plan.write_bytes(bytes(serialized))
        plans[name] = plan.name
        say(f"    {plan.name}: {plan.stat().st_size / 2**20:.1f} MiB in {time.monotonic() - graph_started:.0f} s")
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    timing_cache.write_bytes(bytes(cache.serialize()))
    PlanManifest(target=target, onnx_sha256=onnx_sha, model_digest=manifest["model"]["digest"], limits=limits,
                 plans=plans, workspace_mib=int(workspace_mib),
                 build_seconds=round(time.monotonic() - started, 1)).save(plan_dir)
    say(f"plans written to {plan_dir} in {time.monotonic() - started:.0f} s (timing cache {timing_cache})")
    return plan_dir


def adopt_plans(onnx_dir: str | Path, plan_dir: str | Path | None = None, precision: str = "fp16",
                limits: PlanLimits | None = None, device: int = 0) -> Path:
    """Writes the manifest for plans built elsewhere (the printed `trtexec` commands), after checking that each
    one deserializes with this TensorRT; the limits must be the ones the commands were printed with."""
    trt = import_tensorrt()
    target = runtime_target(precision, device)
    onnx_dir = Path(onnx_dir)
    manifest = read_onnx_manifest(onnx_dir)
    plan_dir = Path(plan_dir) if plan_dir is not None else default_plan_dir(onnx_dir, target)
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    plans = {}
    for name in manifest["graphs"]:
        path = plan_dir / f"{name}.plan"
        if not path.is_file() or runtime.deserialize_cuda_engine(path.read_bytes()) is None:
            raise RuntimeError(f"{path} is missing or does not deserialize with TensorRT {trt.__version__}")
        plans[name] = path.name
    PlanManifest(target=target, onnx_sha256={n: graph_sha256(onnx_dir / g["file"])
                                             for n, g in manifest["graphs"].items()},
                 model_digest=manifest["model"]["digest"], limits=limits or PlanLimits(), plans=plans).save(plan_dir)
    return plan_dir


def limits_with(limits: PlanLimits | None, **overrides) -> PlanLimits:
    return replace(limits or PlanLimits(), **{k: v for k, v in overrides.items() if v is not None})
