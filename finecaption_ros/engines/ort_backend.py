"""The ONNX Runtime backend: the exported graphs behind the captioner's `Backend` protocol.

Tensors cross the boundary as numpy (torch CPU tensors share memory with them, so the conversion is free); the
decode loop is `model.generate.greedy_decode`, the same one the torch and TensorRT backends use.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..model.finecaption import FrameFeatures
from . import graphs as G
from .manifest import BackendUnavailableError, read_onnx_manifest


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as error:
        raise BackendUnavailableError(
            "backend 'onnxruntime' needs the onnxruntime package: `pip install onnxruntime` (CPU) or "
            "`pip install onnxruntime-gpu` (CUDA)") from error
    return onnxruntime


def _numpy(value, dtype) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.ascontiguousarray(value, dtype=dtype)


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, onnx_dir: str | Path, num_threads: int | None = None, providers: list[str] | None = None):
        """`num_threads`: intra-op threads (default: torch's thread count, so both backends use the same CPU
        budget); `providers`: ONNX Runtime execution providers (default: CUDA when onnxruntime-gpu sees a GPU,
        else CPU)."""
        ort = import_onnxruntime()
        self.onnx_dir = Path(onnx_dir)
        self.manifest = read_onnx_manifest(self.onnx_dir)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(num_threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # Worker threads must not spin-wait: each graph's session has its own thread pool, and between runs the
        # captioner's torch code (preprocessing, the decode loop) needs the same cores. Even with ONNX Runtime alone
        # in its process (as in the node) spinning is slower: on 2 cores, 8 regions, ORT's default spinning took
        # 81 ms a frame against 48 ms without, and spinning only within a run (session.force_spinning_stop) 52-58 ms.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider",) if p in available] + ["CPUExecutionProvider"]
        self.providers = list(providers)
        self.sessions = {
            name: ort.InferenceSession(str(self.onnx_dir / spec["file"]), options, providers=self.providers)
            for name, spec in self.manifest["graphs"].items()}
        self.num_layers = int(self.manifest["num_layers"])
        self.use_hr = bool(self.manifest["use_hr"])

    def encode_frames(self, hr_pixels) -> FrameFeatures:
        if hr_pixels is None or G.FRAME_ENCODER not in self.sessions:
            return FrameFeatures(None, None)
        coarse, fine = self.sessions[G.FRAME_ENCODER].run(None, {"hr_pixels": _numpy(hr_pixels, np.float32)})
        return FrameFeatures(torch.from_numpy(coarse), torch.from_numpy(fine))

    def visual_tokens(self, lr_pixels, masks, boxes, frames: FrameFeatures, frame_index) -> torch.Tensor:
        feeds = {"lr_pixels": _numpy(lr_pixels, np.float32), "masks": _numpy(masks, np.float32),
                 "boxes": _numpy(boxes, np.float32), "frame_index": _numpy(frame_index, np.int64)}
        if self.use_hr:
            if frames.coarse is None or frames.fine is None:
                raise ValueError("this model uses high-res features: pass the output of encode_frames")
            feeds["coarse"] = _numpy(frames.coarse, np.float32)
            feeds["fine"] = _numpy(frames.fine, np.float32)
        (visual,) = self.sessions[G.REGION_ENCODER].run(None, feeds)
        return torch.from_numpy(visual)

    def decoder_session(self) -> "OrtDecoderSession":
        return OrtDecoderSession(self.sessions[G.DECODER_PREFILL], self.sessions[G.DECODER_STEP], self.num_layers)


class OrtDecoderSession:
    """`DecoderSession` over the prefill and step graphs; the KV cache lives here between calls."""

    def __init__(self, prefill, step, num_layers: int):
        self.prefill_session = prefill
        self.step_session = step
        self.past_names = G.cache_names(num_layers, "past_key_values")
        self.cache: list[np.ndarray] | None = None

    def prefill(self, visual, prompt_ids, attention, positions) -> np.ndarray:
        logits, *self.cache = self.prefill_session.run(None, {
            "visual": _numpy(visual, np.float32), "prompt_ids": _numpy(prompt_ids, np.int64),
            "attention_mask": _numpy(attention, np.int64), "position_ids": _numpy(positions, np.int64)})
        return logits

    def step(self, token_ids, attention, positions) -> np.ndarray:
        if self.cache is None:
            raise RuntimeError("step() before prefill()")
        feeds = {"input_ids": _numpy(token_ids, np.int64), "attention_mask": _numpy(attention, np.int64),
                 "position_ids": _numpy(positions, np.int64)}
        feeds.update(zip(self.past_names, self.cache))
        logits, *self.cache = self.step_session.run(None, feeds)
        return logits
