"""The ONNX Runtime backend: the exported graphs behind the captioner's `Backend` protocol.

Tensors cross the boundary as numpy (torch CPU tensors share memory with them, so the conversion is free); the
decode loop is `model.generate.greedy_decode`, the same one the torch and TensorRT backends use.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
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


# ONNX Runtime's type strings; fp16 exports take and give fp16 floats (but the logits).
NUMPY_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
                "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


def input_dtypes(session) -> dict[str, type]:
    return {i.name: NUMPY_DTYPES[i.type] for i in session.get_inputs()}


def _numpy(value, dtype) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.ascontiguousarray(value, dtype=dtype)


class OnnxRuntimeBackend:
    """The exported graphs in ONNX Runtime.

    On the CPU, the region-batched graphs (region encoder, decoder prefill and steps) run *data-parallel*: the
    regions are split into one shard per thread, each shard a single-threaded run of the same session, all at
    once. These graphs are long chains of small ops (a 192-wide decoder, a 128-wide ViT), and ONNX Runtime's
    intra-op threads synchronise after every op; with spinning off (see below) each op then pays a thread wake-up.
    Measured on 2 cores, 8 regions: region encoder 10.9 ms on 1 thread, 8.8 ms on 2 intra-op threads, 6.1 ms as two
    1-thread shards; prefill 5.9 / 4.0 / 3.2 ms; a decode step 0.34 / 0.45 / 0.35 ms. The frame encoder (one frame
    per call, nothing to split) keeps intra-op threads, and scene_context (tiny, needs all regions) runs on one.
    """

    name = "onnxruntime"

    def __init__(self, onnx_dir: str | Path, num_threads: int | None = None, providers: list[str] | None = None):
        """`num_threads`: the CPU threads to use (default: torch's thread count, so both backends use the same CPU
        budget); `providers`: ONNX Runtime execution providers (default: CUDA when onnxruntime-gpu sees a GPU,
        else CPU)."""
        ort = import_onnxruntime()
        self.onnx_dir = Path(onnx_dir)
        self.manifest = read_onnx_manifest(self.onnx_dir)
        threads = max(1, int(num_threads or torch.get_num_threads()))
        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider",) if p in available] + ["CPUExecutionProvider"]
        self.providers = list(providers)
        on_cpu = self.providers[0] == "CPUExecutionProvider"
        self.shards = threads if on_cpu else 1
        sharded = (G.REGION_ENCODER, G.DECODER_PREFILL, G.DECODER_STEP)
        self.sessions = {}
        for name, spec in self.manifest["graphs"].items():
            intra_op = 1 if (name in sharded and self.shards > 1) or name == G.SCENE_CONTEXT else threads
            self.sessions[name] = ort.InferenceSession(str(self.onnx_dir / spec["file"]),
                                                       _session_options(ort, intra_op), providers=self.providers)
        self.dtypes = {name: input_dtypes(session) for name, session in self.sessions.items()}
        self.runner = ShardedRunner(self.shards)
        # What the captioner sets torch to. Torch's OpenMP workers spin for a while after every op (the
        # preprocessing, the decode loop's indexing), on the cores the shards run on: on 2 cores, 8 regions, a frame
        # took 33 ms with torch on 2 threads, 26 ms on 1 (preprocessing 4.4 -> 6.4 ms, decoding 14.4 -> 8.1 ms).
        self.torch_threads = 1 if on_cpu and threads > 1 else None
        self.scene_inputs = ([i.name for i in self.sessions[G.SCENE_CONTEXT].get_inputs()]
                             if G.SCENE_CONTEXT in self.sessions else None)
        self.num_layers = int(self.manifest["num_layers"])
        self.use_hr = bool(self.manifest["use_hr"])

    def encode_frames(self, hr_pixels) -> FrameFeatures:
        if hr_pixels is None or G.FRAME_ENCODER not in self.sessions:
            return FrameFeatures(None, None)
        dtype = self.dtypes[G.FRAME_ENCODER]["hr_pixels"]
        coarse, fine, *density = self.sessions[G.FRAME_ENCODER].run(None, {"hr_pixels": _numpy(hr_pixels, dtype)})
        return FrameFeatures(torch.from_numpy(coarse), torch.from_numpy(fine),
                             torch.from_numpy(density[0]) if density else None)

    def visual_tokens(self, lr_pixels, masks, boxes, frames: FrameFeatures, frame_index) -> torch.Tensor:
        dtypes = self.dtypes[G.REGION_ENCODER]
        shared = {"lr_pixels": _numpy(lr_pixels, dtypes["lr_pixels"])}
        per_region = {"masks": _numpy(masks, dtypes["masks"]), "boxes": _numpy(boxes, dtypes["boxes"]),
                      "frame_index": _numpy(frame_index, np.int64)}
        if self.use_hr:
            if frames.coarse is None or frames.fine is None:
                raise ValueError("this model uses high-res features: pass the output of encode_frames")
            shared["coarse"] = _numpy(frames.coarse, dtypes["coarse"])
            shared["fine"] = _numpy(frames.fine, dtypes["fine"])
        shards = self.runner.split(len(per_region["masks"]))
        outputs = self.runner.run(self.sessions[G.REGION_ENCODER],
                                  [dict(shared, **{k: v[s] for k, v in per_region.items()}) for s in shards])
        tokens = ShardedRunner.joined(outputs)
        if self.scene_inputs is None:
            return torch.from_numpy(tokens)
        density = _numpy(frames.density, self.dtypes[G.SCENE_CONTEXT]["density"]) if "density" in self.scene_inputs \
            else None
        available = dict(per_region, region_tokens=tokens, density=density)
        (visual,) = self.sessions[G.SCENE_CONTEXT].run(None, {name: available[name] for name in self.scene_inputs})
        return torch.from_numpy(visual)

    def decoder_session(self) -> "OrtDecoderSession":
        return OrtDecoderSession(self.sessions[G.DECODER_PREFILL], self.sessions[G.DECODER_STEP], self.num_layers,
                                 self.runner, self.dtypes[G.DECODER_PREFILL]["visual"])


def _session_options(ort, intra_op_threads: int):
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Worker threads must not spin-wait: between runs the captioner's torch code (preprocessing, the decode loop)
    # needs the same cores. Even with ONNX Runtime alone in its process (as in the node) spinning is slower: on 2
    # cores, 8 regions, ORT's default spinning took 81 ms a frame against 48 ms without, and spinning only within a
    # run (session.force_spinning_stop) 52-58 ms.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class ShardedRunner:
    """Runs one session on several feeds at once: the first on the calling thread, the rest on a small pool
    (ONNX Runtime releases the GIL while it runs, and a session may run from several threads)."""

    def __init__(self, shards: int):
        self.shards = shards
        self.pool = ThreadPoolExecutor(shards - 1, thread_name_prefix="ort-shard") if shards > 1 else None

    def split(self, rows: int) -> list[slice]:
        """Contiguous, near-equal row ranges, one per shard (fewer when there are fewer rows)."""
        count = max(1, min(self.shards, rows))
        bounds = [rows * k // count for k in range(count + 1)]
        return [slice(bounds[k], bounds[k + 1]) for k in range(count)]

    @staticmethod
    def joined(outputs: list[list[np.ndarray]]) -> np.ndarray:
        """The shards' first outputs as one batch (no copy for a single shard)."""
        return np.concatenate([out[0] for out in outputs]) if len(outputs) > 1 else outputs[0][0]

    def run(self, session, feeds: list[dict]) -> list[list[np.ndarray]]:
        if len(feeds) == 1:
            return [session.run(None, feeds[0])]
        others = [self.pool.submit(session.run, None, feed) for feed in feeds[1:]]
        first = session.run(None, feeds[0])
        return [first] + [future.result() for future in others]


class OrtDecoderSession:
    """`DecoderSession` over the prefill and step graphs. The batch is split into the runner's shards at prefill;
    each shard keeps its own KV cache, and every step runs the shards at once."""

    def __init__(self, prefill, step, num_layers: int, runner: ShardedRunner, visual_dtype=np.float32):
        self.visual_dtype = visual_dtype
        self.prefill_session = prefill
        self.step_session = step
        self.runner = runner
        self.past_names = G.cache_names(num_layers, "past_key_values")
        self.shards: list[slice] = []
        self.caches: list[list[np.ndarray]] | None = None

    def prefill(self, visual, prompt_ids, attention, positions) -> np.ndarray:
        feeds = {"visual": _numpy(visual, self.visual_dtype), "prompt_ids": _numpy(prompt_ids, np.int64),
                 "attention_mask": _numpy(attention, np.int64), "position_ids": _numpy(positions, np.int64)}
        self.shards = self.runner.split(len(feeds["visual"]))
        outputs = self.runner.run(self.prefill_session, [{k: v[s] for k, v in feeds.items()} for s in self.shards])
        return self._keep_cache(outputs)

    def step(self, token_ids, attention, positions) -> np.ndarray:
        if self.caches is None:
            raise RuntimeError("step() before prefill()")
        feeds = {"input_ids": _numpy(token_ids, np.int64), "attention_mask": _numpy(attention, np.int64),
                 "position_ids": _numpy(positions, np.int64)}
        outputs = self.runner.run(self.step_session, [
            dict({k: v[s] for k, v in feeds.items()}, **dict(zip(self.past_names, cache)))
            for s, cache in zip(self.shards, self.caches)])
        return self._keep_cache(outputs)

    def _keep_cache(self, outputs: list[list[np.ndarray]]) -> np.ndarray:
        self.caches = [out[1:] for out in outputs]
        return ShardedRunner.joined(outputs)
