"""Fusion of the mask-aware and high-res features into the decoder's visual tokens.

As in FineCaption, the mask-aware ViT features are resized to the high-res grid and concatenated channel-wise with
the ConvNeXt features; an MLP adapter maps them to the decoder width (the *context tokens*). Two measured
additions (see the README's model notes) make a small model learn from few samples:
- a LayerNorm on each encoder's output before fusion: without it the two towers' scales differ by ~100x and the
  decoder ignores the visual path;
- *region tokens*: the fused features RoI-aligned inside the region's box on a small grid, each cell with its mask
  coverage, plus one summary token (features averaged inside the mask and the mask's shape inside its box).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def roi_align(features: torch.Tensor, boxes: torch.Tensor, grid: int, sampling: int) -> torch.Tensor:
    """Bilinear RoI-Align. features (R,C,H,W), boxes (R,4) as normalised x0,y0,x1,y1 -> (R,C,grid,grid).

    Built on grid_sample so that ONNX export and TensorRT both support it.
    """
    steps = (torch.arange(grid * sampling, device=features.device, dtype=features.dtype) + 0.5) / (grid * sampling)
    x0, y0, x1, y1 = boxes.unbind(-1)
    xs = x0[:, None] + (x1 - x0)[:, None] * steps[None]  # (R, G*S)
    ys = y0[:, None] + (y1 - y0)[:, None] * steps[None]
    n = xs.shape[1]
    sample_grid = torch.stack([xs[:, None, :].expand(-1, n, -1), ys[:, :, None].expand(-1, -1, n)], dim=-1)
    sampled = F.grid_sample(features, sample_grid * 2 - 1, mode="bilinear", align_corners=False)
    return F.avg_pool2d(sampled, sampling)


BOX_FREQUENCIES = (1.0, 2.0, 4.0, 8.0)
BOX_FEATURES = 4 + 4 * 2 * len(BOX_FREQUENCIES)


def _geometry_features(geometry: torch.Tensor) -> torch.Tensor:
    """(..., 4) centre x, y and size w, h -> raw and as sinusoids: an MLP reads "which third of the image" from
    sinusoids within a few steps, from four raw numbers only slowly."""
    angles = geometry[..., None] * (torch.pi * torch.tensor(BOX_FREQUENCIES, dtype=geometry.dtype))
    return torch.cat([geometry, angles.sin().flatten(1), angles.cos().flatten(1)], dim=-1)


def box_features(boxes: torch.Tensor) -> torch.Tensor:
    """(R,4) boxes x0, y0, x1, y1 -> features of their centre and size."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return _geometry_features(torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1))


def region_features(geometry: torch.Tensor) -> torch.Tensor:
    """(R,8) region geometry in the letterboxed view (`model/inputs.py`) -> features of where the region's centroid
    lies in the frame (fractions of its width and height) and how big its box is relative to the frame's shorter
    side: the world's own definitions of position and size, whatever the frame's aspect ratio."""
    x0, y0, x1, y1, cx, cy, content_w, content_h = geometry.unbind(-1)
    shorter = torch.minimum(content_w, content_h)
    frame_x = (cx - (1 - content_w) / 2) / content_w
    frame_y = (cy - (1 - content_h) / 2) / content_h
    return _geometry_features(torch.stack([frame_x, frame_y, (x1 - x0) / shorter, (y1 - y0) / shorter], dim=-1))


def cell_boxes(rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
    """Box features of every cell of a rows x cols grid, in raster order: (rows*cols, BOX_FEATURES)."""
    y = torch.arange(rows, dtype=like.dtype, device=like.device) / rows
    x = torch.arange(cols, dtype=like.dtype, device=like.device) / cols
    y0, x0 = torch.meshgrid(y, x, indexing="ij")
    boxes = torch.stack([x0, y0, x0 + 1.0 / cols, y0 + 1.0 / rows], dim=-1).reshape(-1, 4)
    return box_features(boxes)


class MLPAdapter(nn.Sequential):
    def __init__(self, in_features: int, hidden: int, out_features: int):
        super().__init__(nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, out_features))


class RegionFusion(nn.Module):
    def __init__(self, vit_channels: int, hr_channels: int, fine_channels: int, width: int, adapter_hidden: int,
                 context_grid: int | None, region_grid: int, roi_sampling: int, shape_grid: int,
                 context_positions: bool = False):
        super().__init__()
        self.use_hr = hr_channels > 0
        self.context_grid = context_grid
        self.region_grid = region_grid
        self.roi_sampling = roi_sampling
        self.shape_grid = shape_grid
        self.vit_norm = nn.LayerNorm(vit_channels)
        self.hr_norm = nn.LayerNorm(hr_channels) if self.use_hr else None
        self.fine_norm = nn.LayerNorm(fine_channels) if self.use_hr else None
        self.context_adapter = MLPAdapter(vit_channels + hr_channels, adapter_hidden, width)
        # ConvNeXt features carry no absolute position and the decoder's RoPE sees only raster order: each context
        # token gets its cell's 2-D place, so "the object left of this region" can be found. Zero-initialised, so
        # a checkpoint trained without it is unchanged until fine-tuning uses it.
        self.context_position = nn.Linear(BOX_FEATURES, width) if context_positions else None
        if self.context_position is not None:
            nn.init.zeros_(self.context_position.weight)
            nn.init.zeros_(self.context_position.bias)
        cell_channels = vit_channels + fine_channels + 1  # + mask coverage of the cell
        self.region_adapter = MLPAdapter(cell_channels, adapter_hidden, width)
        # summary: masked means, coverage, the mask's shape inside its box, and the box itself (where and how big)
        self.summary_adapter = MLPAdapter(cell_channels + shape_grid * shape_grid + BOX_FEATURES, adapter_hidden, width)
        self.num_region_tokens = region_grid * region_grid + 1

    @staticmethod
    def _channel_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
        return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def normalise_frames(self, hr_coarse: torch.Tensor | None, hr_fine: torch.Tensor | None):
        """The high-res maps' LayerNorms, per frame: they act on each pixel alone, so normalising before the maps
        are gathered per region gives the same result at 1/R of the cost (the fine map is the largest tensor of
        the region stage)."""
        if not self.use_hr:
            return hr_coarse, hr_fine
        return self._channel_norm(self.hr_norm, hr_coarse), self._channel_norm(self.fine_norm, hr_fine)

    def forward(self, vit_map: torch.Tensor, coarse: torch.Tensor | None, fine: torch.Tensor | None,
                mask: torch.Tensor, geometry: torch.Tensor) -> torch.Tensor:
        """vit_map (R,Cv,g,g); coarse / fine: the high-res maps from `normalise_frames`, gathered per region
        (R,...); mask (R,1,S,S) float; geometry (R,8) (`model/inputs.py`).

        Returns visual tokens (R, T, width): context tokens then region tokens then the summary token.
        """
        vit_map = self._channel_norm(self.vit_norm, vit_map)
        if self.use_hr:
            vit_on_hr = F.interpolate(vit_map, size=coarse.shape[-2:], mode="bilinear", align_corners=False)
            fused = torch.cat([vit_on_hr, coarse], dim=1)
        else:
            fused = vit_map
        if self.context_grid:
            fused = F.adaptive_avg_pool2d(fused, self.context_grid)
        context = self.context_adapter(fused.flatten(2).transpose(1, 2))
        if self.context_position is not None:
            context = context + self.context_position(cell_boxes(*fused.shape[-2:], fused)).unsqueeze(0)

        # Region cells: each map is RoI-aligned at its own resolution (cheap), the high-res one masked first so
        # that another object inside the same box does not leak into this region's cells.
        grid, sampling = self.region_grid, self.roi_sampling
        boxes = geometry[:, :4]
        vit_mask = F.interpolate(mask, size=vit_map.shape[-2:], mode="area")
        cells = [roi_align(vit_map, boxes, grid, sampling)]
        inside = [_masked_mean(vit_map, vit_mask)]
        if self.use_hr:
            fine_mask = F.interpolate(mask, size=fine.shape[-2:], mode="area")
            cells.append(roi_align(fine * fine_mask, boxes, grid, sampling))
            inside.append(_masked_mean(fine, fine_mask))
        cells.append(roi_align(mask, boxes, grid, sampling))
        region = self.region_adapter(torch.cat(cells, dim=1).flatten(2).transpose(1, 2))

        shape = roi_align(mask, boxes, self.shape_grid, 2).flatten(1)
        coverage = mask.mean(dim=(1, 2, 3)).unsqueeze(1)
        summary = self.summary_adapter(torch.cat(inside + [coverage, shape, region_features(geometry)], dim=1)).unsqueeze(1)
        return torch.cat([context, region, summary], dim=1)


def _masked_mean(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (features * mask).sum(dim=(2, 3)) / mask.sum(dim=(2, 3)).clamp_min(1e-6)
