"""FineCaption: mask-aware low-res ViT + high-res ConvNeXt (+ SAM) -> fused visual tokens -> causal LM decoder.

The forward pass is split where the cost is: `encode_frames` runs once per frame (no mask), `visual_tokens` runs
once per region and reuses its frame's features, and the decoder turns visual tokens + prompt into a caption.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from .config import CONFIG_NAME, FineCaptionConfig, tower_config
from .errors import RESAVE_HINT, ModelLoadError, brief
from .fusion import RegionFusion
from .hr_encoder import HighResEncoder
from .inputs import normalise_frames
from .mask_encoder import MaskAwareViT
from .scene_context import NeighborTokens, ObjectCounter, density_targets

WEIGHTS_NAME = "model.safetensors"
# What `neighbor_names` gives a neighbour token: relative locations name the neighbour by its colour and category.
NEIGHBOR_NAMES = ("category", "color")
# Weights of the object counter before its density head became convolutional (models saved before it).
_EARLIER_COUNT_HEAD = ("counter.density_head.", "counter.norm.")
# The embedded default model (the captioner and the engines' CLI load it when no model is named).
DEFAULT_MODEL_DIR = Path(__file__).parent.parent / "checkpoints" / "default"


@dataclass
class FrameFeatures:
    coarse: torch.Tensor | None  # (F, C, h, w)
    fine: torch.Tensor | None  # (F, C', H', W')
    density: torch.Tensor | None = None  # (F, 2h, 2w) object centres per cell, with a count token


class FineCaptionModel(nn.Module):
    def __init__(self, config: FineCaptionConfig, mask_encoder: MaskAwareViT | None = None,
                 hr_encoder: HighResEncoder | None = None, decoder: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.mask_encoder = mask_encoder or MaskAwareViT.from_config(tower_config(config.mask_encoder))
        if config.use_hr:
            sam = tower_config(config.sam_encoder) if config.sam_encoder else None
            self.hr_encoder = hr_encoder or HighResEncoder.from_config(
                tower_config(config.hr_encoder), sam, config.region_feature_stage)
        else:
            self.hr_encoder = None
        self.decoder = decoder or AutoModelForCausalLM.from_config(tower_config(config.decoder))
        width = self.decoder.config.hidden_size
        self.fusion = RegionFusion(
            vit_channels=self.mask_encoder.hidden_size,
            hr_channels=self.hr_encoder.out_channels if self.hr_encoder else 0,
            fine_channels=self.hr_encoder.fine_channels if self.hr_encoder else 0,
            width=width, adapter_hidden=config.adapter_hidden, context_grid=config.context_grid,
            region_grid=config.region_grid, roi_sampling=config.roi_sampling, shape_grid=config.shape_grid,
            context_positions=config.context_positions)
        names = {name: len(config.aux_classes[name]) for name in NEIGHBOR_NAMES
                 if config.neighbor_names and name in config.aux_classes}
        self.neighbors = (NeighborTokens(width, config.neighbor_tokens, config.adapter_hidden, names)
                          if config.neighbor_tokens else None)
        self.counter = (ObjectCounter(self.hr_encoder.out_channels, self.hr_encoder.mid_channels, width,
                                      config.adapter_hidden)
                        if config.has_object_counter else None)
        # The fusion's summary token comes last, before the scene-context tokens appended after it.
        self.summary_index = -1 - config.neighbor_tokens * (self.neighbors is not None) - (self.counter is not None)
        # Auxiliary attribute classifiers on the summary token: a training signal only, never used to caption.
        self.aux_heads = nn.ModuleDict({name: nn.Linear(width, len(values))
                                        for name, values in config.aux_classes.items()})

    # ---- vision -------------------------------------------------------------------------------------------------
    def encode_frames(self, hr_pixels: torch.Tensor | None) -> FrameFeatures:
        if self.hr_encoder is None or hr_pixels is None:
            return FrameFeatures(None, None)
        coarse, fine, mid = self.hr_encoder(hr_pixels)
        density = self.counter.density(mid, coarse) if self.counter is not None else None
        return FrameFeatures(coarse, fine, density)

    def visual_tokens(self, lr_pixels: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor,
                      frames: FrameFeatures, frame_index: torch.Tensor,
                      groups: torch.Tensor | None = None) -> torch.Tensor:
        """lr_pixels (F,3,s,s) per frame; masks (R,1,S,S) float at the high-res side; boxes (R,4) normalised;
        frame_index (R,) which frame each region belongs to; groups (R,) which regions are each other's neighbours
        (default: those of the same frame) -> (R, T, width).

        Token order: context, region cells, summary, then the neighbour tokens and the count token if configured."""
        tokens = self.region_tokens(lr_pixels, masks, boxes, frames, frame_index)
        return self.scene_tokens(tokens, boxes, frames, frame_index, groups)

    def region_tokens(self, lr_pixels: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor,
                      frames: FrameFeatures, frame_index: torch.Tensor) -> torch.Tensor:
        """Each region's own tokens (context, region cells, summary): (R, T0, width). A region's tokens depend on
        it alone, so the regions may be encoded in any split (the engines shard them across threads)."""
        masks, boxes = self.apply_mask_mode(masks, boxes)
        lr_size = self.config.lr_image_size
        lr_masks = F.interpolate(masks, size=(lr_size, lr_size), mode="area")
        vit_map = self.mask_encoder(lr_pixels[frame_index], lr_masks)
        coarse, fine = self.fusion.normalise_frames(frames.coarse, frames.fine)
        coarse = coarse[frame_index] if coarse is not None else None
        fine = fine[frame_index] if fine is not None else None
        return self.fusion(vit_map, coarse, fine, masks, boxes)

    @property
    def has_scene_tokens(self) -> bool:
        return self.neighbors is not None or self.counter is not None

    def scene_tokens(self, tokens: torch.Tensor, boxes: torch.Tensor | None, frames: FrameFeatures,
                     frame_index: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """Appends what depends on the other regions and the frame: the neighbour tokens (from the other regions'
        summary tokens) and the count token. Needs every region of a frame at once. (R,T0,D) -> (R,T,D).
        `boxes` is read only for neighbour tokens (None will do without them)."""
        appended = [tokens]
        if self.neighbors is not None:
            boxes = self.mode_boxes(boxes)
            summary = tokens[:, -1]
            names = {name: self.aux_heads[name](summary).softmax(-1) for name in self.neighbors.names}
            appended.append(self.neighbors(summary, boxes, frame_index if groups is None else groups, names))
        if self.counter is not None:
            appended.append(self.counter(frames.density)[frame_index].unsqueeze(1))
        return torch.cat(appended, dim=1) if len(appended) > 1 else tokens

    def mode_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """The boxes the model sees: the whole image for mask_mode "none", else the regions' own."""
        if self.config.mask_mode == "none":
            return torch.tensor([0.0, 0.0, 1.0, 1.0]).expand_as(boxes).to(boxes)
        return boxes

    def apply_mask_mode(self, masks: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ablations: "box" replaces each mask by its filled box, "none" by the whole image."""
        mode = self.config.mask_mode
        if mode == "mask":
            return masks, boxes
        if mode == "none":
            return torch.ones_like(masks), self.mode_boxes(boxes)
        side = masks.shape[-1]
        coords = (torch.arange(side, device=masks.device, dtype=masks.dtype) + 0.5) / side
        inside_x = (coords[None] >= boxes[:, 0:1]) & (coords[None] <= boxes[:, 2:3])
        inside_y = (coords[None] >= boxes[:, 1:2]) & (coords[None] <= boxes[:, 3:4])
        return (inside_y[:, :, None] & inside_x[:, None, :]).unsqueeze(1).to(masks.dtype), boxes

    def aux_logits(self, visual: torch.Tensor) -> dict[str, torch.Tensor]:
        summary = visual[:, self.summary_index]
        return {name: head(summary) for name, head in self.aux_heads.items()}

    # ---- decoder ------------------------------------------------------------------------------------------------
    def embed_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.decoder.get_input_embeddings()(token_ids)

    def caption_loss(self, visual: torch.Tensor, token_ids: torch.Tensor, attention: torch.Tensor,
                     labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forced loss. token_ids/attention/labels (R,L) right-padded prompt+caption; labels -100 on the
        prompt and padding."""
        embeds = torch.cat([visual, self.embed_tokens(token_ids)], dim=1)
        visual_mask = torch.ones(visual.shape[:2], dtype=attention.dtype, device=attention.device)
        attention = torch.cat([visual_mask, attention], dim=1)
        ignore = torch.full(visual.shape[:2], -100, dtype=labels.dtype, device=labels.device)
        out = self.decoder(inputs_embeds=embeds, attention_mask=attention, labels=torch.cat([ignore, labels], 1))
        return out.loss

    def forward(self, images, masks=None, boxes=None, frame_index=None, token_ids=None, attention=None, labels=None,
                aux_labels=None,
                aux_weight: float = 0.0, groups=None, object_centres=None,
                centres_known=None, count_weight: float | None = None,
                count_only: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss for a batch of frames (uint8 B,H,W,3) and their regions; see `data/batches.py`.
        `count_only`: the count head's loss alone, the high-res encoder frozen (`train --count-head-only`); it needs
        only the frames and their object centres (`data.batches.frame_batch`)."""
        config = self.config
        hr = normalise_frames(images, config.hr_image_size, config.image_mean, config.image_std)
        if count_only:
            with torch.no_grad():
                coarse, _, mid = self.hr_encoder(hr)
            stats = {}
            loss = self._count_loss(self.counter.density(mid, coarse), object_centres, centres_known, stats)
            stats["count"] = loss.item()
            return loss, stats
        if token_ids is None:
            raise ValueError("a caption batch needs masks, boxes, frame_index, token_ids, attention and labels; "
                             "only count_only=True trains on frames alone")
        lr = normalise_frames(images, config.lr_image_size, config.image_mean, config.image_std)
        frames = self.encode_frames(hr if config.use_hr else None)
        visual = self.visual_tokens(lr, masks, boxes, frames, frame_index, groups)
        loss = self.caption_loss(visual, token_ids, attention, labels)
        stats = {"caption": loss.item()}
        if self.counter is not None and object_centres is not None and centres_known is not None:
            weight = aux_weight if count_weight is None else count_weight
            loss = loss + weight * self._count_loss(frames.density, object_centres, centres_known, stats)
        if aux_labels is None or not self.aux_heads or aux_labels.shape[1] == 0:
            return loss, stats
        for column, (name, logits) in enumerate(self.aux_logits(visual).items()):
            target = aux_labels[:, column]
            keep = target >= 0
            # Every head joins the graph (DDP expects all parameters to get gradients), even with no target.
            aux = F.cross_entropy(logits, target, ignore_index=-100) if keep.any() else logits.sum() * 0
            loss = loss + aux_weight * aux
            if keep.any():
                stats[f"acc_{name}"] = (logits[keep].argmax(-1) == target[keep]).float().mean().item()
        return loss, stats

    def _count_loss(self, density, centres, known, stats) -> torch.Tensor:
        """Per-cell density against the object centres, plus the frame's total: frames whose objects are not all
        known (real datasets) are left out."""
        target = density_targets(centres, *density.shape)
        if not known.any():
            return density.sum() * 0  # keeps the head in the graph for DDP
        density, target = density[known], target[known]
        counted, count = density.sum(dim=(1, 2)), target.sum(dim=(1, 2))
        cells = F.mse_loss(density, target, reduction="sum") / len(density)
        stats["acc_count"] = (counted.round() == count).float().mean().item()
        return cells + F.smooth_l1_loss(counted, count)

    # ---- persistence --------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, tokenizer=None) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(_untie(state), str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(directory))

    @classmethod
    def from_pretrained(cls, directory: str | Path, config: FineCaptionConfig | None = None,
                        allow_new_parameters: bool = False) -> "FineCaptionModel":
        """`config` replaces the saved one (fine-tuning with changed fusion settings); with `allow_new_parameters`
        the parameters it adds keep their initialisation instead of being an error, and saved parameters the model
        no longer has (a module replaced since, such as an earlier count head) are left out."""
        directory = Path(directory)
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"no {WEIGHTS_NAME} in {directory}: is this a FineCaption model directory?")
        config = config or FineCaptionConfig.load(directory)
        try:  # the towers' settings are only checked by transformers, as it builds them
            model = cls(config)
        except (ValueError, TypeError, KeyError, AttributeError, RuntimeError) as err:
            raise ModelLoadError(f"{directory / CONFIG_NAME} does not describe a model that can be built "
                                 f"({brief(err)}); {RESAVE_HINT}") from None
        try:
            state = load_file(str(weights))
        except Exception as err:  # noqa: BLE001 - safetensors raises its own SafetensorError, an Exception
            raise ModelLoadError(f"{weights} is corrupt or truncated ({brief(err)}); {RESAVE_HINT}") from None
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as err:  # tensors of the wrong shape
            raise ModelLoadError(f"{weights} does not match {directory / CONFIG_NAME} ({brief(err)}); "
                                 f"{RESAVE_HINT}") from None
        missing = [k for k in missing if not _is_tied_copy(model, k)]
        if any(k.startswith(_EARLIER_COUNT_HEAD) for k in unexpected) and not allow_new_parameters:
            raise ModelLoadError(f"{weights} holds the earlier per-cell count head, which this version replaced; "
                                 f"give the model the current one with `finecaption train --init-from {directory} "
                                 f"--out NEW_DIR --count-head-only --scenes-per-batch 32` (about 30 min on 2 cores)")
        if (unexpected or missing) and not allow_new_parameters:
            raise ModelLoadError(f"{weights} does not match {directory / CONFIG_NAME}: missing {missing[:5]}, "
                                 f"unexpected {unexpected[:5]}; {RESAVE_HINT}")
        if missing:
            print(f"initialised fresh: {', '.join(missing)}")
        if unexpected:
            print(f"left out (not in this model): {', '.join(unexpected)}")
        return model.eval()


TOKENIZER_NAME = "tokenizer.json"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"


def load_tokenizer(directory: str | Path):
    """The tokenizer saved beside a model. A tokenizer that names its own code (`auto_map`) is refused: a model
    directory never runs code."""
    directory = Path(directory)
    for name in (TOKENIZER_CONFIG_NAME, CONFIG_NAME):
        path = directory / name
        try:
            settings = json.loads(path.read_bytes()) if path.is_file() else {}
        except (ValueError, RecursionError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise ModelLoadError(f"{path} is not valid JSON ({type(err).__name__}); {RESAVE_HINT}") from None
        if isinstance(settings, dict) and "auto_map" in settings:
            raise ModelLoadError(f"{path} names custom code to run (auto_map {settings['auto_map']!r:.80}); a "
                                 "model directory never runs code: use a tokenizer transformers has built in")
    if not (directory / TOKENIZER_NAME).is_file() and not (directory / TOKENIZER_CONFIG_NAME).is_file():
        raise FileNotFoundError(f"no tokenizer in {directory} ({TOKENIZER_NAME}, {TOKENIZER_CONFIG_NAME}); save it "
                                "beside the model with save_pretrained(directory, tokenizer)")
    try:
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False)
    except Exception as err:  # noqa: BLE001 - tokenizers raises a bare Exception for a corrupt tokenizer.json
        raise ModelLoadError(f"the tokenizer in {directory} cannot be loaded ({brief(err)}); {RESAVE_HINT}") from None


def weights_digest(directory: str | Path) -> str:
    """Short content hash of a model directory's weights: identifies a model in messages and engine manifests."""
    digest = hashlib.sha256()
    with open(Path(directory) / WEIGHTS_NAME, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _untie(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses shared storage (tied embeddings): keep one copy of each storage."""
    seen, result = set(), {}
    for key, tensor in state.items():
        ptr = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if ptr in seen:
            continue
        seen.add(ptr)
        result[key] = tensor
    return result


def _is_tied_copy(model: nn.Module, key: str) -> bool:
    return key.endswith("lm_head.weight") and getattr(model.decoder.config, "tie_word_embeddings", False)
