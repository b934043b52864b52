"""One JSON config for the whole FineCaption model: a transformers config per tower plus the fusion settings."""
from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from transformers import AutoConfig, PretrainedConfig

from ..tasks import ATTRIBUTES
from .errors import RESAVE_HINT, ModelLoadError

CONFIG_NAME = "config.json"
MASK_MODES = ("mask", "box", "none")  # "box" and "none" exist for the ablations in the README


def tower_config(spec: dict | PretrainedConfig) -> PretrainedConfig:
    """A transformers config from a plain dict that names its `model_type`."""
    if isinstance(spec, PretrainedConfig):
        return spec
    spec = dict(spec)
    model_type = spec.pop("model_type")
    return AutoConfig.for_model(model_type, **spec)


@dataclass
class FineCaptionConfig:
    mask_encoder: dict  # CLIP or SigLIP vision config; image_size is the low-res view's side
    hr_encoder: dict  # ConvNeXt config; `hr_image_size` is the high-res view's side
    decoder: dict  # causal LM config (Llama family by default)
    sam_encoder: dict | None = None  # optional second high-res tower (SAM ViT image encoder)
    hr_image_size: int = 256
    use_hr: bool = True  # False gives the low-res-only ablation
    mask_mode: str = "mask"
    context_grid: int | None = 4  # fused feature map pooled to this grid; None keeps every cell as a token
    context_positions: bool = False  # add each context cell's 2-D position to its token
    region_grid: int = 4  # RoI-aligned cells per side inside the region's box
    roi_sampling: int = 4  # bilinear samples per cell side (RoI-Align)
    shape_grid: int = 8  # the mask inside its box, resampled to this grid, feeds the region summary token
    region_feature_stage: int = 1  # ConvNeXt hidden state used for region cells (1 = stride 4)
    adapter_hidden: int = 256
    neighbor_tokens: int = 0  # summary tokens of the K nearest other regions of the frame (relative location)
    neighbor_names: bool = False  # neighbour tokens also carry the category and colour the auxiliary heads read
    count_token: bool = False  # an object-count token from a density head over the high-res features
    aux_classes: dict[str, list[str]] = field(default_factory=dict)  # auxiliary attribute heads for training
    attributes: list[str] = field(default_factory=lambda: list(ATTRIBUTES))  # what the attribute task may ask
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    name: str = "finecaption"

    def __post_init__(self):
        if self.mask_mode not in MASK_MODES:
            raise ValueError(f"mask_mode must be one of {MASK_MODES}, got {self.mask_mode!r}")
        self.image_mean = tuple(self.image_mean)
        self.image_std = tuple(self.image_std)

    @property
    def lr_image_size(self) -> int:
        return int(self.mask_encoder["image_size"])

    @property
    def has_object_counter(self) -> bool:
        """The count token's object counter reads the high-res features, so it needs both."""
        return bool(self.count_token and self.use_hr)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "FineCaptionConfig":
        """Raises ValueError naming the first key that is missing, unknown or of the wrong kind."""
        if not isinstance(data, dict):
            raise ValueError(f"a FineCaption config is a JSON object, got {type(data).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown FineCaption config keys: {sorted(unknown)[:10]}")
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
                   and f.name not in data]
        if missing:
            raise ValueError(f"missing FineCaption config keys: {missing}")
        for name, value in data.items():
            _check_value(name, value, cls.__dataclass_fields__[name].type)
        return cls(**data)

    def save(self, directory: str | Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / CONFIG_NAME).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "FineCaptionConfig":
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no FineCaption config at {path}")
        try:
            return cls.from_dict(json.loads(path.read_bytes().decode("utf-8")))
        except (UnicodeDecodeError, RecursionError) as err:
            raise ModelLoadError(f"{path} is not a FineCaption config ({type(err).__name__}); {RESAVE_HINT}") from None
        except ValueError as err:  # json.JSONDecodeError is one
            raise ModelLoadError(f"{path} is not a FineCaption config ({err}); {RESAVE_HINT}") from None


# What each field's JSON value must be, by its annotation (a string here: "int | None", "tuple[float, ...]").
# The towers' own settings are checked by transformers when the model is built from them.
_KINDS = {"dict": (dict,), "int": (int,), "bool": (bool,), "str": (str,), "float": (int, float), "list": (list,),
          "tuple": (list, tuple)}


def _check_value(name: str, value, annotation: str) -> None:
    options = [part.strip().split("[")[0] for part in annotation.split("|")]
    if value is None and "None" in options:
        return
    kinds = tuple(kind for option in options if option != "None" for kind in _KINDS[option])
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ValueError(f"config key {name!r} must be {annotation}, got {type(value).__name__} {value!r:.60}")
    if isinstance(value, dict) and name != "aux_classes" and not isinstance(value.get("model_type"), str):
        raise ValueError(f"config key {name!r} must name its transformers \"model_type\"")
    if isinstance(value, int) and not isinstance(value, bool) and value < 0:
        raise ValueError(f"config key {name!r} must not be negative, got {value}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"config key {name!r} must be a finite number, got {value}")
    if name in ("image_mean", "image_std") and (
            len(value) != 3 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)):
        raise ValueError(f"config key {name!r} must be three numbers (R, G, B), got {value!r:.60}")
