"""`finecaption plan-memory`: parameter counts from the meta device, the KV cache formula, weight-only sizes."""
from pathlib import Path

import pytest

from finecaption_ros.engines.cli import main
from finecaption_ros.engines.memory import fits, load_config, num_visual_tokens, plan_memory

CONFIGS = Path(__file__).resolve().parents[2] / "finecaption_ros" / "configs"


def test_kv_cache_and_weights_follow_the_decoder_shape():
    config = load_config(CONFIGS / "finecaption_8b.json")
    graphs = {g.name: g for g in plan_memory(config, regions=32, max_new_tokens=32, precision="fp16")}
    assert graphs["decoder_prefill"].parameters == 8_030_261_248  # the same count tests/test_model.py checks
    assert graphs["decoder_step"].weights == graphs["decoder_prefill"].weights  # each TensorRT plan holds a copy
    visual = num_visual_tokens(config)
    assert visual == 1024 + 17  # every ConvNeXt cell, 4x4 region cells + summary
    # 2 (key, value) x 32 layers x 8 KV heads x 128 x (visual + 32 + 32) tokens x 32 sequences x 2 bytes
    assert graphs["decoder_prefill"].kv_cache == 2 * 32 * 8 * 128 * (visual + 64) * 32 * 2
    double = {g.name: g for g in plan_memory(config, regions=64, max_new_tokens=32, precision="fp16")}
    assert double["decoder_prefill"].kv_cache == 2 * graphs["decoder_prefill"].kv_cache
    sizes = [sum(g.weights for g in plan_memory(config, 32, 32, p)) for p in ("fp32", "fp16", "int8", "int4")]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] == 2 * sizes[1]
    # int4 decoder linears (+ an fp16 scale per 32 weights); the encoders and the embeddings stay fp16: 0.35
    assert 0.3 < sizes[3] / sizes[1] < 0.4


def test_the_verdict_names_the_modules_that_hold_it(capsys):
    assert not fits(10 * 2**30)["Orin Nano 8 GB"] and fits(10 * 2**30)["Orin NX 16 GB"]
    assert main(["plan-memory", "--config", str(CONFIGS / "finecaption_1b.json"), "--regions", "32",
                 "--max-new-tokens", "32", "--precision", "int4"]) == 0
    out = capsys.readouterr().out
    assert "| decoder_step |" in out and "Orin Nano 8 GB yes" in out
    assert main(["plan-memory", "--config", str(CONFIGS / "missing.json")]) == 2
    assert "no FineCaption config" in capsys.readouterr().err
    with pytest.raises(ValueError, match="precision"):
        plan_memory(load_config(CONFIGS / "finecaption_1b.json"), 1, 1, "fp8")
