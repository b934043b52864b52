import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from finecaption_ros.model.finecaption import FineCaptionModel
from finecaption_ros.train import TRAINER_STATE, TrainSettings, train

REPO = Path(__file__).resolve().parents[1]


def small(out, **overrides):
    settings = dict(out=str(out), steps=3, scenes_per_batch=2, warmup=1, checkpoint_every=2, workers=0, threads=1)
    settings.update(overrides)
    return TrainSettings(**settings)


def test_training_lowers_the_loss_and_writes_a_loadable_checkpoint(tmp_path):
    from finecaption_ros.data.batches import SceneBatches
    from finecaption_ros.train import new_model

    torch.manual_seed(0)
    model, tokenizer = new_model(TrainSettings())
    batch = next(iter(SceneBatches(tokenizer, 2, 256, seed=3)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first, _ = model(**batch, aux_weight=0.5)
    for _ in range(15):  # the same batch: the loss must fall if gradients reach every part
        loss, _ = model(**batch, aux_weight=0.5)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.7 * first.item()

    out = train(small(tmp_path / "run"))
    assert (out / TRAINER_STATE).is_file()
    FineCaptionModel.from_pretrained(out)
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["steps"] == 3 and summary["wall_time_s"] > 0


def test_resume_continues_from_the_saved_step(tmp_path):
    out = tmp_path / "run"
    train(small(out, steps=2))
    before = FineCaptionModel.from_pretrained(out).state_dict()
    train(small(out, steps=4, resume=True))
    state = torch.load(out / TRAINER_STATE, map_location="cpu", weights_only=True)
    assert state["step"] == 4
    after = FineCaptionModel.from_pretrained(out).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_ablation_settings_reach_the_saved_config(tmp_path):
    out = train(small(tmp_path / "box", steps=1, mask_mode="box", use_hr=False))
    config = json.loads((out / "config.json").read_text())
    assert config["mask_mode"] == "box" and config["use_hr"] is False


def test_distributed_training_on_two_cpu_processes(tmp_path):
    """DDP over gloo, as `torchrun --nproc-per-node 2 -m finecaption_ros.cli train ...` runs it on GPUs."""
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(29500 + os.getpid() % 1000), "-m", "finecaption_ros.cli", "train", "--out", str(out),
               "--steps", "2", "--scenes-per-batch", "1", "--warmup", "1", "--workers", "0", "--threads", "1"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "x2" in done.stdout  # the main rank reports a world of two processes
    FineCaptionModel.from_pretrained(out)
    assert json.loads((out / "training_summary.json").read_text())["steps"] == 2


def test_training_on_compositioncap_format_data(tmp_path):
    """The real-data path: `finecaption demo-data` writes the CompositionCap format; training reads it back, builds
    its vocabulary from the captions and learns the attribute names it finds."""
    from finecaption_ros.captioner import Captioner
    from finecaption_ros.cli import main

    data = tmp_path / "data"
    assert main(["demo-data", "--out", str(data), "--n", "4", "--size", "128"]) == 0
    out = train(small(tmp_path / "real", steps=2, compositioncap=str(data / "annotations.json")))
    config = json.loads((out / "config.json").read_text())
    assert config["aux_classes"] == {} and "relative_location" in config["attributes"]
    captioner = Captioner.from_pretrained(out)
    scene_image = np.zeros((128, 128, 3), dtype=np.uint8)
    labels = np.zeros((128, 128), dtype=np.int32)
    labels[10:50, 10:50] = 1
    assert len(captioner.caption(scene_image, labels, task="attribute", attributes=["color"], max_new_tokens=3)) == 1


def test_fine_tuning_starts_from_a_saved_model_and_new_context_positions_start_neutral(tmp_path, random_model_dir):
    from finecaption_ros.model.inputs import normalise_frames

    base = FineCaptionModel.from_pretrained(random_model_dir)
    settings = small(tmp_path / "ft", init_from=str(random_model_dir), context_positions=True)
    from finecaption_ros.train import model_from

    tuned, _ = model_from(settings.init_from, settings)
    assert tuned.config.context_positions and torch.count_nonzero(tuned.fusion.context_position.weight) == 0
    images = torch.randint(0, 255, (1, 256, 256, 3), dtype=torch.uint8)
    masks = torch.zeros(1, 1, 256, 256)
    masks[..., 40:90, 60:120] = 1
    boxes = torch.tensor([[60 / 256, 40 / 256, 120 / 256, 90 / 256]])
    c = base.config
    hr = normalise_frames(images, c.hr_image_size, c.image_mean, c.image_std)
    lr = normalise_frames(images, c.lr_image_size, c.image_mean, c.image_std)
    index = torch.zeros(1, dtype=torch.long)
    with torch.no_grad():
        before = base.visual_tokens(lr, masks, boxes, base.encode_frames(hr), index)
        after = tuned.visual_tokens(lr, masks, boxes, tuned.encode_frames(hr), index)
    assert torch.allclose(before, after)  # zero-initialised: the loaded model behaves as saved
    out = train(settings)
    assert FineCaptionModel.from_pretrained(out).config.context_positions


def test_fine_tuning_a_model_of_an_older_world_keeps_every_word_and_class_it_knew(tmp_path):
    """The world grew (new colours, "no other object"): `--init-from` an older model moves it to the current
    vocabulary and attribute classes, row by row, instead of failing on the shapes."""
    from finecaption_ros.data.batches import AUX_CLASSES
    from finecaption_ros.data.scenes import world_texts
    from finecaption_ros.model.config import FineCaptionConfig
    from finecaption_ros.model.tokenizer import build_word_tokenizer
    from finecaption_ros.train import model_from

    dropped = {"pink", "brown", "no", "other"}
    old_texts = [" ".join(w for w in t.split() if w not in dropped) for t in world_texts()]
    old_tokenizer = build_word_tokenizer(old_texts)
    config = FineCaptionConfig.load(TrainSettings().config)
    config.aux_classes = {k: [v for v in values if v not in dropped] for k, values in AUX_CLASSES.items()}
    config.decoder = dict(config.decoder, vocab_size=len(old_tokenizer), pad_token_id=old_tokenizer.pad_token_id,
                          bos_token_id=old_tokenizer.bos_token_id, eos_token_id=old_tokenizer.eos_token_id)
    torch.manual_seed(0)
    old = FineCaptionModel(config)
    old.save_pretrained(tmp_path / "old", old_tokenizer)

    model, tokenizer = model_from(str(tmp_path / "old"), TrainSettings())
    assert tokenizer.get_vocab() == build_word_tokenizer(world_texts()).get_vocab()
    assert model.config.aux_classes == AUX_CLASSES
    old_rows, new_rows = old.decoder.get_input_embeddings().weight, model.decoder.get_input_embeddings().weight
    for word in ("red", "circle", "striped", "left"):
        i, j = old_tokenizer.get_vocab()[word], tokenizer.get_vocab()[word]
        assert torch.equal(old_rows[i], new_rows[j])
        assert torch.equal(old.decoder.lm_head.weight[i], model.decoder.lm_head.weight[j])
    colours = old.config.aux_classes["color"]
    red_old, red_new = colours.index("red"), AUX_CLASSES["color"].index("red")
    assert torch.equal(old.aux_heads["color"].weight[red_old], model.aux_heads["color"].weight[red_new])
    assert torch.equal(old.mask_encoder.state_dict()[next(iter(old.mask_encoder.state_dict()))],
                       model.mask_encoder.state_dict()[next(iter(model.mask_encoder.state_dict()))])


def test_count_head_only_training_changes_the_density_head_and_nothing_else(tmp_path, random_model_dir):
    out = train(small(tmp_path / "count", init_from=str(random_model_dir), count_head_only=True, steps=2))
    before = FineCaptionModel.from_pretrained(random_model_dir).state_dict()
    after = FineCaptionModel.from_pretrained(out).state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith(("counter.map_norm.", "counter.map_head.")) for name in changed)
    assert "counter.map_head.0.weight" in changed


def test_count_head_only_refuses_a_model_without_a_counter(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="--count-token true"):
        train(small(tmp_path / "no-counter", count_token=False, count_head_only=True))


def test_frozen_parts_keep_their_weights_and_an_unknown_part_is_named(tmp_path, random_model_dir):
    import pytest

    out = train(small(tmp_path / "frozen", init_from=str(random_model_dir), freeze="hr_encoder,counter.map_head"))
    before = FineCaptionModel.from_pretrained(random_model_dir).state_dict()
    after = FineCaptionModel.from_pretrained(out).state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and not any(name.startswith(("hr_encoder.", "counter.map_head.")) for name in changed)
    with pytest.raises(ValueError, match="--freeze hr_encodr: this model has no part of that name"):
        train(small(tmp_path / "typo", init_from=str(random_model_dir), freeze="hr_encodr"))
