"""`finecaption export-onnx`: a model directory -> ONNX graphs (four or five) + config + tokenizer + manifest.

Uses the TorchScript-based exporter (`torch.onnx.export(dynamo=False)`) at opset 17: it needs no extra package,
folds every static shape into constants, and gives plain ops that both ONNX Runtime and TensorRT >= 10 run (checked
by `trt_ops.graph_problems` after every export). After export the graphs are run once by ONNX Runtime and compared
with torch; the relative errors are written into the manifest.

Where the graphs go when nobody says (`default_engine_dir`): `<model_dir>/onnx` when that directory already holds
an export of this model, otherwise a per-model user cache dir, `$FINECAPTION_CACHE` or
`$XDG_CACHE_HOME/finecaption` (default `~/.cache/finecaption`) / `engines/<model name>-<weights digest[:12]>`.
`ensure_onnx` exports there on first use (with a log line), so `--backend onnxruntime` works with nothing prepared.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from ..model.config import FineCaptionConfig
from ..model.finecaption import FineCaptionModel, load_tokenizer, weights_digest
from . import graphs as G
from .manifest import (EXPORTER_VERSION, MANIFEST_NAME, ONNX_FORMAT, PRECISIONS, OnnxExportMissingError,
                       graph_sha256, graphs_dir, read_onnx_manifest, write_json)
from .quantize import INT4_OPSET, WEIGHTS, quantize_matmul_weights
from .trt_ops import graph_problems

log = logging.getLogger("finecaption.engines")

DEFAULT_OPSET = 17
_ONNX_DTYPES = {1: "float32", 6: "int32", 7: "int64", 9: "bool", 10: "float16", 16: "bfloat16"}


def cache_root() -> Path:
    explicit = os.environ.get("FINECAPTION_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "finecaption"


def default_engine_dir(model_dir: str | Path, digest: str | None = None) -> Path:
    """`<model_dir>/onnx` if it already holds an export of this model, else the per-model cache directory."""
    model_dir = Path(model_dir)
    digest = digest or weights_digest(model_dir)
    beside = model_dir / "onnx"
    if _export_matches(beside, digest):
        return beside
    name = FineCaptionConfig.load(model_dir).name
    return cache_root() / "engines" / f"{name}-{digest[:12]}"


def _export_matches(onnx_dir: Path, digest: str) -> bool:
    try:
        manifest = read_onnx_manifest(onnx_dir)
    except OnnxExportMissingError:
        return False
    return manifest.get("model", {}).get("digest") == digest and manifest.get("exporter_version") == EXPORTER_VERSION


def ensure_onnx(model_dir: str | Path, engine_dir: str | Path | None = None, export_if_missing: bool = True,
                precision: str | None = None) -> Path:
    """The ONNX dir to run `model_dir` from, exporting into it first when it holds no export of this model.

    `precision` None takes the export there as it is (fp32 when it is made here); "fp16" / "fp32" also make sure
    graphs of that precision exist (`graphs_dir`: the dir itself or its `<precision>/` subdirectory), exporting
    them when missing. An explicit `engine_dir` that holds an export of a *different* model (or an older exporter)
    is never overwritten: that raises, naming the fix.
    """
    model_dir = Path(model_dir)
    digest = weights_digest(model_dir)
    onnx_dir = Path(engine_dir) if engine_dir is not None else default_engine_dir(model_dir, digest)
    explicit = engine_dir is not None
    if precision is not None and _export_matches(graphs_dir(onnx_dir, precision), digest):
        return onnx_dir
    if not _export_matches(onnx_dir, digest):  # nothing of this model here yet: the precision asked for
        _export_into(model_dir, onnx_dir, digest, explicit, export_if_missing, precision or "fp32")
    if precision is not None and not _export_matches(graphs_dir(onnx_dir, precision), digest):
        _export_into(model_dir, graphs_dir(onnx_dir, precision), digest, explicit, export_if_missing, precision)
    return onnx_dir


def _export_into(model_dir: Path, onnx_dir: Path, digest: str, explicit: bool, export_if_missing: bool,
                 precision: str) -> None:
    holds_other = (onnx_dir / MANIFEST_NAME).is_file()
    command = f"finecaption export-onnx --model {model_dir} --out {onnx_dir}" + (
        f" --precision {precision}" if precision != "fp32" else "")
    if holds_other and explicit:
        raise OnnxExportMissingError(
            f"{onnx_dir} holds an ONNX export of another model or exporter version (this model's weights are "
            f"{digest[:12]}); re-export with `{command}` or pass another --engine-dir")
    if not export_if_missing:
        raise OnnxExportMissingError(f"no {precision} ONNX export of {model_dir} in {onnx_dir}; create it with "
                                     f"`{command}`")
    log.warning("no %s ONNX export of %s in %s: exporting now (once; `%s` does it ahead of time)", precision,
                model_dir, onnx_dir, command)
    export_onnx(model_dir, onnx_dir, precision=precision)


# ---- export -----------------------------------------------------------------------------------------------------
def example_inputs(model: FineCaptionModel, frames: int = 2, regions: int = 3, prompt: int = 5, seed: int = 0):
    """Small random inputs of the right shapes and dtypes for every graph (sizes > 1 so no axis gets specialised)."""
    config = model.config
    generator = torch.Generator().manual_seed(seed)
    S, s = config.hr_image_size, config.lr_image_size
    hr = torch.randn(frames, 3, S, S, generator=generator)
    lr = torch.randn(frames, 3, s, s, generator=generator)
    masks = (torch.rand(regions, 1, S, S, generator=generator) > 0.6).float()
    corners = torch.rand(regions, 2, generator=generator) * 0.5
    boxes = torch.cat([corners, corners + 0.2 + torch.rand(regions, 2, generator=generator) * 0.3], dim=1)
    frame_index = torch.arange(regions) % frames
    vocab = model.decoder.config.vocab_size
    prompt_ids = torch.randint(4, vocab, (regions, prompt), generator=generator)
    return {"hr": hr, "lr": lr, "masks": masks, "boxes": boxes, "frame_index": frame_index, "prompt_ids": prompt_ids}


def graph_specs(model: FineCaptionModel) -> dict:
    """Per graph: input names, output names and dynamic axes (symbolic names shared with the manifest)."""
    layers = model.decoder.config.num_hidden_layers
    past, present = G.cache_names(layers, "past_key_values"), G.cache_names(layers, "present")
    hr_names = ["coarse", "fine"] if model.hr_encoder is not None else []
    frame_axes = {"hr_pixels": {0: "frames"}, "coarse": {0: "frames"}, "fine": {0: "frames"}, "density": {0: "frames"}}
    region_axes = {"lr_pixels": {0: "frames"}, "masks": {0: "regions"}, "boxes": {0: "regions"},
                   "frame_index": {0: "regions"}, "coarse": {0: "frames"}, "fine": {0: "frames"},
                   "density": {0: "frames"}, "region_tokens": {0: "regions"}, "visual": {0: "regions"}}
    prefill_axes = {"visual": {0: "batch"}, "prompt_ids": {0: "batch", 1: "prompt"},
                    "attention_mask": {0: "batch", 1: "sequence"}, "position_ids": {0: "batch", 1: "sequence"},
                    "logits": {0: "batch"}, **{n: {0: "batch", 2: "sequence"} for n in present}}
    step_axes = {"input_ids": {0: "batch"}, "attention_mask": {0: "batch", 1: "total"},
                 "position_ids": {0: "batch"}, "logits": {0: "batch"},
                 **{n: {0: "batch", 2: "past"} for n in past}, **{n: {0: "batch", 2: "total"} for n in present}}
    specs = {}
    if model.hr_encoder is not None:
        specs[G.FRAME_ENCODER] = (["hr_pixels"], G.frame_encoder_outputs(model), frame_axes)
    specs[G.REGION_ENCODER] = (["lr_pixels", "masks", "boxes", "frame_index"] + hr_names, ["region_tokens"],
                               {k: v for k, v in region_axes.items()
                                if k != "density" and (k not in ("coarse", "fine") or hr_names)})
    if model.has_scene_tokens:
        scene_inputs = G.scene_context_inputs(model)
        specs[G.SCENE_CONTEXT] = (scene_inputs, ["visual"],
                                  {k: v for k, v in region_axes.items() if k in scene_inputs + ["visual"]})
    specs[G.DECODER_PREFILL] = (["visual", "prompt_ids", "attention_mask", "position_ids"], ["logits"] + present,
                                prefill_axes)
    specs[G.DECODER_STEP] = (["input_ids", "attention_mask", "position_ids"] + past, ["logits"] + present, step_axes)
    return specs


def _torch_reference(model: FineCaptionModel, inputs: dict) -> dict[str, tuple]:
    """(args, torch outputs) per graph, from the model's own eager code paths (the parity references)."""
    from transformers import DynamicCache

    refs = {}
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # `past_key_values` renamed `cache` in newer transformers
        frames = model.encode_frames(inputs["hr"] if model.hr_encoder is not None else None)
        if model.hr_encoder is not None:
            outputs = {"coarse": frames.coarse, "fine": frames.fine, "density": frames.density}
            refs[G.FRAME_ENCODER] = ((inputs["hr"],), tuple(outputs[n] for n in G.frame_encoder_outputs(model)))
        tokens = model.region_tokens(inputs["lr"], inputs["masks"], inputs["boxes"], frames, inputs["frame_index"])
        hr_args = (frames.coarse, frames.fine) if model.hr_encoder is not None else ()
        refs[G.REGION_ENCODER] = ((inputs["lr"], inputs["masks"], inputs["boxes"], inputs["frame_index"], *hr_args),
                                  (tokens,))
        visual = tokens
        if model.has_scene_tokens:
            visual = model.scene_tokens(tokens, inputs["boxes"], frames, inputs["frame_index"])
            available = {"region_tokens": tokens, "boxes": inputs["boxes"], "frame_index": inputs["frame_index"],
                         "density": frames.density}
            refs[G.SCENE_CONTEXT] = (tuple(available[n] for n in G.scene_context_inputs(model)), (visual,))
        # Left-pad one sequence so padding, masking and positions are exercised.
        prompt_ids = inputs["prompt_ids"]
        count, num_visual = prompt_ids.shape[0], visual.shape[1]
        prompt_mask = torch.ones_like(prompt_ids)
        prompt_mask[0, :2] = 0
        attention = torch.cat([torch.ones(count, num_visual, dtype=torch.long), prompt_mask], dim=1)
        positions = (attention.cumsum(1) - 1).clamp_min(0)
        embeds = torch.cat([visual, model.embed_tokens(prompt_ids)], dim=1)
        cache = DynamicCache()
        out = model.decoder(inputs_embeds=embeds, attention_mask=attention, position_ids=positions,
                            past_key_values=cache, use_cache=True)
        presents = _cache_tensors(cache)
        refs[G.DECODER_PREFILL] = ((visual, prompt_ids, attention, positions), (out.logits[:, -1], *presents))
        step_ids = out.logits[:, -1].argmax(-1, keepdim=True)
        step_attention = torch.cat([attention, torch.ones(count, 1, dtype=torch.long)], dim=1)
        step_positions = positions[:, -1:] + 1
        step = model.decoder(input_ids=step_ids, attention_mask=step_attention, position_ids=step_positions,
                             past_key_values=cache, use_cache=True)
        refs[G.DECODER_STEP] = ((step_ids, step_attention, step_positions, *presents),
                                (step.logits[:, -1], *_cache_tensors(cache)))
    return refs


def _cache_tensors(cache) -> list[torch.Tensor]:
    tensors = []
    for layer in cache.layers:
        tensors += [layer.keys.clone(), layer.values.clone()]
    return tensors


def _graph_module(name: str, model: FineCaptionModel) -> torch.nn.Module:
    modules = {G.FRAME_ENCODER: G.FrameEncoderGraph, G.REGION_ENCODER: G.RegionEncoderGraph,
               G.SCENE_CONTEXT: G.SceneContextGraph, G.DECODER_PREFILL: G.DecoderPrefillGraph,
               G.DECODER_STEP: G.DecoderStepGraph}
    return modules[name](model).eval()


def relative_error(actual, expected) -> float:
    """max |a - e| / max |e|: the error relative to the tensor's scale (elementwise ratios explode near zero)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise ValueError(f"shape {actual.shape} != {expected.shape}")
    scale = max(float(np.abs(expected).max(initial=0.0)), 1e-12)
    return float(np.abs(actual - expected).max(initial=0.0)) / scale


def _value_infos(values) -> list[dict]:
    infos = []
    for value in values:
        tensor = value.type.tensor_type
        shape = [d.dim_param if d.dim_param else int(d.dim_value) for d in tensor.shape.dim]
        infos.append({"name": value.name, "dtype": _ONNX_DTYPES.get(tensor.elem_type, str(tensor.elem_type)),
                      "shape": shape})
    return infos


def export_onnx(model_dir: str | Path, out_dir: str | Path, opset: int = DEFAULT_OPSET, verify: bool = True,
                progress=None, precision: str = "fp32", external_data: bool | None = None,
                weights: str = "float") -> dict:
    """Exports `model_dir` into `out_dir`; returns the manifest (also written as `out_dir/manifest.json`).

    `precision="fp16"` writes graphs whose weights and compute are fp16 (float inputs and outputs too, but the
    logits), with the LayerNorm/RMSNorm statistics, the softmaxes, the rotary angles and the logits computed in fp32
    by explicit casts in the graph: what a strongly typed TensorRT network compiles as written. The parity check
    still compares with the fp32 torch model.

    `external_data`: None (default) keeps a graph's weights in its .onnx file unless they come near ONNX's 2 GiB
    protobuf limit; True always writes them as external data (what CI forces on the small model); False never.
    External data goes into one file per graph (`<graph>.onnx.data`), except that the two decoder graphs share
    `decoder.onnx.data`: a tensor whose bytes are already in the file is referenced, not written again.

    `weights="int8"` / `"int4"`: the decoder graphs' MatMul weights weight-only int8 per column or int4 per block
    (`quantize.quantize_matmul_weights`); int4 decoder graphs are opset 21."""
    import onnx

    if opset < 17:
        raise ValueError(f"opset {opset} < 17: LayerNormalization needs opset 17")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    say = progress or (lambda message: log.info("%s", message))
    started = time.perf_counter()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)  # a half-written export must not look valid
    model = FineCaptionModel.from_pretrained(model_dir).float().eval()
    tokenizer = load_tokenizer(model_dir)
    inputs = example_inputs(model)
    refs = _torch_reference(model, inputs)
    specs = graph_specs(model)
    if precision == "fp16":
        to_half(model)
    graphs, stored = {}, {}
    for stale in out_dir.glob("*.onnx.data"):  # offsets into an old data file would be wrong
        stale.unlink()
    for name, spec in specs.items():
        say(f"exporting {name} -> {out_dir / f'{name}.onnx'}")
        graphs[name] = export_graph(model, name, spec, refs[name][0], refs[name][1], out_dir, opset, precision,
                                    weights, external_data, stored)
    for graph in graphs.values():  # after every graph: the decoder graphs append to one shared data file
        path, data = out_dir / graph["file"], graph.get("data", [])
        graph["sha256"] = graph_sha256(path, data)
        graph["bytes"] = path.stat().st_size + sum((out_dir / f).stat().st_size for f in data)
    FineCaptionConfig.save(model.config, out_dir)
    tokenizer.save_pretrained(str(out_dir))
    decoder_config = model.decoder.config
    attn = model.decoder.model.layers[0].self_attn
    manifest = {
        "format": ONNX_FORMAT,
        "exporter_version": EXPORTER_VERSION,
        "model": {"name": model.config.name, "digest": weights_digest(model_dir), "source": str(model_dir)},
        "opset": opset,
        "precision": precision,
        "weights": weights,
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__},
        "num_visual_tokens": int(refs[G.DECODER_PREFILL][0][0].shape[1]),
        "hidden_size": int(decoder_config.hidden_size),
        "vocab_size": int(decoder_config.vocab_size),
        "num_layers": int(decoder_config.num_hidden_layers),
        "num_key_value_heads": int(decoder_config.num_key_value_heads),
        "head_dim": int(attn.head_dim),
        "max_position_embeddings": int(getattr(decoder_config, "max_position_embeddings", 0) or 0),
        "hr_image_size": model.config.hr_image_size,
        "lr_image_size": model.config.lr_image_size,
        "use_hr": model.hr_encoder is not None,
        "bytes": sum((out_dir / f).stat().st_size for f in {f for g in graphs.values()
                                                            for f in [g["file"]] + g.get("data", [])}),
        "eos_id": tokenizer.eos_token_id,
        "pad_id": tokenizer.pad_token_id,
        "graphs": graphs,
    }
    if verify:
        say("checking the graphs with ONNX Runtime against torch")
        manifest["verification"] = verify_export(out_dir, refs)
    manifest["export_seconds"] = round(time.perf_counter() - started, 2)
    write_json(out_dir / MANIFEST_NAME, manifest)
    say(f"exported {model.config.name} to {out_dir} in {manifest['export_seconds']:.1f} s")
    return manifest


def export_graph(model: FineCaptionModel, name: str, spec: tuple, args: tuple, outputs, out_dir: Path, opset: int,
                 precision: str, weights: str, external_data: bool | None, stored: dict) -> dict:
    """One graph of `graph_specs(model)` traced on `args` into `out_dir/<name>.onnx`: static output dims pinned
    from `outputs` (None: left as traced), shapes inferred, decoder weights quantized, weights externalized when
    needed, the TensorRT op check run; returns its manifest entry (without sha256 / bytes, which need every graph's
    data written first)."""
    import onnx

    input_names, output_names, axes = spec
    path = out_dir / f"{name}.onnx"
    args = tuple(a.half() if precision == "fp16" and a.is_floating_point() else a for a in args)
    graph_started = time.perf_counter()
    quantized = weights != "float" and name in (G.DECODER_PREFILL, G.DECODER_STEP)
    # int4 needs opset 21, past the TorchScript exporter's 20: exported at 20, raised by the quantizer
    graph_opset = max(opset, INT4_OPSET - 1) if quantized and weights == "int4" else opset
    with warnings.catch_warnings(), torch.no_grad(), _static_resize_sizes(), _fp32_statistics(precision):
        warnings.simplefilter("ignore")
        torch.onnx.export(_graph_module(name, model), args, str(path), dynamo=False, opset_version=graph_opset,
                          input_names=input_names, output_names=output_names, dynamic_axes=axes,
                          do_constant_folding=True)
    if outputs is not None:
        _pin_static_output_dims(path, output_names, outputs, axes)
    onnx.shape_inference.infer_shapes_path(str(path), str(path))
    if quantized:
        quantize_matmul_weights(path, weights)
    data = _externalize(path, DECODER_DATA if name in (G.DECODER_PREFILL, G.DECODER_STEP) else None,
                        external_data, stored)
    header = onnx.load(str(path), load_external_data=False)
    entry = {"file": path.name, "export_seconds": round(time.perf_counter() - graph_started, 2),
             "opset": next(o.version for o in header.opset_import if o.domain in ("", "ai.onnx")),
             "inputs": _value_infos(header.graph.input), "outputs": _value_infos(header.graph.output)}
    if data:
        entry["data"] = data
    problems = graph_problems(path)
    if problems:
        raise RuntimeError(f"{path} is not TensorRT-compatible: " + "; ".join(problems[:8]))
    return entry


def to_half(model: FineCaptionModel) -> None:
    """fp16 weights, but the rotary inverse frequencies: positions times fp16 frequencies would be off by whole
    radians at a few hundred tokens (the rotary module computes its angles in fp32 from this buffer)."""
    rotary = model.decoder.model.rotary_emb
    inv_freq = rotary.inv_freq.float().clone()
    model.half()
    rotary.inv_freq = inv_freq
    if hasattr(rotary, "original_inv_freq"):
        rotary.original_inv_freq = inv_freq


@contextlib.contextmanager
def _fp32_statistics(precision: str):
    """While tracing an fp16 export, every LayerNorm computes its mean and variance in fp32 (explicit Casts around
    it in the graph): fp16 sums of squares overflow on large activations. The decoder's RMSNorms, the attention
    softmaxes and the rotary angles already cast to fp32 in the model's own code."""
    functional = torch.nn.functional
    original = functional.layer_norm

    def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
        if input.dtype != torch.float16:
            return original(input, normalized_shape, weight, bias, eps)
        as_float = (lambda t: t.float() if t is not None else None)
        return original(input.float(), normalized_shape, as_float(weight), as_float(bias), eps).to(input.dtype)

    if precision == "fp16":
        functional.layer_norm = layer_norm
    try:
        yield
    finally:
        functional.layer_norm = original


@contextlib.contextmanager
def _static_resize_sizes():
    """While tracing, `F.interpolate(x, size=y.shape[-2:])` records the size as a shape computation; the exporter
    needs it constant for `mode="area"` (adaptive pooling), and a whole factor (else `_area_resize`). Every spatial
    size in these graphs is static (fixed image sizes), so the sizes are made plain ints for the export."""
    functional = torch.nn.functional
    original = functional.interpolate

    def interpolate(input, size=None, scale_factor=None, mode="nearest", *args, **kwargs):
        if size is not None and not isinstance(size, int):
            size = tuple(int(s) for s in size)
        elif size is not None:
            size = int(size)
        if mode == "area" and isinstance(size, tuple) and len(size) == 2 and \
                any(int(i) % o for i, o in zip(input.shape[-2:], size)):
            return _area_resize(input, size)
        return original(input, size, scale_factor, mode, *args, **kwargs)

    functional.interpolate = interpolate
    try:
        yield
    finally:
        functional.interpolate = original


def _area_resize(input: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """torch's "area" resize as two matrix products with the windows' averaging weights: the exporter writes area
    resizes as adaptive average pooling, which it refuses when an output size does not divide the input (the 8B
    config's 1024 px masks -> 336 px ViT). The same values, up to float rounding."""
    from ..model.inputs import _area_weights

    rows = _area_weights(int(input.shape[-2]), size[0]).to(input.dtype)
    cols = _area_weights(int(input.shape[-1]), size[1]).to(input.dtype)
    return torch.matmul(torch.matmul(rows, input), cols.t())


def _pin_static_output_dims(path: Path, output_names: list[str], outputs, axes: dict) -> None:
    """Writes the sizes of output axes that are not dynamic into the graph where the exporter left a symbol
    (shape inference cannot see through Concat of gathered tokens), so the manifest and TensorRT see them fixed."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    changed = False
    for value, name, reference in zip(model.graph.output, output_names, outputs):
        dynamic = axes.get(name, {})
        for index, dim in enumerate(value.type.tensor_type.shape.dim):
            if index not in dynamic and not dim.HasField("dim_value"):
                dim.dim_value = int(reference.shape[index])
                changed = True
    if changed:
        onnx.save(model, str(path))


# ONNX's protobuf limit is 2 GiB per file; graphs whose weights come near it keep them outside.
EXTERNAL_DATA_FROM = 1 << 30
DECODER_DATA = "decoder.onnx.data"
_ALIGN = 4096  # data offsets on page boundaries, so runtimes may map the file


def _externalize(path: Path, shared: str | None, external_data: bool | None, stored: dict) -> list[str]:
    """Moves the graph's weights into external data when asked or needed; returns the data files it uses.

    The TorchScript exporter itself writes graphs over 2 GiB with one external file per tensor; those are gathered
    into the graph's data file (`shared` for the decoder graphs). `stored` maps (data file, tensor bytes digest) to
    where those bytes already are, across graphs."""
    import hashlib

    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    header = onnx.load(str(path), load_external_data=False)
    scattered = sorted({ExternalDataInfo(t).location for t in header.graph.initializer if uses_external_data(t)})
    weight_bytes = sum(t.ByteSize() for t in header.graph.initializer)
    if external_data is False and scattered:
        raise ValueError(f"{path.name} needs external data (its weights exceed 2 GiB); export without "
                         f"--no-external-data")
    if not scattered and not external_data and (external_data is False or weight_bytes < EXTERNAL_DATA_FROM):
        return []
    location = shared or f"{path.name}.data"
    data_path = path.with_name(location)
    with open(data_path, "ab") as handle:
        for tensor in header.graph.initializer:
            # one scattered tensor in memory at a time, not the whole graph's weights (8B: ~5 GB beside the model)
            raw = _scattered_bytes(path, tensor) if uses_external_data(tensor) else tensor.raw_data
            if len(raw) < 1024 and not uses_external_data(tensor):  # small constants stay in the graph
                continue
            key = (location, tensor.data_type, hashlib.sha256(raw).hexdigest())
            if key not in stored:
                offset = -(-handle.tell() // _ALIGN) * _ALIGN
                handle.write(b"\0" * (offset - handle.tell()))
                handle.write(raw)
                stored[key] = (offset, len(raw))
            offset, length = stored[key]
            del tensor.external_data[:]
            for field, value in (("location", location), ("offset", offset), ("length", length)):
                entry = tensor.external_data.add()
                entry.key, entry.value = field, str(value)
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL
            del raw
    onnx.save(header, str(path))
    for name in scattered:
        path.with_name(name).unlink(missing_ok=True)
    return [location]


def _scattered_bytes(path: Path, tensor) -> bytes:
    from onnx.external_data_helper import ExternalDataInfo

    info = ExternalDataInfo(tensor)
    with open(path.with_name(info.location), "rb") as handle:
        handle.seek(info.offset or 0)
        return handle.read(info.length) if info.length else handle.read()


def verify_export(out_dir: Path, refs: dict) -> dict[str, float]:
    """Max relative error (see `relative_error`) of each graph's outputs, ONNX Runtime vs the fp32 torch model."""
    import onnxruntime as ort

    from .ort_backend import NUMPY_DTYPES

    errors = {}
    options = ort.SessionOptions()
    options.log_severity_level = 3
    for name, (args, expected) in refs.items():
        session = ort.InferenceSession(str(out_dir / f"{name}.onnx"), options, providers=["CPUExecutionProvider"])
        feeds = {i.name: a.numpy().astype(NUMPY_DTYPES[i.type]) for i, a in zip(session.get_inputs(), args)}
        got = session.run(None, feeds)
        errors[name] = max(relative_error(g, e.numpy()) for g, e in zip(got, expected))
    return errors
