"""Training: fresh synthetic scenes every step, caption loss plus auxiliary attribute losses.

Runs on one CPU process, or under `torchrun` with DistributedDataParallel (gloo on CPU, nccl on GPUs).
Checkpoints are ordinary model directories (loadable by `Captioner.from_pretrained`) plus `trainer_state.pt`,
from which `--resume` continues.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from .data.batches import AUX_CLASSES, CompositionCapBatches, SceneBatches
from .data.compositioncap import load_compositioncap
from .data.scenes import world_texts
from .model.config import FineCaptionConfig
from .model.finecaption import WEIGHTS_NAME, FineCaptionModel, load_tokenizer
from .model.tokenizer import build_word_tokenizer
from .tasks import ATTRIBUTE_TASK, TASKS, prompt_for
from .train_settings import PACKAGE_CONFIGS, TrainSettings  # noqa: F401 - both were defined here before

TRAINER_STATE = "trainer_state.pt"


class DistributedContext:
    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = torch.device("cpu")
        if self.world > 1:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend)
            if backend == "nccl":
                self.device = torch.device("cuda", self.local_rank)
                torch.cuda.set_device(self.device)
        elif torch.cuda.is_available():
            self.device = torch.device("cuda")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def close(self):
        if self.world > 1:
            dist.destroy_process_group()


def new_model(settings: TrainSettings, records=None):
    """A fresh model and word-level tokenizer for the synthetic world, or for a CompositionCap dataset's captions."""
    config = FineCaptionConfig.load(settings.config)
    if records is None:
        tokenizer = build_word_tokenizer(world_texts())
        config.aux_classes = AUX_CLASSES
    else:
        attributes = sorted({a for r in records for region in r.regions for a in region.attribute_captions})
        texts = [prompt_for(t, a) for t in TASKS for a in (attributes or [None]) if t != ATTRIBUTE_TASK or a]
        texts += [c for r in records for region in r.regions for c in region.attribute_captions.values()]
        texts += [r.dense_caption for rec in records for r in rec.regions if r.dense_caption]
        texts += [r.global_caption for r in records if r.global_caption]
        tokenizer = build_word_tokenizer(texts)
        config.aux_classes = {}
        config.attributes = attributes
    config.decoder = dict(config.decoder, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    _override(config, settings)
    return FineCaptionModel(config), tokenizer


def _override(config: FineCaptionConfig, settings: TrainSettings) -> None:
    for name in ("mask_mode", "use_hr", "context_grid", "context_positions", "neighbor_tokens", "count_token",
                 "neighbor_names"):
        if getattr(settings, name) is not None:
            setattr(config, name, getattr(settings, name))


def model_from(directory: str, settings: TrainSettings, records=None):
    """Fine-tuning start: a saved model's weights under its config plus the overrides; parameters the overrides add
    (e.g. context positions) start as the model initialises them. A model of the synthetic world whose vocabulary
    or attribute classes the world has since outgrown (new colours, words) moves to the world's current ones: every
    word and class it knew keeps its learned rows, the new ones start fresh."""
    config = FineCaptionConfig.load(directory)
    _override(config, settings)
    tokenizer = load_tokenizer(directory)
    world = build_word_tokenizer(world_texts()) if records is None and config.aux_classes else None
    if world is None or (world.get_vocab() == tokenizer.get_vocab() and config.aux_classes == AUX_CLASSES):
        return FineCaptionModel.from_pretrained(directory, config=config, allow_new_parameters=True), tokenizer
    old = FineCaptionModel.from_pretrained(directory, config=config, allow_new_parameters=True)
    old_classes = dict(config.aux_classes)
    config = FineCaptionConfig.load(directory)
    _override(config, settings)
    config.aux_classes = AUX_CLASSES
    config.decoder = dict(config.decoder, vocab_size=len(world), pad_token_id=world.pad_token_id,
                          bos_token_id=world.bos_token_id, eos_token_id=world.eos_token_id)
    model = FineCaptionModel(config)
    _transfer(old, tokenizer, old_classes, model, world)
    return model, world


def _transfer(old, old_tokenizer, old_classes: dict, new, new_tokenizer) -> None:
    """Copies `old`'s weights into `new`; rows indexed by token or by attribute class are matched by name."""
    old_vocab, new_vocab = old_tokenizer.get_vocab(), new_tokenizer.get_vocab()
    token_rows = [(new_vocab[w], i) for w, i in old_vocab.items() if w in new_vocab]
    state, target = old.state_dict(), new.state_dict()
    fresh = []
    for name, tensor in target.items():
        source = state.get(name)
        if source is None:
            fresh.append(name)
        elif source.shape == tensor.shape:
            tensor.copy_(source)
        elif name.startswith("aux_heads."):
            head = name.split(".")[1]
            old_names, new_names = old_classes.get(head, []), new.config.aux_classes[head]
            for j, label in enumerate(new_names):
                if label in old_names:
                    tensor[j] = source[old_names.index(label)]
        elif source.shape[1:] == tensor.shape[1:] and len(source) == len(old_vocab):
            for j, i in token_rows:
                tensor[j] = source[i]
        else:
            fresh.append(name)
    new.load_state_dict(target)
    grown = len(new_vocab) - len(token_rows)
    print(f"moved to the current world: {grown} new words, {len(fresh)} tensors fresh")


def freeze_parts(model, names: str) -> None:
    """`--freeze hr_encoder,counter.map_head`: those parts of the model (dotted module paths) keep their loaded
    weights."""
    for name in filter(None, (n.strip() for n in names.split(","))):
        try:
            part = model.get_submodule(name)
        except AttributeError:
            known = ", ".join(n for n, m in model.named_children() if m is not None)
            raise ValueError(f"--freeze {name}: this model has no part of that name; its parts are {known} "
                             f"(and their submodules, dotted: counter.map_head)") from None
        part.requires_grad_(False)


def count_head_parameters(model) -> list:
    """`--count-head-only`: freezes everything but the object counter's density head and returns its parameters."""
    if model.counter is None:
        raise ValueError("--count-head-only trains the object counter, and this model has none: give it one with "
                         "--count-token true (and a high-res encoder)")
    model.requires_grad_(False)
    head = model.counter.density_parameters()
    for parameter in head:
        parameter.requires_grad_(True)
    return head


def learning_rate(step: int, settings: TrainSettings) -> float:
    if step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    progress = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
    floor = settings.lr * settings.min_lr_ratio
    return floor + (settings.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def save_checkpoint(model, tokenizer, optimizer, step: int, settings: TrainSettings, elapsed: float) -> None:
    out = Path(settings.out)
    model.save_pretrained(out, tokenizer)
    torch.save({"optimizer": optimizer.state_dict(), "step": step, "elapsed_s": elapsed,
                "settings": asdict(settings)}, out / TRAINER_STATE)


def _refuse_overwrite(settings: TrainSettings, out: Path) -> None:
    """`--out` already holding a model is replaced only on request: training would overwrite its weights and
    tokenizer from step 0."""
    if settings.overwrite or not (out / WEIGHTS_NAME).exists():
        return
    if settings.resume and (out / TRAINER_STATE).is_file():
        return
    why = f"has no {TRAINER_STATE} to resume from" if settings.resume else "already holds a model"
    raise ValueError(f"--out {out} {why} ({WEIGHTS_NAME}); pass --overwrite to replace it, --init-from {out} to "
                     "fine-tune it into another --out, or choose another --out")


def _load_trainer_state(path: Path) -> dict:
    fix = f"train without --resume (with --overwrite) to start {path.parent} again"
    try:  # weights_only: a trainer state is tensors and plain values; nothing in it may run code on load
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's refusal names ways around weights_only: not repeated here
        raise ValueError(f"cannot resume from {path}: not a trainer state of tensors and plain values (it is corrupt, "
                         f"or holds Python objects, which are never unpickled); {fix}") from None
    except Exception as err:  # noqa: BLE001 - torch reports a corrupt file as any of several types
        reason = (str(err).splitlines() or [""])[0][:200]
        raise ValueError(f"cannot resume from {path}: not a readable trainer state ({type(err).__name__}: "
                         f"{reason}); {fix}") from None
    if not isinstance(state, dict) or not {"optimizer", "step", "elapsed_s"} <= set(state):
        raise ValueError(f"cannot resume from {path}: not a trainer state written by `finecaption train`; {fix}")
    return state


def train(settings: TrainSettings) -> Path:
    settings.check()
    out = Path(settings.out)
    _refuse_overwrite(settings, out)
    ctx = DistributedContext()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    start_step, elapsed_before = 0, 0.0
    records = None
    if settings.compositioncap:
        root = settings.image_root or str(Path(settings.compositioncap).parent)
        records = load_compositioncap(settings.compositioncap, root)
    if settings.init_from and not (settings.resume and (out / TRAINER_STATE).is_file()):
        model, tokenizer = model_from(settings.init_from, settings, records)
        state = None
    elif settings.resume and (out / TRAINER_STATE).is_file():
        model = FineCaptionModel.from_pretrained(out).train()
        tokenizer = load_tokenizer(out)
        state = _load_trainer_state(out / TRAINER_STATE)
        start_step, elapsed_before = state["step"], state["elapsed_s"]
    else:
        if settings.resume and ctx.main:
            print(f"no {TRAINER_STATE} in {out}; starting from scratch")
        model, tokenizer = new_model(settings, records)
        state = None
    model.to(ctx.device).train()
    if settings.freeze:
        freeze_parts(model, settings.freeze)
    trained = [p for p in model.parameters() if p.requires_grad]
    if settings.count_head_only:
        trained = count_head_parameters(model)
    optimizer = torch.optim.AdamW(trained, lr=settings.lr, weight_decay=settings.weight_decay)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    # The towers' pooling heads (CLIP post-layernorm, ConvNeXt final norm) feed nothing we use.
    net = DistributedDataParallel(model, find_unused_parameters=True) if ctx.world > 1 else model
    if records is not None:
        data = CompositionCapBatches(records, tokenizer, settings.scenes_per_batch, model.config.hr_image_size,
                                     seed=settings.seed + start_step, rank=ctx.rank)
    else:
        data = SceneBatches(tokenizer, settings.scenes_per_batch, model.config.hr_image_size,
                            seed=settings.seed + start_step, rank=ctx.rank, p_global=settings.p_global,
                            p_dense=settings.p_dense, relation_boost=settings.relation_boost,
                            frames_only=settings.count_head_only)
    loader = DataLoader(data, batch_size=None, num_workers=settings.workers,
                        persistent_workers=settings.workers > 0)
    if ctx.main:
        params = sum(p.numel() for p in model.parameters())
        print(f"training {model.config.name} ({params / 1e6:.2f}M parameters) on {ctx.device} x{ctx.world}, "
              f"steps {start_step}->{settings.steps}, out {out}")
    bar = tqdm(total=settings.steps, initial=start_step, disable=not ctx.main, dynamic_ncols=True)
    began = time.monotonic()
    step = start_step
    samples = 0
    unit = "frames" if settings.count_head_only else "regions"  # what a count-head batch holds
    for batch in loader:
        if step >= settings.steps:
            break
        if settings.max_minutes and (time.monotonic() - began) / 60 >= settings.max_minutes:
            if ctx.main:
                print(f"stopping at step {step}: --max-minutes {settings.max_minutes} reached")
            break
        batch = {k: v.to(ctx.device) for k, v in batch.items()}
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, settings)
        loss, stats = net(**batch, aux_weight=settings.aux_weight, count_weight=settings.count_weight,
                          count_only=settings.count_head_only)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        samples += len(batch["frame_index"] if "frame_index" in batch else batch["images"]) * ctx.world
        if ctx.main:
            rate = samples / max(1e-9, time.monotonic() - began)
            bar.set_postfix(loss=f"{loss.item():.3f}", **{f"{unit}_s": f"{rate:.0f}"},
                            **{k: f"{v:.2f}" for k, v in stats.items() if k.startswith("acc_")})
            bar.update(1)
            if step % settings.checkpoint_every == 0 or step == settings.steps:
                save_checkpoint(model, tokenizer, optimizer, step, settings,
                                elapsed_before + time.monotonic() - began)
    if ctx.main:
        bar.close()
        elapsed = elapsed_before + time.monotonic() - began
        save_checkpoint(model, tokenizer, optimizer, step, settings, elapsed)
        summary = {"steps": step, "wall_time_s": round(elapsed, 1), f"{unit}_seen": samples}
        (out / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"saved {out} after {step} steps, {elapsed / 60:.1f} min")
    ctx.close()
    return out
