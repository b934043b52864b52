"""Neighbour tokens (relative location) and the count token (global captions): the scene context of a region."""
import numpy as np
import pytest
import torch

from finecaption_ros.model.scene_context import NeighborTokens, ObjectCounter, density_targets, offset_features


def _boxes(centres, half=0.02):
    c = torch.tensor(centres, dtype=torch.float32)
    return torch.cat([c - half, c + half], dim=1)


def _neighbours(count=2):
    torch.manual_seed(0)
    module = NeighborTokens(width=8, count=count, hidden=16)
    torch.nn.init.normal_(module.absent)
    # The offset embedding is zeroed so each neighbour token is exactly that neighbour's summary token.
    for p in module.offset_adapter.parameters():
        torch.nn.init.zeros_(p)
    return module


def test_neighbours_are_the_nearest_other_regions_nearest_first():
    module = _neighbours()
    summary = torch.eye(4, 8)  # region i's summary is one-hot i
    boxes = _boxes([[0.1, 0.1], [0.2, 0.1], [0.5, 0.1], [0.9, 0.9]])
    tokens = module(summary, boxes, torch.zeros(4, dtype=torch.long))
    chosen = tokens[..., :4].argmax(-1).tolist()
    assert chosen == [[1, 2], [0, 2], [1, 0], [2, 1]]


def test_regions_of_other_groups_are_never_neighbours_and_a_lone_region_gets_the_absent_token():
    module = _neighbours()
    summary = torch.eye(3, 8)
    boxes = _boxes([[0.1, 0.1], [0.12, 0.1], [0.9, 0.9]])
    tokens = module(summary, boxes, torch.tensor([0, 1, 0]))
    assert torch.equal(tokens[1, 0], module.absent.detach()) and torch.equal(tokens[1, 1], module.absent.detach())
    assert tokens[0, 0, :3].argmax() == 2  # the far region of its own frame, not the near one of another frame
    assert torch.equal(tokens[0, 1], module.absent.detach())


def test_a_frame_captioned_with_others_gets_the_same_neighbours_as_alone():
    module = _neighbours()
    torch.manual_seed(1)
    summary = torch.randn(5, 8)
    boxes = _boxes(torch.rand(5, 2).mul(0.9).add(0.05).tolist())
    groups = torch.tensor([0, 0, 0, 1, 1])
    together = module(summary, boxes, groups)
    alone = module(summary[:3], boxes[:3], groups[:3])
    assert torch.allclose(together[:3], alone, atol=1e-6)


def test_offset_features_say_which_axis_dominates():
    features = offset_features(torch.tensor([[0.3, -0.1], [0.05, 0.2]]))
    assert features[0, 2] > 0 > features[1, 2]  # |dx| - |dy|


def test_density_targets_put_each_centre_in_its_cell_and_sum_to_the_count():
    centres = torch.tensor([[0, 0.05, 0.05], [0, 0.06, 0.04], [1, 0.99, 0.5]])
    target = density_targets(centres, frames=2, height=8, width=8)
    assert target[0, 0, 0] == 2 and target[1, 4, 7] == 1
    assert target.sum(dim=(1, 2)).tolist() == [2.0, 1.0]


def test_count_token_depends_on_the_predicted_count():
    counter = ObjectCounter(coarse_channels=6, mid_channels=4, width=8, hidden=16)
    coarse, mid = torch.randn(2, 6, 4, 4), torch.randn(2, 4, 8, 8)
    coarse[1] *= 3
    density = counter.density(mid, coarse)
    assert density.shape == (2, 8, 8) and (density >= 0).all()
    tokens = counter(density)
    assert tokens.shape == (2, 8)
    assert not torch.allclose(tokens[0], tokens[1])


def test_training_batches_keep_the_global_sample_out_of_neighbour_groups_and_carry_centres(tmp_path):
    from finecaption_ros.data.batches import TokenCache, collate, region_samples
    from finecaption_ros.data.scenes import SceneGenerator, world_texts
    from finecaption_ros.model.tokenizer import build_word_tokenizer

    tokenizer = build_word_tokenizer(world_texts())
    scene = SceneGenerator(seed=3).sample()
    samples = region_samples(scene, np.random.default_rng(0), p_global=1.0, p_dense=0.3)
    centres = [[(o.center[0] / 256, o.center[1] / 256) for o in scene.objects]]
    batch = collate([scene.image], [samples], TokenCache(tokenizer), 256, tokenizer.pad_token_id,
                    centres_per_frame=centres)
    assert batch["groups"].tolist() == [1] + [0] * len(scene.objects)  # the global sample comes first
    assert batch["object_centres"].shape == (len(scene.objects), 3)
    assert batch["centres_known"].tolist() == [True]


def test_count_loss_trains_the_density_head(random_model_dir):
    from finecaption_ros.data.batches import SceneBatches
    from finecaption_ros.model.finecaption import FineCaptionModel, load_tokenizer

    model = FineCaptionModel.from_pretrained(random_model_dir).train()
    batch = next(iter(SceneBatches(load_tokenizer(random_model_dir), 2, 256, seed=0, p_global=1.0)))
    loss, stats = model(**batch, aux_weight=0.5)
    loss.backward()
    assert "acc_count" in stats
    assert model.counter.map_head[0].weight.grad.abs().sum() > 0
    assert model.neighbors.offset_adapter[0].weight.grad.abs().sum() > 0


def test_frame_batches_hold_the_scenes_of_region_batches_and_train_the_count_head(random_model_dir):
    """`frames_only` (what `train --count-head-only` draws) skips the regions, not the scenes: the same frames and
    object centres as the full batches of the same seed, and the count loss is the same on both."""
    import torch

    from finecaption_ros.data.batches import SceneBatches
    from finecaption_ros.model.finecaption import FineCaptionModel, load_tokenizer

    tokenizer = load_tokenizer(random_model_dir)
    full = iter(SceneBatches(tokenizer, 3, 256, seed=5, p_global=0.5))
    frames = iter(SceneBatches(tokenizer, 3, 256, seed=5, p_global=0.5, frames_only=True))
    for _ in range(2):
        a, b = next(full), next(frames)
        assert set(b) == {"images", "object_centres", "centres_known"}
        for key in b:
            assert torch.equal(a[key], b[key]), key
    model = FineCaptionModel.from_pretrained(random_model_dir).train()
    with torch.no_grad():
        on_full, _ = model(**a, count_only=True)
    on_frames, stats = model(**b, count_only=True)
    assert torch.isclose(on_full, on_frames) and "acc_count" in stats
    with pytest.raises(ValueError, match="caption batch needs masks"):
        model(**b)


def test_count_weight_scales_the_count_loss_alone(random_model_dir):
    """`--count-weight` changes the count loss's share of the total and nothing else; unset, it is `aux_weight`."""
    import torch

    from finecaption_ros.data.batches import SceneBatches
    from finecaption_ros.model.finecaption import FineCaptionModel, load_tokenizer

    model = FineCaptionModel.from_pretrained(random_model_dir).eval()
    batch = next(iter(SceneBatches(load_tokenizer(random_model_dir), 2, 256, seed=0, p_global=1.0)))
    with torch.no_grad():
        default, _ = model(**batch, aux_weight=0.5)
        same, _ = model(**batch, aux_weight=0.5, count_weight=0.5)
        none, _ = model(**batch, aux_weight=0.5, count_weight=0.0)
        double, _ = model(**batch, aux_weight=0.5, count_weight=1.0)
    count_part = default - none  # the count loss at weight 0.5
    assert count_part > 0
    assert torch.isclose(same, default)
    assert torch.isclose(double - none, 2 * count_part, rtol=1e-4)


def test_neighbour_names_start_silent_and_then_carry_the_neighbours_classes():
    tokens = NeighborTokens(width=8, count=1, hidden=16, name_classes={"category": 3})
    summary = torch.randn(2, 8)
    boxes = torch.tensor([[0.1, 0.1, 0.2, 0.2], [0.6, 0.6, 0.7, 0.7]])
    groups = torch.zeros(2, dtype=torch.long)
    square, circle = torch.tensor([[0.0, 1.0, 0.0]] * 2), torch.tensor([[0.0, 0.0, 1.0]] * 2)
    plain = tokens(summary, boxes, groups, {"category": square})
    assert torch.equal(plain, tokens(summary, boxes, groups, {"category": circle}))  # zero-initialised
    with torch.no_grad():
        tokens.names["category"].weight.normal_()
    assert not torch.allclose(tokens(summary, boxes, groups, {"category": square}),
                              tokens(summary, boxes, groups, {"category": circle}))


def test_a_model_with_neighbour_names_reads_them_from_its_auxiliary_heads(random_model_dir):
    from finecaption_ros.model.config import FineCaptionConfig
    from finecaption_ros.model.finecaption import FineCaptionModel

    config = FineCaptionConfig.load(random_model_dir)
    config.neighbor_names = True
    model = FineCaptionModel.from_pretrained(random_model_dir, config=config, allow_new_parameters=True)
    assert set(model.neighbors.names) == {"category", "color"}
    with torch.no_grad():
        for embedding in model.neighbors.names.values():
            embedding.weight.normal_()
    summary = torch.randn(3, 1, model.decoder.config.hidden_size)
    boxes = torch.tensor([[0.1, 0.1, 0.2, 0.2], [0.5, 0.5, 0.6, 0.6], [0.8, 0.1, 0.9, 0.2]])
    frame_index = torch.zeros(3, dtype=torch.long)
    from finecaption_ros.model.finecaption import FrameFeatures

    density = torch.zeros(1, 16, 16)
    out = model.scene_tokens(summary, boxes, FrameFeatures(None, None, density), frame_index)
    assert out.shape == (3, 1 + model.config.neighbor_tokens + 1, summary.shape[-1])
