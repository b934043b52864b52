"""`finecaption train`'s settings, apart from the training code so that the command line parses (and refuses bad
settings) without importing torch."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

PACKAGE_CONFIGS = Path(__file__).parent / "configs"


@dataclass
class TrainSettings:
    config: str = str(PACKAGE_CONFIGS / "tiny.json")
    out: str = "runs/tiny"
    steps: int = 3000
    scenes_per_batch: int = 8
    lr: float = 1e-3
    min_lr_ratio: float = 0.2  # a high floor: the probe kept learning late in the schedule
    warmup: int = 100
    weight_decay: float = 0.01
    aux_weight: float = 0.5
    count_weight: float | None = None  # the count head's loss weight (default: aux_weight)
    checkpoint_every: int = 500
    seed: int = 0
    threads: int | None = None
    workers: int = 1
    resume: bool = False
    mask_mode: str | None = None  # ablations override the config's
    use_hr: bool | None = None
    max_minutes: float | None = None
    init_from: str | None = None  # start from this model directory's weights (fine-tuning), fresh optimizer
    context_grid: int | None = None  # overrides of the config's fusion settings
    context_positions: bool | None = None
    neighbor_tokens: int | None = None
    count_token: bool | None = None
    neighbor_names: bool | None = None
    freeze: str | None = None  # comma-separated model parts kept as loaded, e.g. "hr_encoder,counter.map_head"
    p_global: float = 0.25  # share of scenes that also train the global task
    p_dense: float = 0.3  # share of regions asked for a dense caption (the rest: one attribute)
    relation_boost: float = 1.0  # relative_location asked this many times as often as each other attribute
    # Train only the object counter's density head, on the frozen high-res features and without the caption loss:
    # every other output of the model stays exactly as it was.
    count_head_only: bool = False
    compositioncap: str | None = None  # a CompositionCap-format annotation file: train on it instead of scenes
    image_root: str | None = None  # where its images are (default: the annotation file's folder)
    overwrite: bool = False  # replace a model already in `out` (without --resume, training refuses to)

    def check(self) -> None:
        """Raise ValueError naming the first setting that cannot train."""
        limits = {  # name: (lowest, highest, lowest allowed itself)
            "steps": (1, None, True), "scenes_per_batch": (1, None, True), "lr": (0, None, False),
            "min_lr_ratio": (0, 1, True), "warmup": (0, None, True), "weight_decay": (0, None, True),
            "aux_weight": (0, None, True), "count_weight": (0, None, True), "checkpoint_every": (1, None, True),
            "seed": (0, 2**32 - 1, True),
            "threads": (1, 1024, True), "workers": (0, 64, True), "max_minutes": (0, None, False),
            "context_grid": (1, 64, True), "neighbor_tokens": (0, 16, True), "p_global": (0, 1, True),
            "p_dense": (0, 1, True), "relation_boost": (0, None, False),
        }
        for name, (low, high, inclusive) in limits.items():
            value = getattr(self, name)
            if value is None:
                continue
            flag = "--" + name.replace("_", "-")
            if not math.isfinite(value):
                raise ValueError(f"{flag} must be a finite number, got {value}")
            if value < low or (value == low and not inclusive) or (high is not None and value > high):
                bound = f"{'>=' if inclusive else '>'} {low}" + (f" and <= {high}" if high is not None else "")
                raise ValueError(f"{flag} must be {bound}, got {value}")
