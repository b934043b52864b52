"""Scene context for one region's caption: its nearest neighbour regions, and how many objects the frame holds.

Two measured additions to FineCaption's visual tokens (see the README's model notes). Pooled context tokens left a
small decoder unable to say which object sits next to a region (relative location: 0.5 % right) or to count the
objects of a frame (global captions: 44 %, chance 33 %):
- *neighbour tokens*: every region also gets the summary tokens of the K nearest other regions captioned with it
  (same frame, nearest centroid first), each plus an embedding of where it lies relative to the region. The
  summary token already carries a region's category and colour, so "left of the red circle" becomes a lookup.
  Regions share a frame's caption call anyway; a region captioned alone gets a learned "no neighbour" token.
- a *count token*: a density head over the high-res encoder's last feature map predicts, per cell, how many object
  centres it holds (trained against the scenes' object centres); their sum, encoded as soft one-hot levels, is one
  token. Summing a density map counts objects of any size, where pooled features only measure area.
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
    def __init__(self, width: int, count: int, hidden: int):
        super().__init__()
        self.count = count
        self.offset_adapter = MLPAdapter(OFFSET_FEATURES, hidden, width)
        self.absent = nn.Parameter(torch.zeros(width))

    def forward(self, summary: torch.Tensor, boxes: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """summary (R,D); boxes (R,8) region geometry (`model/inputs.py`: neighbours are measured between mask
        centroids in the letterboxed view, where both axes share one scale); groups (R,): regions are neighbours
        only within a group.

        Returns (R, K, D), nearest first. Written with TopK/Gather/Where only, so it exports for TensorRT."""
        regions, k = summary.shape[0], self.count
        centres = boxes[:, 4:6]
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
        return torch.where(present, tokens, self.absent.to(tokens.dtype).expand_as(tokens))


class ObjectCounter(nn.Module):
    def __init__(self, channels: int, width: int, hidden: int, max_count: int = 10, level_width: float = 0.35):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.density_head = MLPAdapter(channels, hidden, 1)
        # Start near "a few objects per frame" (softplus(-3) = 0.05 per cell), not 0.7 in every cell: a first
        # density loss in the tens would swamp the caption loss of a model being fine-tuned.
        nn.init.constant_(self.density_head[2].bias, -3.0)
        self.register_buffer("levels", torch.arange(max_count + 1, dtype=torch.float32), persistent=False)
        self.level_width = level_width
        self.adapter = MLPAdapter(max_count + 1, hidden, width)

    def density(self, coarse: torch.Tensor) -> torch.Tensor:
        """(F,C,h,w) -> (F,h,w) expected object centres per cell (>= 0)."""
        return F.softplus(self.density_head(self.norm(coarse.permute(0, 2, 3, 1)))).squeeze(-1)

    def forward(self, coarse: torch.Tensor) -> torch.Tensor:
        """(F,C,h,w) -> (F, D): the count token of each frame."""
        count = self.density(coarse).sum(dim=(1, 2))
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
