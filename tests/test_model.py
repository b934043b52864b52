import torch
from torch import nn

from finecaption_ros.model.config import FineCaptionConfig, tower_config
from finecaption_ros.model.finecaption import FineCaptionModel
from finecaption_ros.model.fusion import roi_align
from finecaption_ros.model.mask_encoder import MaskAwarePatchEmbedding, MaskAwareViT
from finecaption_ros.train import PACKAGE_CONFIGS, TrainSettings, new_model


def test_mask_conv_starts_at_zero_so_a_pretrained_vit_is_unchanged():
    config = FineCaptionConfig.load(PACKAGE_CONFIGS / "tiny.json")
    vit = MaskAwareViT.from_config(tower_config(config.mask_encoder))
    patch = vit.tower.embeddings.patch_embedding
    assert isinstance(patch, MaskAwarePatchEmbedding)
    assert torch.count_nonzero(patch.mask.weight) == 0
    pixels = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        with_mask = vit(pixels, torch.ones(2, 1, 128, 128))
        without = vit(pixels, torch.zeros(2, 1, 128, 128))
    assert torch.equal(with_mask, without)
    # Once trained, the mask changes the features.
    with torch.no_grad():
        patch.mask.weight.fill_(0.1)
        assert not torch.allclose(vit(pixels, torch.ones(2, 1, 128, 128)), without)


def test_roi_align_reads_the_box_it_is_given():
    features = torch.zeros(1, 1, 8, 8)
    features[..., 4:, 4:] = 1.0  # bottom-right quadrant lit
    boxes = torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5]])
    cells = roi_align(features.expand(2, -1, -1, -1), boxes, grid=2, sampling=2)
    assert torch.allclose(cells[0], torch.ones(1, 2, 2), atol=1e-5)
    assert torch.allclose(cells[1], torch.zeros(1, 2, 2), atol=1e-5)


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model, tokenizer = new_model(TrainSettings())
    model.save_pretrained(tmp_path, tokenizer)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in tmp_path.iterdir()}
    loaded = FineCaptionModel.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert loaded.config == model.config


def test_ablation_variants_build_and_run():
    images = torch.randint(0, 255, (1, 256, 256, 3), dtype=torch.uint8)
    masks = torch.zeros(2, 1, 256, 256)
    masks[0, :, 10:60, 20:80] = 1
    masks[1, :, 100:200, 100:140] = 1
    boxes = torch.tensor([[20 / 256, 10 / 256, 80 / 256, 60 / 256], [100 / 256, 100 / 256, 140 / 256, 200 / 256]])
    tokens = []
    for mask_mode, use_hr in (("mask", True), ("box", True), ("none", True), ("mask", False)):
        # as `make ablations` builds them: FineCaption's own architecture, no scene-context tokens
        model, _ = new_model(TrainSettings(mask_mode=mask_mode, use_hr=use_hr, neighbor_tokens=0, count_token=False))
        assert (model.hr_encoder is not None) == use_hr
        from finecaption_ros.model.inputs import normalise_frames
        c = model.config
        hr = normalise_frames(images, c.hr_image_size, c.image_mean, c.image_std)
        lr = normalise_frames(images, c.lr_image_size, c.image_mean, c.image_std)
        with torch.no_grad():
            visual = model.visual_tokens(lr, masks, boxes, model.encode_frames(hr), torch.zeros(2, dtype=torch.long))
        tokens.append(visual.shape)
    assert len(set(tokens)) == 1  # every variant gives the decoder the same number of visual tokens


def test_box_mode_replaces_the_mask_by_its_box():
    model, _ = new_model(TrainSettings(mask_mode="box"))
    mask = torch.zeros(1, 1, 16, 16)
    mask[0, 0, 4, 4:12] = 1  # a line: its box is 8 wide, 1 high
    mask[0, 0, 4:12, 4] = 1
    boxes = torch.tensor([[4 / 16, 4 / 16, 12 / 16, 12 / 16]])
    filled, _ = model.apply_mask_mode(mask, boxes)
    assert filled.sum() == 64 and filled[0, 0, 4:12, 4:12].all()


def test_paper_sized_config_has_the_expected_parameter_count():
    """FineCaption-8B's shape: ViT-L/14 at 336, ConvNeXt-Large at 1024, a LLaMA-3-8B-sized decoder, 1024 visual
    tokens. Built on the meta device, so no memory is spent."""
    config = FineCaptionConfig.load(PACKAGE_CONFIGS / "finecaption_8b.json")
    with torch.device("meta"):
        model = FineCaptionModel(config)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(model.decoder) == 8_030_261_248  # LLaMA-3-8B, untied embeddings, 128256 tokens
    assert 303_000_000 < count(model.mask_encoder) < 305_000_000  # CLIP ViT-L/14-336 vision tower + mask conv
    assert 195_000_000 < count(model.hr_encoder) < 197_000_000  # ConvNeXt-Large backbone
    assert 8.5e9 < count(model) < 8.7e9
    hr_grid = config.hr_image_size // 32  # ConvNeXt downsamples by 32
    assert hr_grid * hr_grid == 1024 and config.context_grid is None


def test_sam_encoder_joins_the_high_res_features_when_configured():
    config = FineCaptionConfig.load(PACKAGE_CONFIGS / "tiny.json")
    config.decoder = dict(config.decoder, vocab_size=16)
    config.sam_encoder = {"model_type": "sam_vision_model", "hidden_size": 32, "output_channels": 16,
                          "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 64, "patch_size": 16,
                          "mlp_dim": 64, "global_attn_indexes": [0], "window_size": 2}
    model = FineCaptionModel(config)
    assert model.hr_encoder.sam is not None
    with torch.no_grad():
        coarse, _, mid = model.hr_encoder(torch.randn(1, 3, 256, 256))
    assert coarse.shape == (1, 192 + 16, 8, 8)  # ConvNeXt's last stage + SAM's neck, on the same grid
    assert mid.shape == (1, 128, 16, 16)  # the stage before, for the object counter


def test_area_coverage_equals_torch_area_resize_of_every_mask():
    """The captioner's mask coverage skips everything outside each region's box; it must stay an exact area resize."""
    import numpy as np
    import torch.nn.functional as F

    from finecaption_ros.model.inputs import area_coverage, mask_boxes

    rng = np.random.default_rng(0)
    for height, width in [(480, 640), (100, 37), (7, 300), (255, 257)]:
        masks = rng.random((4, height, width)) > 0.7
        masks[0] = False
        masks[0, height // 3:height // 2 + 1, width // 4:width // 2 + 1] = True
        masks[1] = False
        masks[1, -1, -1] = True  # one pixel in the corner
        masks[2] = False  # empty
        for out_h, out_w in ((256, 256), (64, 64), (192, 256), (37, 11)):
            expected = F.interpolate(torch.from_numpy(masks).unsqueeze(1).float(), size=(out_h, out_w), mode="area")
            got = area_coverage(masks, mask_boxes(masks), out_h, out_w)
            assert (expected[:, 0] - got).abs().max() < 1e-5


def test_frames_and_masks_keep_their_aspect_ratio_in_the_square_views():
    """A 640x480 frame fills a 256x192 band of the 256 view, centred on black padding; its masks and boxes land on
    the same pixels, so a region's shape and size look as they do in a 256x256 frame."""
    import numpy as np
    import torch.nn.functional as F

    from finecaption_ros.model.inputs import PAD_VALUE, letterbox, normalise_frames, region_inputs

    assert letterbox(480, 640, 256) == (192, 256, 32, 0)
    assert letterbox(720, 1280, 256) == (144, 256, 56, 0)
    assert letterbox(640, 480, 128) == (128, 96, 0, 16)
    assert letterbox(256, 256, 256) == (256, 256, 0, 0)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    view = normalise_frames(torch.from_numpy(image)[None], 256, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))[0]
    assert view.shape == (3, 256, 256)
    assert torch.all(view[:, :32] == PAD_VALUE / 255) and torch.all(view[:, 224:] == PAD_VALUE / 255)
    content = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float(), size=(192, 256),
                            mode="bilinear", antialias=True, align_corners=False)[0] / 255
    assert (view[:, 32:224] - content).abs().max() < 1.5 / 255
    masks = np.zeros((1, 480, 640), dtype=bool)
    masks[0, 100:200, 320:480] = True  # 160x100 px: 64x40 in the view, at (128, 32 + 40)
    coverage, boxes, pixel_boxes = region_inputs(masks, 256)
    assert pixel_boxes.tolist() == [[320, 100, 480, 200]]
    assert torch.allclose(boxes, torch.tensor([[128 / 256, 72 / 256, 192 / 256, 112 / 256]]))
    inside = coverage[0, 0] > 0.5
    rows, cols = torch.nonzero(inside, as_tuple=True)
    assert (int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1) == (72, 112, 128, 192)
    assert abs(float(coverage.sum()) - 64 * 40) < 1e-3  # an area resize keeps the area


def test_a_fine_tune_start_leaves_out_saved_parameters_the_model_no_longer_has(tmp_path, random_model_dir, capsys):
    import shutil

    import pytest
    from safetensors.torch import load_file, save_file

    from finecaption_ros.model.errors import ModelLoadError
    from finecaption_ros.model.finecaption import WEIGHTS_NAME

    directory = tmp_path / "older"
    shutil.copytree(random_model_dir, directory)
    state = load_file(str(directory / WEIGHTS_NAME))
    state["counter.density_head.0.weight"] = torch.zeros(4, 4)  # a module an earlier version had
    save_file(state, str(directory / WEIGHTS_NAME))
    with pytest.raises(ModelLoadError, match="earlier per-cell count head.*--count-head-only"):
        FineCaptionModel.from_pretrained(directory)
    model = FineCaptionModel.from_pretrained(directory, allow_new_parameters=True)
    assert "left out (not in this model): counter.density_head.0.weight" in capsys.readouterr().out
    reference = FineCaptionModel.from_pretrained(random_model_dir)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
