"""Composing a FineCaption model from pretrained parts on disk, for users who fine-tune a full-size model.

    model, tokenizer = build_from_components(clip="/models/clip-vit-large-patch14-336",
                                             convnext="/models/convnext-large-224-22k-1k",
                                             decoder="/models/Meta-Llama-3-8B")
    model.save_pretrained("/models/finecaption-8b-init", tokenizer)   # then `finecaption train --resume`-style fine-tuning

Only local directories are read (`local_files_only`): nothing is fetched from a hub. Weights are read only from
safetensors files and no directory's own code is run (no pickles, no `auto_map`).
"""
from __future__ import annotations

from transformers import AutoModelForCausalLM, ConvNextModel, SamVisionModel

from ..tasks import ATTRIBUTES
from .config import FineCaptionConfig
from .finecaption import FineCaptionModel, load_tokenizer
from .hr_encoder import HighResEncoder
from .mask_encoder import MaskAwareViT


def _tower_dict(config) -> dict:
    data = config.to_dict()
    data["model_type"] = config.model_type
    for key in ("transformers_version", "architectures", "_name_or_path", "torch_dtype", "dtype"):
        data.pop(key, None)
    return data


def build_from_components(clip: str, convnext: str, decoder: str, sam: str | None = None, hr_image_size: int = 1024,
                          name: str = "finecaption", attributes=ATTRIBUTES, **fusion) -> tuple[FineCaptionModel, object]:
    """`clip`: a CLIP / SigLIP vision (or full) checkpoint; `convnext`: a ConvNeXt checkpoint; `decoder`: a causal LM
    with its tokenizer; `sam`: optionally a SAM vision encoder. `fusion` overrides FineCaptionConfig fields
    (context_grid, region_grid, adapter_hidden, ...). The mask conv and the fusion adapters start fresh."""
    mask_encoder = MaskAwareViT.from_pretrained_tower(clip)
    convnext_model = ConvNextModel.from_pretrained(convnext, local_files_only=True, use_safetensors=True)
    sam_model = SamVisionModel.from_pretrained(sam, local_files_only=True, use_safetensors=True) if sam else None
    language_model = AutoModelForCausalLM.from_pretrained(decoder, local_files_only=True, use_safetensors=True,
                                                          trust_remote_code=False)
    tokenizer = load_tokenizer(decoder)
    if tokenizer.pad_token is None:  # Llama tokenizers ship without one; padding is always masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    settings = dict(context_grid=None, region_feature_stage=2, adapter_hidden=language_model.config.hidden_size)
    settings.update(fusion)
    config = FineCaptionConfig(
        mask_encoder=_tower_dict(mask_encoder.tower.config), hr_encoder=_tower_dict(convnext_model.config),
        decoder=_tower_dict(language_model.config), sam_encoder=_tower_dict(sam_model.config) if sam_model else None,
        hr_image_size=hr_image_size, name=name, attributes=list(attributes), **settings)
    hr_encoder = HighResEncoder(convnext_model, sam_model, config.region_feature_stage)
    model = FineCaptionModel(config, mask_encoder=mask_encoder, hr_encoder=hr_encoder, decoder=language_model)
    return model, tokenizer
