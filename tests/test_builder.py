import numpy as np
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel, ConvNextConfig, ConvNextModel, LlamaConfig, LlamaForCausalLM

from finecaption_ros.captioner import Captioner
from finecaption_ros.data.scenes import world_texts
from finecaption_ros.model.builder import build_from_components
from finecaption_ros.model.tokenizer import build_word_tokenizer


def test_compose_from_pretrained_component_directories(tmp_path):
    """Three checkpoints on disk (a CLIP vision tower, a ConvNeXt, a causal LM + tokenizer) -> one FineCaption model
    that keeps their weights, saves, reloads and captions."""
    torch.manual_seed(0)
    clip = CLIPVisionModel(CLIPVisionConfig(image_size=64, patch_size=16, hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=1, num_attention_heads=2))
    convnext = ConvNextModel(ConvNextConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 24, 32]))
    tokenizer = build_word_tokenizer(world_texts())
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    for name, part in (("clip", clip), ("convnext", convnext), ("llm", llm)):
        part.save_pretrained(tmp_path / name)
    tokenizer.save_pretrained(tmp_path / "llm")

    model, loaded_tokenizer = build_from_components(tmp_path / "clip", tmp_path / "convnext", tmp_path / "llm",
                                                    hr_image_size=128, context_grid=2, adapter_hidden=32)
    rgb = model.mask_encoder.tower.embeddings.patch_embedding.rgb.weight
    assert torch.equal(rgb, clip.embeddings.patch_embedding.weight)  # pretrained weights kept
    assert torch.equal(model.decoder.lm_head.weight, llm.lm_head.weight)
    model.save_pretrained(tmp_path / "composed", loaded_tokenizer)

    captioner = Captioner.from_pretrained(tmp_path / "composed")
    image = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    labels = np.zeros((96, 96), np.int32)
    labels[10:40, 20:60] = 3
    [result] = captioner.caption(image, labels, max_new_tokens=4)
    assert result.region_id == 3 and result.bbox == (20, 10, 40, 30)
