"""Engine layer: ONNX export, the ONNX Runtime backend, TensorRT plan building and the TensorRT backend.

`load_backend(name, model_dir, engine_dir=None, **options)` is what `Captioner.from_pretrained(backend=...)` calls
for every backend but torch. Both engine backends run the same exported graphs with the same I/O names and the
shared decode loop (`model.generate.greedy_decode`). Nothing here imports rclpy; `onnxruntime` and `tensorrt` are
imported only when their backend is asked for.

`engine_dir` is the ONNX export directory (see `export.default_engine_dir` for the default). When it holds no
export of the model it is exported on the fly (logged; pass `export_if_missing=False` to get an error instead).
TensorRT plans live under `<engine_dir>/tensorrt/<TensorRT version>_<GPU>_sm<CC>_<precision>/`, built from the
export's graphs of that precision (fp16 ones in `<engine_dir>/fp16/` beside fp32 graphs, exported on first use).
"""
from __future__ import annotations

from pathlib import Path

from .manifest import (BackendUnavailableError, EngineError, OnnxExportMissingError, PlanBuildError, PlanLoadError,
                       PlanMismatchError)

ENGINE_BACKENDS = ("onnxruntime", "tensorrt")
# Backends whose captioner may not run two calls at once: a TensorRT engine's execution context holds its bindings.
SERIAL_BACKENDS = frozenset({"tensorrt"})
ORT_OPTIONS = frozenset({"num_threads", "providers"})
TRT_OPTIONS = frozenset({"precision", "on_mismatch", "plan_dir", "max_regions", "max_batch", "max_prompt",
                         "max_new_tokens", "max_frames", "workspace_mib", "timing_cache", "device", "progress"})

__all__ = ["load_backend", "ENGINE_BACKENDS", "SERIAL_BACKENDS", "EngineError", "BackendUnavailableError", "OnnxExportMissingError",
           "PlanMismatchError", "PlanLoadError", "PlanBuildError"]


def load_backend(name: str, model_dir: str | Path, engine_dir: str | Path | None = None, **options):
    """A `Backend` (see captioner.py) running `model_dir` through `name`.

    onnxruntime options: `num_threads`, `providers`, `export_if_missing` (default True).
    tensorrt options: `precision` ("fp16" | "fp32", default fp16), `on_mismatch` ("rebuild" | "refuse", default
    rebuild), `plan_dir`, `max_regions`, `max_batch`, `max_prompt`, `max_new_tokens`, `workspace_mib`,
    `timing_cache`, `device`, `export_if_missing`.
    Options that belong to the other engine backend are ignored, so a caller (the node) can pass one set of options
    whichever backend is chosen; an option neither backend knows is a TypeError.
    """
    export_if_missing = options.pop("export_if_missing", True)
    unknown = set(options) - ORT_OPTIONS - TRT_OPTIONS
    if unknown:
        raise TypeError(f"unknown engine backend option(s) {sorted(unknown)}; onnxruntime takes "
                        f"{sorted(ORT_OPTIONS)}, tensorrt takes {sorted(TRT_OPTIONS)}")
    mine = ORT_OPTIONS if name == "onnxruntime" else TRT_OPTIONS
    options = {k: v for k, v in options.items() if k in mine and v is not None}
    if name == "onnxruntime":
        from .ort_backend import OnnxRuntimeBackend, import_onnxruntime

        import_onnxruntime()  # a clear error before any export work
        from .export import ensure_onnx

        onnx_dir = ensure_onnx(model_dir, engine_dir, export_if_missing)
        return OnnxRuntimeBackend(onnx_dir, **options)
    if name == "tensorrt":
        from .trt_backend import TensorRTBackend, check_tensorrt_available

        check_tensorrt_available()  # missing tensorrt / CUDA torch / GPU: a clear error before any export work
        from .export import ensure_onnx

        onnx_dir = ensure_onnx(model_dir, engine_dir, export_if_missing, options.get("precision", "fp16"))
        return TensorRTBackend.load(onnx_dir, **options)
    raise ValueError(f"unknown engine backend {name!r}; choose one of {', '.join(ENGINE_BACKENDS)} (or torch)")
