"""`finecaption plan-memory`: how much memory a model's engines need for N regions, and which Jetson holds it.

Counted per graph from the model built on the meta device (no weights are allocated):
- weights: the graph's parameters at the precision's bytes (int8 / int4: the decoder's linear layers weight-only,
  with one fp16 scale per block of 32 for int4 and per output channel for int8; everything else fp16). TensorRT
  keeps a copy of the weights in every plan, so the decoder's weights count twice: prefill and step.
- KV cache: 2 x layers x KV heads x head dim x (visual + prompt + new tokens) per sequence, in the activations'
  dtype, for `regions x attributes` sequences.
- activations: an estimate of the largest tensors alive at once in each graph (an upper bound of TensorRT's
  scratch memory is its workspace limit, which `build-engine --workspace` sets).
Jetson modules share their memory between CPU and GPU; `SYSTEM_RESERVE_GIB` is left for Linux, ROS 2, the camera
pipeline and the CUDA / TensorRT context.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..model.config import FineCaptionConfig
from . import graphs as G
from .quantize import INT4_BLOCK

BYTES = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0, "int4": 0.5}
MEMORY_PRECISIONS = tuple(BYTES)
JETSON_GIB = {"Orin Nano 8 GB": 8, "Orin NX 16 GB": 16, "AGX Orin 32 GB": 32, "AGX Orin 64 GB": 64}
SYSTEM_RESERVE_GIB = 2.5  # measured budgets vary; JetPack 6 desktop-less with ROS 2 idles around 1.5-2 GiB


@dataclass
class GraphMemory:
    name: str
    parameters: int
    weights: float  # bytes
    kv_cache: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.kv_cache + self.activations


def load_config(path: str | Path) -> FineCaptionConfig:
    """A config JSON file or a model directory."""
    return FineCaptionConfig.load(path)


def num_visual_tokens(config: FineCaptionConfig) -> int:
    if config.context_grid:
        context = config.context_grid ** 2
    elif config.use_hr:
        context = (config.hr_image_size // 32) ** 2
    else:
        vit = config.mask_encoder
        context = (vit["image_size"] // vit["patch_size"]) ** 2
    scene = (config.neighbor_tokens or 0) + config.has_object_counter
    return context + config.region_grid ** 2 + 1 + scene


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def plan_memory(config: FineCaptionConfig, regions: int, max_new_tokens: int, precision: str = "fp16",
                prompt: int = 32, attributes: int = 1, frames: int = 1) -> list[GraphMemory]:
    from ..model.finecaption import FineCaptionModel

    if precision not in BYTES:
        raise ValueError(f"precision must be one of {MEMORY_PRECISIONS}, got {precision!r}")
    with torch.device("meta"):
        model = FineCaptionModel(config)
    act = 4.0 if precision == "fp32" else 2.0  # int8 / int4 are weight-only: activations stay fp16
    dense = 4.0 if precision == "fp32" else 2.0
    decoder = model.decoder
    dc = decoder.config
    head_dim = getattr(dc, "head_dim", None) or dc.hidden_size // dc.num_attention_heads
    visual = num_visual_tokens(config)
    sequence = visual + prompt + max_new_tokens
    batch = regions * attributes
    linear = sum(m.weight.numel() for m in decoder.model.layers.modules() if isinstance(m, torch.nn.Linear))
    if dc.vocab_size and not getattr(dc, "tie_word_embeddings", False):
        linear += decoder.lm_head.weight.numel()
    decoder_params = _count(decoder)
    if precision in ("int8", "int4"):
        rows = sum(m.weight.shape[0] for m in decoder.model.layers.modules() if isinstance(m, torch.nn.Linear))
        scales = linear / INT4_BLOCK if precision == "int4" else rows
        decoder_weights = linear * BYTES[precision] + scales * 2.0 + (decoder_params - linear) * dense
    else:
        decoder_weights = decoder_params * BYTES[precision]
    kv = 2.0 * dc.num_hidden_layers * dc.num_key_value_heads * head_dim * sequence * batch * act
    width, inner, vocab = dc.hidden_size, dc.intermediate_size, max(dc.vocab_size, 1)
    # prefill: hidden states and the MLP's two inner projections over the whole sequence, one head's fp32 scores
    # per sequence at a time is what fused attention keeps, the eager graph all heads: counted all heads
    prefill_act = batch * ((visual + prompt) * (4 * width + 3 * inner) * act
                           + dc.num_attention_heads * (visual + prompt) ** 2 * 4.0) + batch * vocab * 4.0
    step_act = batch * ((4 * width + 3 * inner) * act + dc.num_attention_heads * sequence * 4.0) + batch * vocab * 4.0

    vit = model.mask_encoder.tower.config
    vit_tokens = (vit.image_size // vit.patch_size) ** 2 + 1
    S = config.hr_image_size
    region_act = regions * (vit_tokens * (4 * vit.hidden_size + 2 * vit.intermediate_size) * act
                            + vit.num_attention_heads * vit_tokens ** 2 * 4.0 + S * S * act)
    graphs = []
    if model.hr_encoder is not None:
        first = model.hr_encoder.convnext.config.hidden_sizes[0]
        frame_act = frames * (S // 4) ** 2 * first * 4 * 4 * act  # stage 1's widest: the 4x inverted bottleneck
        hr = model.hr_encoder
        frame_params = _count(hr)
        if model.counter is not None:  # the density head runs in the frame encoder, the count token's adapter after
            frame_params += sum(p.numel() for p in model.counter.density_parameters())
        graphs.append(GraphMemory(G.FRAME_ENCODER, frame_params, frame_params * dense, 0.0, frame_act))
    region_params = _count(model.mask_encoder) + _count(model.fusion)
    graphs.append(GraphMemory(G.REGION_ENCODER, region_params, region_params * dense, 0.0, region_act))
    if model.has_scene_tokens:
        scene = _count(model.neighbors) + (_count(model.counter.adapter) if model.counter is not None else 0)
        graphs.append(GraphMemory(G.SCENE_CONTEXT, scene, scene * dense, 0.0, regions * visual * width * act * 4))
    graphs.append(GraphMemory(G.DECODER_PREFILL, decoder_params, decoder_weights, kv, prefill_act))
    graphs.append(GraphMemory(G.DECODER_STEP, decoder_params, decoder_weights, 0.0, step_act))  # same KV cache
    return graphs


def fits(total_bytes: float) -> dict[str, bool]:
    return {name: total_bytes <= (gib - SYSTEM_RESERVE_GIB) * 2**30 for name, gib in JETSON_GIB.items()}


def report(config: FineCaptionConfig, regions: int, max_new_tokens: int, precision: str, prompt: int = 32,
           attributes: int = 1) -> str:
    graphs = plan_memory(config, regions, max_new_tokens, precision, prompt, attributes)
    mib = lambda b: f"{b / 2**20:,.1f}"  # noqa: E731
    lines = [f"{config.name}: {regions} regions x {attributes} attribute(s), prompt {prompt} + {max_new_tokens} new "
             f"tokens, {num_visual_tokens(config)} visual tokens, {precision} (weights)", "",
             f"| graph | parameters | weights MiB | KV cache MiB | activations MiB (est.) | total MiB |",
             "|---|---|---|---|---|---|"]
    for g in graphs:
        lines.append(f"| {g.name} | {g.parameters / 1e6:,.1f} M | {mib(g.weights)} | {mib(g.kv_cache)} | "
                     f"{mib(g.activations)} | {mib(g.total)} |")
    # the graphs run one after another: weights and the KV cache stay, only the largest activations count
    total = sum(g.weights + g.kv_cache for g in graphs) + max(g.activations for g in graphs)
    lines.append(f"| **all plans loaded** | | {mib(sum(g.weights for g in graphs))} | "
                 f"{mib(sum(g.kv_cache for g in graphs))} | {mib(max(g.activations for g in graphs))} | "
                 f"**{mib(total)}** |")
    lines.append("")
    verdict = fits(total)
    lines.append("fits (module memory - %.1f GiB for the system): " % SYSTEM_RESERVE_GIB + ", ".join(
        f"{name} {'yes' if ok else 'no'}" for name, ok in verdict.items()))
    return "\n".join(lines)
