"""Which regions of a label map get captioned: the minimum area and the region limit."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class RegionSelection:
    ids: list[int]  # kept, ascending
    areas: dict[int, int]  # pixel count of every region present (kept or not)
    below_min_area: list[int] = field(default_factory=list)
    over_limit: list[int] = field(default_factory=list)  # dropped because there were more than max_regions

    @property
    def present(self) -> int:
        return len(self.areas)

    def problems(self, min_area: int, max_regions: int) -> list[tuple[str, str, int]]:
        """(diagnostics counter, log line, count) for an empty mask and for each kind of skipped region."""
        found = []
        if not self.areas:
            found.append(("empty_masks", "mask has no regions (all background); nothing to caption", 1))
        if self.below_min_area:
            found.append(("regions_below_min_area", f"{len(self.below_min_area)} region(s) smaller than "
                          f"min_region_area = {min_area} px skipped (ids {_ids(self.below_min_area)})",
                          len(self.below_min_area)))
        if self.over_limit:
            found.append(("regions_over_limit", f"{self.present - len(self.below_min_area)} regions is more than "
                          f"max_regions = {max_regions}; the {len(self.over_limit)} smallest skipped "
                          f"(ids {_ids(self.over_limit)})", len(self.over_limit)))
        return found


def region_areas(labels: np.ndarray) -> dict[int, int]:
    """{region id: pixel count} for every non-zero label."""
    flat = labels.ravel()
    top = int(flat.max()) if flat.size else 0
    if top <= 0:
        return {}
    if top < 1 << 16 and flat.min() >= 0:
        counts = np.bincount(flat, minlength=top + 1)
        ids = np.nonzero(counts)[0]
        return {int(i): int(counts[i]) for i in ids if i}
    ids, counts = np.unique(flat, return_counts=True)
    return {int(i): int(c) for i, c in zip(ids, counts, strict=True) if i > 0}


def select_regions(labels: np.ndarray, min_area: int, max_regions: int) -> RegionSelection:
    """Keep regions of at least `min_area` pixels; of those, the `max_regions` largest (ties: lower id)."""
    areas = region_areas(labels)
    big = [i for i in sorted(areas) if areas[i] >= min_area]
    small = [i for i in sorted(areas) if areas[i] < min_area]
    over: list[int] = []
    if max_regions > 0 and len(big) > max_regions:
        ranked = sorted(big, key=lambda i: (-areas[i], i))
        keep = set(ranked[:max_regions])
        over = [i for i in big if i not in keep]
        big = [i for i in big if i in keep]
    return RegionSelection(big, areas, small, over)


def bbox_of(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x_offset, y_offset, width, height) of a boolean mask's True pixels; None when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


def keep_only(labels: np.ndarray, ids: list[int]) -> np.ndarray:
    """A copy of the label map with every region not in `ids` set to background."""
    return np.where(np.isin(labels, np.asarray(ids, dtype=labels.dtype)), labels, 0).astype(labels.dtype)


def _ids(ids: list[int], limit: int = 8) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")
