"""Scene context for one region's caption: its nearest neighbour regions, and how many objects the frame holds.

Two measured additions to FineCaption's visual tokens (see the README's model notes). Pooled context tokens left a
small decoder unable to say which object sits next to a region (relative location: 0.5 % right) or to count the
objects of a frame (global captions: 44 %, chance 33 %):
- *neighbour tokens*: every region also gets the summary tokens of the K nearest other regions captioned with it
  (same frame, nearest box centre first), each plus an embedding of where it lies relative to the region. The
  summary token already carries a region's category and colour, so "left of the red circle" becomes a lookup.
  Regions share a frame's caption call anyway; a region captioned alone gets a learned "no neighbour" token.
  With `neighbor_names`, each neighbour token also carries the neighbour's category and colour probabilities as the
  auxiliary heads read them from its summary token, embedded. Without them the summary held the category (the
  auxiliary head read it right for every region) but the decoder named a neighbour of a held-out pair by a seen one
  ("left of the pink square" came out "left of the pink triangle"): most relation misses on camera frames.
- a *count token*: a density head over the high-res encoder's last two feature maps (ConvNeXt's stride-16 stage,
  with the stride-32 map brought up to its grid) predicts, per cell, how many object centres it holds (trained
  against the scenes' object centres); their sum, encoded as soft one-hot levels, is one token. Summing a density map
  counts objects of any size, where pooled features only measure area. The density is a per-frame output of the
  frame encoder; the count token is built from it with the other scene tokens.
  On the last map alone (8x8 cells of 32 px at the 256 px view) a per-cell head rounded to the right count on 64% of
  640x480 frames of 1-10 objects; a 3x3 convolutional head over both maps, on the same frozen features, on 86%
  (README, "The embedded default model").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fusion import MLPAdapter

OFFSET_FREQUENCIES = (1.0, 2.0, 4.0)
OFFSET_FEATURES = 4 + 2 * 2 * len(OFFSET_FREQUENCIES)
# Box centres are normalised to [0, 1]: squared distances stay below 2, so these order "absent" before "other frame".
_ABSENT_DISTANCE = 100.0
_EXCLUDED_DISTANCE = 1000.0


def offset_features(offsets: torch.Tensor) -> torch.Tensor:
    """(..., 2) neighbour centre minus region centre -> raw offset, which axis dominates, distance, sinusoids."""
    dx, dy = offsets.unbind(-1)
    raw = torch.stack([dx, dy, dx.abs() - dy.abs(), (dx * dx + dy * dy).sqrt()], dim=-1)
    angles = offsets[..., None] * (torch.pi * torch.tensor(OFFSET_FREQUENCIES, dtype=offsets.dtype))
    return torch.cat([raw, angles.sin().flatten(-2), angles.cos().flatten(-2)], dim=-1)


class NeighborTokens(nn.Module):
    def __init__(self, width: int, count: int, hidden: int, name_classes: dict[str, int] | None = None):
        """`name_classes`: attribute -> number of classes of the class probabilities `forward` gets per region
        (`neighbor_names`); each is embedded and added to the neighbour's token."""
        super().__init__()
        self.count = count
        self.offset_adapter = MLPAdapter(OFFSET_FEATURES, hidden, width)
        self.absent = nn.Parameter(torch.zeros(width))
        self.names = nn.ModuleDict({name: nn.Linear(classes, width, bias=False)
                                    for name, classes in (name_classes or {}).items()})
        for embedding in self.names.values():  # zero: a model fine-tuned into them starts as it was saved
            nn.init.zeros_(embedding.weight)

    def forward(self, summary: torch.Tensor, boxes: torch.Tensor, groups: torch.Tensor,
                names: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """summary (R,D); boxes (R,4) normalised; groups (R,): regions are neighbours only within a group; names:
        attribute -> (R, classes) probabilities, for each of `self.names`.

        Returns (R, K, D), nearest first. Written with TopK/Gather/Where only, so it exports for TensorRT."""
        regions, k = summary.shape[0], self.count
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        distance = ((centres[:, None] - centres[None]) ** 2).sum(-1)  # (R, R)
        index = torch.arange(regions, device=summary.device)
        excluded = (groups[:, None] != groups[None]) | (index[:, None] == index[None])
        distance = torch.where(excluded, torch.full_like(distance, _EXCLUDED_DISTANCE), distance)
        # K "absent" candidates after every real one and before every excluded one: topk always has K to choose
        # from, and never picks the region itself or a region of another group.
        padding = torch.full((regions, k), _ABSENT_DISTANCE, dtype=distance.dtype, device=distance.device)
        order = torch.topk(torch.cat([distance, padding], dim=1), k, dim=1, largest=False).indices  # (R, K)
        present = (order < regions).unsqueeze(-1)
        chosen = order.clamp(max=regions - 1)
        offsets = centres[chosen] - centres[:, None]
        tokens = summary[chosen] + self.offset_adapter(offset_features(offsets))
        for name, embedding in self.names.items():
            tokens = tokens + embedding(names[name][chosen])
        return torch.where(present, tokens, self.absent.to(tokens.dtype).expand_as(tokens))


class ObjectCounter(nn.Module):
    def __init__(self, coarse_channels: int, mid_channels: int, width: int, hidden: int, max_count: int = 10,
                 level_width: float = 0.35):
        super().__init__()
        channels = coarse_channels + mid_channels
        self.map_norm = nn.LayerNorm(channels)
        head = hidden // 2
        # 3x3 convolutions: whether an object's centre lies in this cell or the next is a comparison between cells.
        self.map_head = nn.Sequential(nn.Conv2d(channels, head, 3, padding=1), nn.GELU(),
                                      nn.Conv2d(head, head, 3, padding=1), nn.GELU(), nn.Conv2d(head, 1, 1))
        # Start near "a few objects per frame" (softplus(-3) = 0.05 per cell), not 0.7 in every cell: a first
        # density loss in the tens would swamp the caption loss of a model being fine-tuned.
        nn.init.constant_(self.map_head[-1].bias, -3.0)
        self.register_buffer("levels", torch.arange(max_count + 1, dtype=torch.float32), persistent=False)
        self.level_width = level_width
        self.adapter = MLPAdapter(max_count + 1, hidden, width)

    def density_parameters(self) -> list[nn.Parameter]:
        """The density head's weights: what `train --count-head-only` trains, and what the frame encoder runs."""
        return [*self.map_norm.parameters(), *self.map_head.parameters()]

    def density(self, mid: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """mid (F,C',H,W), coarse (F,C,h,w) -> (F,H,W) expected object centres per cell (>= 0)."""
        up = F.interpolate(coarse, size=mid.shape[-2:], mode="nearest")
        maps = self.map_norm(torch.cat([mid, up], dim=1).permute(0, 2, 3, 1))
        # contiguous: convolution backward on a channels-last view of these maps crashed torch 2.13 on CPU.
        return F.softplus(self.map_head(maps.permute(0, 3, 1, 2).contiguous())).squeeze(1)

    def forward(self, density: torch.Tensor) -> torch.Tensor:
        """(F,H,W) density -> (F, D): the count token of each frame."""
        count = density.sum(dim=(1, 2))
        levels = torch.exp(-0.5 * ((count[:, None] - self.levels) / self.level_width) ** 2)
        return self.adapter(levels)


def density_targets(centres: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
    """centres (N,3) as frame index, x, y normalised -> (frames, height, width) count of centres per cell."""
    target = torch.zeros(frames * height * width, dtype=torch.float32, device=centres.device)
    if len(centres):
        frame = centres[:, 0].long()
        col = (centres[:, 1] * width).long().clamp(0, width - 1)
        row = (centres[:, 2] * height).long().clamp(0, height - 1)
        target.index_add_(0, (frame * height + row) * width + col, torch.ones(len(centres), device=centres.device))
    return target.view(frames, height, width)
