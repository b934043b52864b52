"""High-resolution encoders over the whole frame: ConvNeXt, and optionally the SAM ViT image encoder.

They see no mask, so a frame is encoded once and every region of that frame shares the result.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import ConvNextModel, PretrainedConfig, SamVisionModel


class HighResEncoder(nn.Module):
    def __init__(self, convnext: ConvNextModel, sam: SamVisionModel | None = None, region_feature_stage: int = 1):
        super().__init__()
        self.convnext = convnext
        self.sam = sam
        self.region_feature_stage = region_feature_stage
        sizes = convnext.config.hidden_sizes
        self.fine_channels = sizes[max(0, region_feature_stage - 1)]
        self.mid_channels = sizes[-2] if len(sizes) > 1 else sizes[-1]
        self.out_channels = sizes[-1] + (sam.config.output_channels if sam is not None else 0)

    @classmethod
    def from_config(cls, convnext_config: PretrainedConfig, sam_config: PretrainedConfig | None,
                    region_feature_stage: int) -> "HighResEncoder":
        sam = SamVisionModel(sam_config) if sam_config is not None else None
        return cls(ConvNextModel(convnext_config), sam, region_feature_stage)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """pixels (B,3,S,S) -> coarse map (B,C,h,w) for context tokens, fine map (B,C',H',W') for region cells, and
        the stage before the last (B,C'',2h,2w) for the object counter."""
        out = self.convnext(pixel_values=pixels, output_hidden_states=True)
        coarse = out.last_hidden_state
        fine = out.hidden_states[self.region_feature_stage]
        mid = out.hidden_states[-2]
        if self.sam is not None:
            sam_pixels = F.interpolate(pixels, size=(self.sam.config.image_size,) * 2, mode="bilinear",
                                       align_corners=False)
            sam_map = self.sam(pixel_values=sam_pixels).last_hidden_state
            sam_map = F.interpolate(sam_map, size=coarse.shape[-2:], mode="bilinear", align_corners=False)
            coarse = torch.cat([coarse, sam_map], dim=1)
        return coarse, fine, mid
