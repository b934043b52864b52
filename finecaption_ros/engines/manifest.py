"""Manifests beside the exported graphs and the TensorRT plans, and the errors the engine layer raises.

ONNX dir (`export-onnx`): `manifest.json` names the model (weights digest), opset, exporter version and, per graph,
its file, sha256, size and I/O names/dtypes/shapes (symbolic axes as strings).

Plan dir (`build-engine`): `<onnx dir>/tensorrt/<key>/` with one `.plan` per graph and a `manifest.json`; the key
(`plan_key`) is TensorRT version + GPU name + compute capability + precision, so plans for several GPUs can sit
side by side, and the manifest also records the sha256 of each ONNX graph the plans were built from and the
optimisation-profile limits.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

MANIFEST_NAME = "manifest.json"
ONNX_FORMAT = "finecaption-onnx"
PLAN_FORMAT = "finecaption-tensorrt-plans"
# Bump when the graphs' I/O contract changes; older exports are then re-exported (or refused, naming the fix).
# 2: the scene context (neighbour and count tokens) left the region encoder for its own graph.
EXPORTER_VERSION = 2
# Precision of an export's graphs (`manifest["precision"]`, fp32 when absent) and of TensorRT plans.
PRECISIONS = ("fp32", "fp16")


class EngineError(RuntimeError):
    """Base class for engine-layer errors; messages name the problem and the command that fixes it."""


class BackendUnavailableError(EngineError):
    """The requested backend's runtime (onnxruntime, tensorrt, a CUDA GPU) is not available here."""


class OnnxExportMissingError(EngineError):
    """No usable ONNX export where one was expected."""


class PlanMismatchError(EngineError):
    """The TensorRT plans on disk do not match this GPU / TensorRT / precision / ONNX export."""


class PlanLoadError(EngineError):
    """A plan file exists but cannot be read or deserialized."""


class PlanBuildError(EngineError):
    """TensorRT could not build (or check) plans here; the message names the TensorRT found and the fix."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def external_data_files(path: str | Path) -> list[str]:
    """The external-data files a graph's weights live in (names beside the graph), in order; [] when inline."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    files = {ExternalDataInfo(t).location: None for t in model.graph.initializer if uses_external_data(t)}
    return list(files)


def graph_sha256(path: str | Path, data_files: list[str] | None = None) -> str:
    """sha256 of a graph file, chained with its external-data files' when the graph keeps its weights outside
    (`data_files`: their names, read from the graph when None)."""
    path = Path(path)
    digest = sha256_file(path)
    for name in external_data_files(path) if data_files is None else data_files:
        digest = hashlib.sha256((digest + sha256_file(path.with_name(name))).encode()).hexdigest()
    return digest


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def write_json(path: Path, data: dict) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def read_onnx_manifest(onnx_dir: str | Path) -> dict:
    """The export manifest, or OnnxExportMissingError naming the fix."""
    onnx_dir = Path(onnx_dir)
    path = onnx_dir / MANIFEST_NAME
    if not path.is_file():
        raise OnnxExportMissingError(f"no ONNX export in {onnx_dir} (no {MANIFEST_NAME}); create it with "
                                     f"`finecaption export-onnx --model MODEL_DIR --out {onnx_dir}`")
    try:
        manifest = read_json(path)
    except (OSError, ValueError) as error:
        raise OnnxExportMissingError(f"{path} is unreadable ({error}); re-export with "
                                     f"`finecaption export-onnx --model MODEL_DIR --out {onnx_dir}`") from error
    if manifest.get("format") != ONNX_FORMAT:
        raise OnnxExportMissingError(f"{path} is not a FineCaption ONNX manifest (format "
                                     f"{manifest.get('format')!r})")
    missing = [f for g in manifest.get("graphs", {}).values() for f in [g["file"]] + g.get("data", [])
               if not (onnx_dir / f).is_file()]
    if missing:
        raise OnnxExportMissingError(f"{onnx_dir} lacks {', '.join(missing)} listed in its manifest; re-export with "
                                     f"`finecaption export-onnx --model MODEL_DIR --out {onnx_dir}`")
    return manifest


def export_precision(manifest: dict) -> str:
    return manifest.get("precision", "fp32")


def graphs_dir(onnx_dir: str | Path, precision: str) -> Path:
    """Where the `precision` graphs of an export directory are: the directory itself when its export has that
    precision (or it holds none yet and `precision` is fp32), else its `<precision>/` subdirectory
    (`engine/onnx/fp16/` beside the fp32 graphs of `engine/onnx/`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    onnx_dir = Path(onnx_dir)
    try:
        held = export_precision(read_json(onnx_dir / MANIFEST_NAME))
    except (OSError, ValueError):
        held = "fp32"
    return onnx_dir if held == precision else onnx_dir / precision


def read_graphs(onnx_dir: str | Path, precision: str) -> tuple[Path, dict]:
    """(directory, manifest) of the `precision` graphs of an export directory, or OnnxExportMissingError naming
    the export command."""
    graphs = graphs_dir(onnx_dir, precision)
    try:
        return graphs, read_onnx_manifest(graphs)
    except OnnxExportMissingError as error:
        if graphs == Path(onnx_dir):
            raise
        raise OnnxExportMissingError(
            f"no {precision} graphs in {graphs}; export them with `finecaption export-onnx --model MODEL_DIR --out "
            f"{graphs} --precision {precision}` (or `finecaption build-engine --model MODEL_DIR --onnx {onnx_dir} "
            f"--precision {precision}` does it)") from error


# ---- TensorRT plans ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RuntimeTarget:
    """What a plan is tied to: TensorRT serialises engines for one TensorRT version and one GPU architecture."""
    tensorrt: str
    gpu: str
    compute_capability: str  # "8.7"
    precision: str  # "fp32" | "fp16"


def plan_key(target: RuntimeTarget) -> str:
    gpu = re.sub(r"[^a-z0-9]+", "-", target.gpu.lower()).strip("-") or "gpu"
    return f"trt{target.tensorrt}_{gpu}_sm{target.compute_capability.replace('.', '')}_{target.precision}"


@dataclass
class PlanLimits:
    """Optimisation-profile maxima baked into the plans (every dynamic axis has a min/opt/max)."""
    max_frames: int = 1
    max_regions: int = 16  # regions per call; the region encoder runs more in chunks, scene_context cannot
    max_batch: int = 64  # sequences decoded together (captioner.MAX_BATCH)
    max_prompt: int = 32  # prompt tokens
    max_new_tokens: int = 32  # generated tokens

    def max_sequence(self, num_visual: int) -> int:
        return num_visual + self.max_prompt + self.max_new_tokens


@dataclass
class PlanManifest:
    target: RuntimeTarget
    onnx_sha256: dict[str, str]
    model_digest: str
    limits: PlanLimits
    plans: dict[str, str] = field(default_factory=dict)  # graph -> file name
    workspace_mib: int = 0
    build_seconds: float = 0.0
    typing: str = ""  # "strongly typed" | "weakly typed": how the network was built (trt_build.network_typing)
    format: str = PLAN_FORMAT

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PlanManifest":
        if data.get("format") != PLAN_FORMAT:
            raise ValueError(f"format {data.get('format')!r} is not {PLAN_FORMAT!r}")
        return cls(target=RuntimeTarget(**data["target"]), onnx_sha256=dict(data["onnx_sha256"]),
                   model_digest=data["model_digest"], limits=PlanLimits(**data["limits"]),
                   plans=dict(data.get("plans", {})), workspace_mib=int(data.get("workspace_mib", 0)),
                   build_seconds=float(data.get("build_seconds", 0.0)), typing=str(data.get("typing", "")))

    def save(self, plan_dir: Path) -> None:
        write_json(Path(plan_dir) / MANIFEST_NAME, self.to_dict())

    @classmethod
    def load(cls, plan_dir: Path) -> "PlanManifest":
        path = Path(plan_dir) / MANIFEST_NAME
        try:
            return cls.from_dict(read_json(path))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise PlanLoadError(f"plan manifest {path} is unreadable: {error}") from error


def plan_mismatches(manifest: PlanManifest, target: RuntimeTarget, onnx_sha256: dict[str, str],
                    limits: PlanLimits | None = None) -> list[str]:
    """Human-readable differences between plans on disk and what is running / wanted; empty when they match."""
    found = []
    for name in ("tensorrt", "gpu", "compute_capability", "precision"):
        have, want = getattr(manifest.target, name), getattr(target, name)
        if have != want:
            label = {"tensorrt": "TensorRT version", "gpu": "GPU", "compute_capability": "compute capability",
                     "precision": "precision"}[name]
            found.append(f"{label}: plans built for {have!r}, running {want!r}")
    for graph, sha in sorted(onnx_sha256.items()):
        built = manifest.onnx_sha256.get(graph)
        if built != sha:
            found.append(f"ONNX graph {graph}: plans built from sha256 {str(built)[:12]}, export is {sha[:12]}")
    if limits is not None:
        for name, want in asdict(limits).items():
            have = getattr(manifest.limits, name)
            if want > have:
                found.append(f"{name}: plans allow {have}, {want} requested")
    return found
