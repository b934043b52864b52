"""`finecaption build-engine`: ONNX export -> TensorRT plans for the GPU this runs on (TensorRT 10.x and 11.x).

Every dynamic axis gets an optimisation profile (min/opt/max from `PlanLimits`), plans are written with a
`PlanManifest` into `<onnx dir>/tensorrt/<key>/` (key: TensorRT version, GPU, compute capability, precision), and
the equivalent `trtexec` commands can be printed for people who prefer that tool. A timing cache makes rebuilds
fast.

Precision lives in the graphs: fp16 plans are built from the fp16 export (`export-onnx --precision fp16`, kept in
`<onnx dir>/fp16/` beside fp32 graphs), whose norm statistics, softmaxes and logits are fp32 by explicit casts.
TensorRT >= 10.12 compiles them as a strongly typed network (the only kind TensorRT 11 builds; the precision
flags and per-layer precisions are deprecated in 10.12 and gone in 11). Older TensorRT (JetPack 6: 10.3) builds
them weakly typed with the fp16 flag, every layer the graph computes in fp32 pinned to fp32.
`network_typing` is the one place that decides; the plan manifest records its answer. (`manifest.graphs_dir`
finds the graphs of a precision.)
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

from .manifest import (PRECISIONS, BackendUnavailableError, EngineError, PlanBuildError, PlanLimits, PlanManifest,
                       RuntimeTarget, graph_sha256, plan_key, read_graphs)

log = logging.getLogger("finecaption.engines")

MIN_TENSORRT = (10, 0)
NEWEST_TESTED = (11, 4)  # the newest TensorRT whose Python API tests/engines/test_trt_api_conformance.py checks
STRONGLY_TYPED_FROM = (10, 12)  # weak typing deprecated from here, removed in 11
PLANS_SUBDIR = "tensorrt"
STRONG, WEAK = "strongly typed", "weakly typed"
# What to install, per platform (README "Engines", engine/README.md); the upper bound is the newest version tested.
INSTALL = ("`pip install 'tensorrt-cu12>=10,<11.5'` on a CUDA 12 desktop, `pip install 'tensorrt-cu13>=10.13,<11.5'` "
           "on CUDA 13, `sudo apt install python3-libnvinfer` on Jetson (JetPack 6: TensorRT 10.3)")


def tensorrt_version(trt) -> tuple[int, int]:
    return tuple(int(p) for p in str(getattr(trt, "__version__", "0")).split(".")[:2] if p.isdigit()) or (0,)


def _installed_as() -> str:
    """The pip distribution TensorRT came from ("tensorrt-cu12 10.16.1.11"), or how else it is installed."""
    from importlib import metadata

    for name in ("tensorrt-cu12", "tensorrt-cu13", "tensorrt", "tensorrt-cu12-bindings", "tensorrt-cu13-bindings"):
        try:
            return f"{name} {metadata.version(name)}"
        except metadata.PackageNotFoundError:
            continue
    return "not from pip (JetPack or a tar install)"


def _cuda_line() -> str:
    try:
        import torch

        return f"torch built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only torch"
    except ImportError:
        return "no torch"


def import_tensorrt():
    """The tensorrt module, or BackendUnavailableError saying what was found and what to install."""
    try:
        import tensorrt as trt
    except ImportError as error:
        raise BackendUnavailableError(
            f"backend 'tensorrt' needs NVIDIA TensorRT >= 10 for Python, which is not installed ({error}): "
            f"{INSTALL}. Without it, use backend 'onnxruntime'.") from error
    version = tensorrt_version(trt)
    if version < MIN_TENSORRT:
        raise BackendUnavailableError(f"TensorRT {getattr(trt, '__version__', '?')} is too old ({_installed_as()}; "
                                      f"{_cuda_line()}): the engine layer uses the TensorRT >= 10 API; {INSTALL}")
    if version > NEWEST_TESTED:
        log.warning("TensorRT %s (%s) is newer than the newest version tested here (%d.%d); if a build fails, "
                    "install a tested one: %s", trt.__version__, _installed_as(), *NEWEST_TESTED, INSTALL)
    return trt


def describe_tensorrt(trt) -> str:
    """One line for logs and errors: the TensorRT found, where it came from, the CUDA torch was built for."""
    return f"TensorRT {trt.__version__} ({_installed_as()}; {_cuda_line()})"


def network_typing(trt) -> str:
    """STRONG on TensorRT >= 10.12, WEAK before (see the module docstring)."""
    return STRONG if tensorrt_version(trt) >= STRONGLY_TYPED_FROM else WEAK


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
    """The `trtexec` command lines that build the same plans (from the graphs of `precision`). trtexec writes no
    manifest: afterwards run `finecaption build-engine --adopt` with the same options to check the plans and write
    it."""
    graphs, manifest = read_graphs(onnx_dir, precision)
    plan_dir = Path(plan_dir)
    ranges = axis_ranges(manifest, limits or PlanLimits())
    commands = []
    for name, spec in manifest["graphs"].items():
        shapes = profile_shapes(spec, ranges)
        parts = ["trtexec", f"--onnx={graphs / spec['file']}", f"--saveEngine={plan_dir / (name + '.plan')}",
                 f"--memPoolSize=workspace:{workspace_mib}M"]
        if precision == "fp16":
            parts.append("--stronglyTyped")  # the graph's own types (no --fp16: TensorRT 11 removed it)
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


def _pin_fp32_layers(trt, network) -> int:
    """Weakly typed fp16 builds: every layer whose output the graph computes in fp32 (norm statistics, softmax,
    logits: the explicit casts of the fp16 export) keeps fp32, instead of being free to run in fp16."""
    pinned = 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type in (trt.LayerType.CONSTANT, trt.LayerType.SHAPE):
            continue
        outputs = [layer.get_output(i) for i in range(layer.num_outputs)]
        if outputs and all(out.dtype == trt.float32 for out in outputs):
            layer.precision = trt.float32
            for i in range(layer.num_outputs):
                layer.set_output_type(i, trt.float32)
            pinned += 1
    return pinned


def _network(trt, builder, typing: str):
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if typing == STRONG else 0
    return builder.create_network(flags)


def _builder_config(trt, builder, precision: str, typing: str, workspace_mib: int, monitor):
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    if precision == "fp16" and typing == WEAK:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    if monitor is not None:
        config.progress_monitor = monitor
    return config


def build_engines(onnx_dir: str | Path, out_dir: str | Path | None = None, precision: str = "fp16",
                  limits: PlanLimits | None = None, workspace_mib: int = 4096,
                  timing_cache: str | Path | None = None, progress=None, device: int = 0) -> Path:
    """Builds one plan per graph for the GPU this runs on; returns the plan directory (with its manifest).

    The graphs are the export's `precision` ones (`manifest.graphs_dir`); `timing_cache` defaults to
    `<onnx dir>/tensorrt/timing.cache`, shared by every precision and graph. Any failure inside TensorRT (an API
    this TensorRT lacks included) is a PlanBuildError naming the TensorRT found and what to do."""
    say = progress or (lambda message: log.info("%s", message))
    trt = import_tensorrt()
    target = runtime_target(precision, device)
    onnx_dir = Path(onnx_dir)
    graphs, manifest = read_graphs(onnx_dir, precision)
    limits = limits or PlanLimits()
    ranges = axis_ranges(manifest, limits)
    plan_dir = Path(out_dir) if out_dir is not None else default_plan_dir(onnx_dir, target)
    plan_dir.mkdir(parents=True, exist_ok=True)
    (plan_dir / "manifest.json").unlink(missing_ok=True)  # plans count as valid only once the manifest is rewritten
    timing_cache = Path(timing_cache) if timing_cache else onnx_dir / PLANS_SUBDIR / "timing.cache"
    typing = network_typing(trt)
    say(f"building {precision} plans ({typing}) with {describe_tensorrt(trt)} for {target.gpu} "
        f"(sm {target.compute_capability}) into {plan_dir}")
    started = time.monotonic()
    name = "the builder"
    try:
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        monitor = _progress_monitor(trt, say)
        cache = None
        onnx_sha, plans = {}, {}
        names = list(manifest["graphs"])
        for number, name in enumerate(names, 1):
            spec = manifest["graphs"][name]
            source = graphs / spec["file"]
            onnx_sha[name] = graph_sha256(source)
            if onnx_sha[name] != spec["sha256"]:
                say(f"warning: {source} changed since export (its sha256 differs from {graphs}/manifest.json)")
            network = _network(trt, builder, typing)
            parser = trt.OnnxParser(network, logger)
            if not parser.parse_from_file(str(source)):
                errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
                raise PlanBuildError(f"TensorRT cannot parse {source}: {errors}")
            if precision == "fp16" and typing == WEAK:
                _pin_fp32_layers(trt, network)
            config = _builder_config(trt, builder, precision, typing, workspace_mib, monitor)
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
                raise PlanBuildError(f"TensorRT failed to build {name} (see the TensorRT log above)")
            plan = plan_dir / f"{name}.plan"
            plan.write_bytes(bytes(serialized))
            plans[name] = plan.name
            say(f"    {plan.name}: {plan.stat().st_size / 2**20:.1f} MiB in {time.monotonic() - graph_started:.0f} s")
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        timing_cache.write_bytes(bytes(cache.serialize()))
    except EngineError:
        raise
    except Exception as error:  # an API this TensorRT lacks, a TensorRT internal error: never a crash of the caller
        raise PlanBuildError(
            f"building {name} failed with {describe_tensorrt(trt)} ({typing}, {precision}): "
            f"{type(error).__name__}: {error}. Install a tested TensorRT ({INSTALL}), or try `--precision fp32`"
        ) from error
    PlanManifest(target=target, onnx_sha256=onnx_sha, model_digest=manifest["model"]["digest"], limits=limits,
                 plans=plans, workspace_mib=int(workspace_mib), build_seconds=round(time.monotonic() - started, 1),
                 typing=typing).save(plan_dir)
    say(f"plans written to {plan_dir} in {time.monotonic() - started:.0f} s (timing cache {timing_cache})")
    return plan_dir


def adopt_plans(onnx_dir: str | Path, plan_dir: str | Path | None = None, precision: str = "fp16",
                limits: PlanLimits | None = None, device: int = 0) -> Path:
    """Writes the manifest for plans built elsewhere (the printed `trtexec` commands), after checking that each
    one deserializes with this TensorRT; the limits must be the ones the commands were printed with."""
    trt = import_tensorrt()
    target = runtime_target(precision, device)
    onnx_dir = Path(onnx_dir)
    graphs, manifest = read_graphs(onnx_dir, precision)
    plan_dir = Path(plan_dir) if plan_dir is not None else default_plan_dir(onnx_dir, target)
    plans = {}
    try:
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        for name in manifest["graphs"]:
            path = plan_dir / f"{name}.plan"
            if not path.is_file() or runtime.deserialize_cuda_engine(path.read_bytes()) is None:
                raise PlanBuildError(f"{path} is missing or does not deserialize with TensorRT {trt.__version__}")
            plans[name] = path.name
    except EngineError:
        raise
    except Exception as error:
        raise PlanBuildError(f"checking the plans in {plan_dir} failed with {describe_tensorrt(trt)}: "
                             f"{type(error).__name__}: {error}. Install a tested TensorRT ({INSTALL})") from error
    PlanManifest(target=target, onnx_sha256={n: graph_sha256(graphs / g["file"])
                                             for n, g in manifest["graphs"].items()},
                 model_digest=manifest["model"]["digest"], limits=limits or PlanLimits(), plans=plans,
                 typing=STRONG if precision == "fp16" or tensorrt_version(trt) >= (11, 0) else WEAK  # as printed
                 ).save(plan_dir)
    return plan_dir


def limits_with(limits: PlanLimits | None, **overrides) -> PlanLimits:
    return replace(limits or PlanLimits(), **{k: v for k, v in overrides.items() if v is not None})
