"""The mask-aware low-resolution encoder: a CLIP-style ViT whose patch embedding also sees the region mask.

As in Alpha-CLIP and FineCaption, a one-channel convolution over the mask is added to the RGB patch embedding.
It starts at zero, so a pretrained ViT behaves exactly as before until training teaches it to use the mask.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPVisionModel, PretrainedConfig, SiglipVisionModel

VISION_TOWERS = {"clip_vision_model": CLIPVisionModel, "siglip_vision_model": SiglipVisionModel}


class MaskAwarePatchEmbedding(nn.Module):
    """Takes RGB + mask stacked as 4 channels, so the tower's own forward needs no change."""

    def __init__(self, rgb_patch_embedding: nn.Conv2d):
        super().__init__()
        self.rgb = rgb_patch_embedding
        self.mask = nn.Conv2d(1, rgb_patch_embedding.out_channels, kernel_size=rgb_patch_embedding.kernel_size,
                              stride=rgb_patch_embedding.stride, padding=rgb_patch_embedding.padding, bias=False)
        nn.init.zeros_(self.mask.weight)

    @property
    def weight(self) -> torch.Tensor:  # the towers read the input dtype from `patch_embedding.weight`
        return self.rgb.weight

    def forward(self, pixels_and_mask: torch.Tensor) -> torch.Tensor:
        return self.rgb(pixels_and_mask[:, :3]) + self.mask(pixels_and_mask[:, 3:4])


class MaskAwareViT(nn.Module):
    def __init__(self, tower: nn.Module):
        super().__init__()
        embeddings = getattr(tower, "vision_model", tower).embeddings  # transformers 4 nests it, 5 does not
        if not isinstance(embeddings.patch_embedding, MaskAwarePatchEmbedding):
            embeddings.patch_embedding = MaskAwarePatchEmbedding(embeddings.patch_embedding)
        self.tower = tower
        self.hidden_size = tower.config.hidden_size
        self.grid = tower.config.image_size // tower.config.patch_size

    @classmethod
    def from_config(cls, config: PretrainedConfig) -> "MaskAwareViT":
        return cls(VISION_TOWERS[config.model_type](config))

    @classmethod
    def from_pretrained_tower(cls, directory: str) -> "MaskAwareViT":
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
        config = getattr(config, "vision_config", config)  # a full CLIP checkpoint holds the vision config inside
        tower_class = VISION_TOWERS[config.model_type]
        return cls(tower_class.from_pretrained(directory, local_files_only=True, use_safetensors=True))

    def forward(self, pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """pixels (R,3,S,S) normalised, mask (R,1,S,S) in [0,1] -> patch features (R, C, grid, grid)."""
        out = self.tower(pixel_values=torch.cat([pixels, mask], dim=1))
        tokens = out.last_hidden_state
        tokens = tokens[:, -self.grid * self.grid:]  # CLIP prepends a class token; SigLIP has none
        return tokens.transpose(1, 2).reshape(tokens.shape[0], self.hidden_size, self.grid, self.grid)
