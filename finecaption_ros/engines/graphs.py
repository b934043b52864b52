"""The exportable graphs (four, or five with scene-context tokens): thin torch wrappers around a model.

- `frame_encoder`: hr_pixels (F,3,S,S) -> coarse (F,C,h,w), fine (F,C',H',W'), and with a count token density
  (F,2h,2w). Runs once per frame.
- `region_encoder`: lr_pixels (F,3,s,s), masks (R,1,S,S), boxes (R,4), frame_index (R,), coarse, fine ->
  region_tokens (R,T0,D). The gather of each region's frame happens inside the graph, so one call covers every
  region of a batch of frames; each region's tokens depend on it alone, so a backend may split the regions.
- `scene_context` (models with neighbour or count tokens): region_tokens, [boxes (R,4)], frame_index, [density] ->
  visual (R,T,D). Appends what depends on the other regions of the frame; one call must hold all of them. Without
  it, `visual` is `region_tokens`.
- `decoder_prefill`: visual (R,T,D), prompt_ids (R,P), attention_mask (R,T+P), position_ids (R,T+P) ->
  logits (R,V) at the last position, present.{i}.key / present.{i}.value (R,Hkv,T+P,hd).
- `decoder_step`: input_ids (R,1), attention_mask (R,L+1), position_ids (R,1), past_key_values.{i}.key / .value
  (R,Hkv,L,hd) -> logits (R,V), present.{i}.key / .value (R,Hkv,L+1,hd).

The decoder graphs call the Hugging Face layer's own modules (projections, norms, MLP, rotary embedding,
`apply_rotary_pos_emb`); only the attention wiring is written out here, with the KV cache as plain tensors and the
mask as one `Where`, so the exported graph holds a handful of simple ops that TensorRT and ONNX Runtime both run.
The sequence layout and masking match `model.generate.greedy_decode` and `TorchDecoderSession`.
"""
from __future__ import annotations

import sys

import torch
from torch import nn

from ..model.finecaption import FineCaptionModel, FrameFeatures

FRAME_ENCODER = "frame_encoder"
REGION_ENCODER = "region_encoder"
SCENE_CONTEXT = "scene_context"
DECODER_PREFILL = "decoder_prefill"
DECODER_STEP = "decoder_step"
GRAPHS = (FRAME_ENCODER, REGION_ENCODER, SCENE_CONTEXT, DECODER_PREFILL, DECODER_STEP)

# Decoder layers built from these modules export as-is (Llama, Mistral without sliding window, Qwen2, ...).
_LAYER_PARTS = ("input_layernorm", "post_attention_layernorm", "mlp", "self_attn")
_ATTENTION_PARTS = ("q_proj", "k_proj", "v_proj", "o_proj")


def cache_names(num_layers: int, prefix: str) -> list[str]:
    """`past_key_values` (inputs) or `present` (outputs) names, key then value per layer."""
    return [f"{prefix}.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


class FrameEncoderGraph(nn.Module):
    def __init__(self, model: FineCaptionModel):
        super().__init__()
        self.model = model

    def forward(self, hr_pixels: torch.Tensor):
        frames = self.model.encode_frames(hr_pixels)
        if frames.density is not None:
            return frames.coarse, frames.fine, frames.density
        return frames.coarse, frames.fine


def frame_encoder_outputs(model: FineCaptionModel) -> list[str]:
    """The frame_encoder graph's outputs: the density map only for the count token."""
    return ["coarse", "fine"] + ["density"] * (model.counter is not None)


class RegionEncoderGraph(nn.Module):
    def __init__(self, model: FineCaptionModel):
        super().__init__()
        self.model = model
        self.use_hr = model.hr_encoder is not None

    def forward(self, lr_pixels, masks, boxes, frame_index, coarse=None, fine=None):
        frames = FrameFeatures(coarse, fine) if self.use_hr else FrameFeatures(None, None)
        return self.model.region_tokens(lr_pixels, masks, boxes, frames, frame_index)


def scene_context_inputs(model: FineCaptionModel) -> list[str]:
    """The scene_context graph's inputs: boxes only for neighbour tokens, density only for the count token."""
    return (["region_tokens"] + ["boxes"] * (model.neighbors is not None) + ["frame_index"]
            + ["density"] * (model.counter is not None))


class SceneContextGraph(nn.Module):
    def __init__(self, model: FineCaptionModel):
        super().__init__()
        self.model = model
        self.inputs = scene_context_inputs(model)

    def forward(self, *args):
        named = dict(zip(self.inputs, args))
        frames = FrameFeatures(None, None, named.get("density"))
        return self.model.scene_tokens(named["region_tokens"], named.get("boxes"), frames, named["frame_index"])


def check_decoder_supported(decoder: nn.Module) -> None:
    """Raises a clear error for a decoder whose layers this exporter does not know how to write out."""
    body = getattr(decoder, "model", None)
    layers = getattr(body, "layers", None)
    problem = None
    if layers is None or not hasattr(body, "rotary_emb") or not hasattr(body, "norm"):
        problem = "it has no model.layers / model.rotary_emb / model.norm"
    elif getattr(decoder.config, "sliding_window", None) and getattr(decoder.config, "use_sliding_window", True):
        problem = "sliding-window attention is not exported"
    else:
        for part in _LAYER_PARTS:
            if not hasattr(layers[0], part):
                problem = f"its layers lack `{part}`"
        attn = getattr(layers[0], "self_attn", None)
        if attn is not None and not all(hasattr(attn, p) for p in _ATTENTION_PARTS):
            problem = "its attention lacks q_proj/k_proj/v_proj/o_proj"
        if attn is not None and (hasattr(attn, "q_norm") or hasattr(attn, "k_norm")):
            problem = "query/key norms (Qwen3-style) are not exported yet"
        if attn is not None and not hasattr(sys.modules[type(attn).__module__], "apply_rotary_pos_emb"):
            problem = "its modeling module has no apply_rotary_pos_emb"
    if problem:
        raise NotImplementedError(f"cannot export decoder {type(decoder).__name__}: {problem}. Llama-family "
                                  f"decoders (Llama, Mistral, Qwen2) are supported.")


class _DecoderGraph(nn.Module):
    def __init__(self, model: FineCaptionModel):
        super().__init__()
        check_decoder_supported(model.decoder)
        self.decoder = model.decoder
        self.body = model.decoder.model
        attn = self.body.layers[0].self_attn
        self.rotate = sys.modules[type(attn).__module__].apply_rotary_pos_emb
        self.head_dim = attn.head_dim
        self.groups = attn.num_key_value_groups
        self.scaling = attn.scaling

    def _layers(self, hidden, allowed, position_ids, past):
        """hidden (R,Q,D); allowed (R,1,Q,K) bool; past: list of (key, value) or None -> (hidden, presents)."""
        cos, sin = self.body.rotary_emb(hidden, position_ids)
        fill = torch.tensor(torch.finfo(torch.float32).min, dtype=torch.float32)
        presents = []
        for index, layer in enumerate(self.body.layers):
            attn = layer.self_attn
            residual = hidden
            normed = layer.input_layernorm(hidden)
            shape = (hidden.shape[0], hidden.shape[1], -1, self.head_dim)
            query = attn.q_proj(normed).view(shape).transpose(1, 2)
            key = attn.k_proj(normed).view(shape).transpose(1, 2)
            value = attn.v_proj(normed).view(shape).transpose(1, 2)
            query, key = self.rotate(query, key, cos, sin)
            if past is not None:
                key = torch.cat([past[2 * index], key], dim=2)
                value = torch.cat([past[2 * index + 1], value], dim=2)
            presents += [key, value]
            key, value = _repeat_kv(key, self.groups), _repeat_kv(value, self.groups)
            scores = torch.matmul(query, key.transpose(2, 3)) * self.scaling
            scores = torch.where(allowed, scores.float(), fill)
            weights = torch.softmax(scores, dim=-1).to(query.dtype)
            out = torch.matmul(weights, value).transpose(1, 2)
            out = out.reshape(hidden.shape[0], hidden.shape[1], -1)
            hidden = residual + attn.o_proj(out)
            residual = hidden
            hidden = residual + layer.mlp(layer.post_attention_layernorm(hidden))
        last = self.body.norm(hidden[:, -1:])
        return self.decoder.lm_head(last)[:, 0].float(), presents  # fp16 graphs: logits in fp32


class DecoderPrefillGraph(_DecoderGraph):
    def forward(self, visual, prompt_ids, attention_mask, position_ids):
        embeds = torch.cat([visual, self.body.embed_tokens(prompt_ids)], dim=1)
        length = embeds.shape[1]
        index = torch.arange(length, device=embeds.device)
        causal = index[None, :] <= index[:, None]  # (Q, K)
        allowed = causal[None, None] & (attention_mask[:, None, None, :] > 0)
        logits, presents = self._layers(embeds, allowed, position_ids, None)
        return (logits, *presents)


class DecoderStepGraph(_DecoderGraph):
    def forward(self, input_ids, attention_mask, position_ids, *past):
        embeds = self.body.embed_tokens(input_ids)
        allowed = attention_mask[:, None, None, :] > 0  # (R,1,1,L+1): the new token sees the cache and itself
        logits, presents = self._layers(embeds, allowed, position_ids, list(past))
        return (logits, *presents)


def _repeat_kv(states: torch.Tensor, groups: int) -> torch.Tensor:
    if groups == 1:
        return states
    batch, heads, length, dim = states.shape
    return states[:, :, None].expand(batch, heads, groups, length, dim).reshape(batch, heads * groups, length, dim)
