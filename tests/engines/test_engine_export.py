"""ONNX export: files, manifest, I/O contract, TensorRT-compatible ops, default directories."""
import json
import logging
import shutil

import onnx
import pytest
from onnx import TensorProto, helper

from finecaption_ros.engines import OnnxExportMissingError, load_backend
from finecaption_ros.engines.export import default_engine_dir, ensure_onnx
from finecaption_ros.engines.graphs import GRAPHS, cache_names
from finecaption_ros.engines.manifest import graph_sha256, read_onnx_manifest
from finecaption_ros.engines.trt_ops import MAX_OPSET, MIN_OPSET, TENSORRT_SUPPORTED_OPS, graph_ops, graph_problems
from finecaption_ros.model.finecaption import weights_digest


def test_export_writes_graphs_config_tokenizer_and_manifest(onnx_dir, random_model_dir):
    manifest = read_onnx_manifest(onnx_dir)
    assert set(manifest["graphs"]) == set(GRAPHS)
    assert manifest["model"]["digest"] == weights_digest(random_model_dir)
    assert MIN_OPSET <= manifest["opset"] <= MAX_OPSET
    for name, graph in manifest["graphs"].items():
        assert graph["sha256"] == graph_sha256(onnx_dir / graph["file"])
        assert graph["bytes"] == (onnx_dir / graph["file"]).stat().st_size
        model = onnx.load(str(onnx_dir / graph["file"]), load_external_data=False)
        assert [i.name for i in model.graph.input] == [i["name"] for i in graph["inputs"]]
        assert [o.name for o in model.graph.output] == [o["name"] for o in graph["outputs"]]
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (onnx_dir / name).is_file()
    assert json.loads((onnx_dir / "config.json").read_text()) == json.loads(
        (random_model_dir / "config.json").read_text())
    # the export checks itself against torch and records the result
    assert max(manifest["verification"].values()) < 1e-4


def test_decoder_graphs_carry_the_kv_cache_with_dynamic_axes(onnx_dir):
    manifest = read_onnx_manifest(onnx_dir)
    layers = manifest["num_layers"]
    io = {name: ({i["name"]: i for i in g["inputs"]}, {o["name"]: o for o in g["outputs"]})
          for name, g in manifest["graphs"].items()}
    prefill_in, prefill_out = io["decoder_prefill"]
    step_in, step_out = io["decoder_step"]
    assert list(prefill_in) == ["visual", "prompt_ids", "attention_mask", "position_ids"]
    assert list(prefill_out) == ["logits"] + cache_names(layers, "present")
    assert list(step_in) == ["input_ids", "attention_mask", "position_ids"] + cache_names(layers, "past_key_values")
    assert list(step_out) == ["logits"] + cache_names(layers, "present")
    heads, head_dim = manifest["num_key_value_heads"], manifest["head_dim"]
    assert step_in["past_key_values.0.key"]["shape"] == ["batch", heads, "past", head_dim]
    assert step_out["present.0.value"]["shape"] == ["batch", heads, "total", head_dim]
    assert prefill_out["present.1.key"]["shape"] == ["batch", heads, "sequence", head_dim]
    assert prefill_in["visual"]["shape"] == ["batch", manifest["num_visual_tokens"], manifest["hidden_size"]]
    assert prefill_out["logits"]["shape"] == ["batch", manifest["vocab_size"]]
    region_in, region_out = io["region_encoder"]
    assert region_in["masks"]["shape"][0] == "regions" and region_in["lr_pixels"]["shape"][0] == "frames"
    assert list(region_out) == ["region_tokens"] and region_out["region_tokens"]["shape"][0] == "regions"
    # the neighbour and count tokens need every region of a frame at once: their own graph, after the regions'
    scene_in, scene_out = io["scene_context"]
    assert list(scene_in) == ["region_tokens", "boxes", "frame_index", "density"]
    # the count token's density map comes from the frame encoder, on twice the coarse map's grid
    frame_out = io["frame_encoder"][1]
    assert list(frame_out) == ["coarse", "fine", "density"] and frame_out["density"]["shape"][0] == "frames"
    assert scene_in["density"]["shape"][1:] == [2 * s for s in frame_out["coarse"]["shape"][2:]]
    width = manifest["hidden_size"]
    assert scene_in["region_tokens"]["shape"] == ["regions", manifest["num_visual_tokens"] - 3, width]  # 2 + count
    assert scene_out["visual"]["shape"] == ["regions", manifest["num_visual_tokens"], width]
    assert io["frame_encoder"][0]["hr_pixels"]["shape"] == ["frames", 3, manifest["hr_image_size"],
                                                           manifest["hr_image_size"]]


def test_every_op_in_every_graph_is_supported_by_tensorrt(onnx_dir):
    for name in GRAPHS:
        path = onnx_dir / f"{name}.onnx"
        assert graph_problems(path) == [], name
        assert graph_ops(path) <= TENSORRT_SUPPORTED_OPS


def _one_node_graph(tmp_path, node, opset=17, extra_inputs=()):
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])] + list(extra_inputs)
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    path = tmp_path / f"{node.op_type}_{opset}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return path


def test_the_op_check_catches_what_tensorrt_refuses(tmp_path):
    unsupported = _one_node_graph(tmp_path, helper.make_node("Unique", ["x"], ["y"]))
    assert any("Unique" in p and "not supported" in p for p in graph_problems(unsupported))
    scales = helper.make_tensor_value_info("scales", TensorProto.FLOAT, [4])
    antialias = _one_node_graph(tmp_path, helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear",
                                                           antialias=1), opset=18, extra_inputs=[scales])
    assert any("antialias" in p for p in graph_problems(antialias))
    old = _one_node_graph(tmp_path, helper.make_node("Relu", ["x"], ["y"]), opset=13)
    assert any("opset 13" in p for p in graph_problems(old))
    custom = _one_node_graph(tmp_path, helper.make_node("MyOp", ["x"], ["y"], domain="com.example"))
    assert any("custom domain" in p for p in graph_problems(custom))


def test_default_engine_dir_prefers_an_export_beside_the_model(random_model_dir, onnx_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("FINECAPTION_CACHE", str(tmp_path / "cache"))
    expected = tmp_path / "cache" / "engines" / f"finecaption-tiny-{weights_digest(random_model_dir)[:12]}"
    assert default_engine_dir(random_model_dir) == expected
    model = tmp_path / "model"
    shutil.copytree(random_model_dir, model)
    shutil.copytree(onnx_dir, model / "onnx")
    assert default_engine_dir(model) == model / "onnx"


def test_missing_export_is_exported_on_first_use_with_a_log_line(random_model_dir, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("FINECAPTION_CACHE", str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING, logger="finecaption.engines"):
        backend = load_backend("onnxruntime", random_model_dir)
    assert backend.onnx_dir == default_engine_dir(random_model_dir)
    assert backend.onnx_dir.is_relative_to(tmp_path / "cache")
    assert any("exporting now" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="finecaption.engines"):
        again = load_backend("onnxruntime", random_model_dir)  # found this time: no second export
    assert again.onnx_dir == backend.onnx_dir and not caplog.records


def test_missing_or_foreign_exports_raise_with_the_fix(random_model_dir, onnx_dir, tmp_path):
    with pytest.raises(OnnxExportMissingError, match="finecaption export-onnx --model"):
        ensure_onnx(random_model_dir, tmp_path / "empty", export_if_missing=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    manifest = json.loads((onnx_dir / "manifest.json").read_text())
    manifest["model"]["digest"] = "0" * 64
    (foreign / "manifest.json").write_text(json.dumps(manifest))
    for graph in manifest["graphs"].values():
        (foreign / graph["file"]).write_bytes((onnx_dir / graph["file"]).read_bytes())
    with pytest.raises(OnnxExportMissingError, match="another model"):
        ensure_onnx(random_model_dir, foreign)
    (foreign / "decoder_step.onnx").unlink()
    with pytest.raises(OnnxExportMissingError, match="lacks decoder_step.onnx"):
        read_onnx_manifest(foreign)


def test_forced_external_data_exports_one_data_file_per_graph_and_the_decoders_share_theirs(random_model_dir,
                                                                                           onnx_dir, tmp_path):
    """What graphs over ONNX's 2 GiB limit get, forced on the small model: weights in external data (one file per
    graph, one shared by the two decoder graphs), hashed into the manifest, run by ONNX Runtime, op-checked."""
    import numpy as np
    import torch

    from finecaption_ros.engines.cli import main
    from finecaption_ros.engines.export import DECODER_DATA, example_inputs, relative_error
    from finecaption_ros.engines.ort_backend import OnnxRuntimeBackend
    from finecaption_ros.model.finecaption import FineCaptionModel

    out = tmp_path / "external"
    assert main(["export-onnx", "--model", str(random_model_dir), "--out", str(out), "--external-data"]) == 0
    manifest = read_onnx_manifest(out)
    inline = read_onnx_manifest(onnx_dir)
    for name, graph in manifest["graphs"].items():
        expected = [DECODER_DATA] if name.startswith("decoder") else [f"{name}.onnx.data"]
        assert graph["data"] == expected
        assert (out / graph["file"]).stat().st_size < 0.1 * inline["graphs"][name]["bytes"]  # weights are outside
        assert graph["sha256"] == graph_sha256(out / graph["file"]) != graph_sha256(out / graph["file"], [])
        assert graph_problems(out / graph["file"]) == []
    # the decoder weights are on disk once: the shared file is about one decoder graph's weights, not two
    shared = (out / DECODER_DATA).stat().st_size
    assert shared < 1.2 * inline["graphs"]["decoder_prefill"]["bytes"]
    assert manifest["bytes"] < sum(g["bytes"] for g in manifest["graphs"].values())
    assert max(manifest["verification"].values()) < 1e-4

    model = FineCaptionModel.from_pretrained(random_model_dir)
    x = example_inputs(model, frames=1, regions=4, seed=6)
    x["frame_index"] = torch.zeros(4, dtype=torch.long)
    results = []
    for directory in (out, onnx_dir):
        backend = OnnxRuntimeBackend(directory, num_threads=1)
        visual = backend.visual_tokens(x["lr"], x["masks"], x["boxes"], backend.encode_frames(x["hr"]),
                                       x["frame_index"])
        attention = np.ones((4, visual.shape[1] + 5), dtype=np.int64)
        logits = backend.decoder_session().prefill(visual, x["prompt_ids"].numpy(), attention,
                                                   np.cumsum(attention, 1) - 1)
        results.append((visual, logits))
    assert relative_error(results[0][0], results[1][0]) < 1e-6 and relative_error(results[0][1], results[1][1]) < 1e-6

    # a data file is part of the graph: changed, the sha256 differs; missing, the export is refused with the fix
    before = graph_sha256(out / "frame_encoder.onnx")
    with open(out / "frame_encoder.onnx.data", "r+b") as handle:
        handle.write(b"\x01\x02")
    assert graph_sha256(out / "frame_encoder.onnx") != before
    (out / DECODER_DATA).unlink()
    with pytest.raises(OnnxExportMissingError, match=f"lacks {DECODER_DATA}"):
        read_onnx_manifest(out)


def test_int8_decoder_weights_are_dequantized_in_the_graph_and_stay_close(random_model_dir, onnx_dir, tmp_path):
    """`--weights int8`: each decoder MatMul weight becomes int8 + a per-column scale behind a DequantizeLinear (the
    weight-only pattern TensorRT and ONNX Runtime both run); the graphs shrink and their logits stay close."""
    from finecaption_ros.engines.cli import main

    out = tmp_path / "int8"
    assert main(["export-onnx", "--model", str(random_model_dir), "--out", str(out), "--weights", "int8"]) == 0
    manifest = read_onnx_manifest(out)
    assert manifest["weights"] == "int8"
    for name in ("decoder_prefill", "decoder_step"):
        path = out / manifest["graphs"][name]["file"]
        model = onnx.load(str(path))
        quantized = [t for t in model.graph.initializer if t.data_type == TensorProto.INT8]
        assert len(quantized) == 7 * manifest["num_layers"] + 1  # q, k, v, o, gate, up, down per layer + lm_head
        assert "DequantizeLinear" in graph_ops(path) and graph_problems(path) == []
        assert manifest["graphs"][name]["bytes"] < 0.4 * read_onnx_manifest(onnx_dir)["graphs"][name]["bytes"]
        assert manifest["verification"][name] < 5e-2  # ONNX Runtime vs the float torch model
    assert manifest["verification"]["frame_encoder"] < 1e-4  # the encoders are untouched


def test_quantizing_a_graph_with_one_external_file_per_tensor_keeps_it_that_way(tmp_path):
    """A decoder over 2 GiB comes from the exporter as one external file per tensor, and its int8 weights can still
    exceed protobuf's 2 GiB (a 1B decoder): the quantizer writes it back the same way, drops the float weights'
    files, and the graph still runs."""
    import numpy as np
    import onnxruntime as ort
    from onnx import numpy_helper

    from finecaption_ros.engines.quantize import quantize_matmul_weights

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((64, 128)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 128])],
                              [numpy_helper.from_array(weight, "w")])
    path = tmp_path / "decoder_prefill.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path),
              save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=0)
    assert (tmp_path / "w").is_file()
    assert quantize_matmul_weights(path, "int8")["weights"] == 1
    assert not (tmp_path / "w").exists()  # the float weight's file is gone with it
    header = onnx.load(str(path), load_external_data=False)
    assert {t.data_type for t in header.graph.initializer} == {TensorProto.INT8, TensorProto.FLOAT}
    assert any(t.data_location == TensorProto.EXTERNAL for t in header.graph.initializer)
    x = rng.standard_normal((2, 64)).astype(np.float32)
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(y - x @ weight).max() < 0.05 * np.abs(x @ weight).max()


def test_int4_decoder_weights_are_int4_blocks_behind_dequantize_linear(random_model_dir, onnx_dir, tmp_path):
    """`--weights int4`: each decoder MatMul weight becomes packed INT4 with one scale per block of 32 rows behind a
    blocked DequantizeLinear (opset 21); the decoder graphs pass the TensorRT op check, shrink below a quarter of
    the float ones."""
    import numpy as np
    from onnx import numpy_helper

    from finecaption_ros.engines.cli import main
    from finecaption_ros.engines.quantize import INT4_BLOCK
    from finecaption_ros.engines.trt_ops import MAX_OPSET_INT4

    out = tmp_path / "int4"
    assert main(["export-onnx", "--model", str(random_model_dir), "--out", str(out), "--weights", "int4"]) == 0
    manifest = read_onnx_manifest(out)
    assert manifest["weights"] == "int4"
    float_manifest = read_onnx_manifest(onnx_dir)
    for name in ("decoder_prefill", "decoder_step"):
        path = out / manifest["graphs"][name]["file"]
        model = onnx.load(str(path))
        assert manifest["graphs"][name]["opset"] == MAX_OPSET_INT4
        initializers = {t.name: t for t in model.graph.initializer}
        quantized = [t for t in initializers.values() if t.data_type == TensorProto.INT4]
        assert len(quantized) == 7 * manifest["num_layers"] + 1  # q, k, v, o, gate, up, down per layer + lm_head
        assert graph_problems(path) == []
        assert manifest["graphs"][name]["bytes"] < 0.25 * float_manifest["graphs"][name]["bytes"]
        checked = 0
        for node in model.graph.node:
            if node.op_type != "DequantizeLinear":
                continue
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            assert attrs == {"axis": 0, "block_size": INT4_BLOCK}
            values = numpy_helper.to_array(initializers[node.input[0]]).astype(np.float32)
            scale = numpy_helper.to_array(initializers[node.input[1]])
            assert values.min() >= -8 and values.max() <= 7 and values.std() > 1  # the range is used
            assert scale.shape == (values.shape[0] // INT4_BLOCK, values.shape[1])
            checked += 1
        assert checked == len(quantized)
    for name in ("frame_encoder", "region_encoder"):  # the encoders are untouched
        assert manifest["graphs"][name]["opset"] == manifest["opset"]
        assert manifest["verification"][name] < 1e-4


def test_the_op_check_refuses_blocked_dequantize_linear_that_tensorrt_cannot_build(tmp_path):
    """Blocked DequantizeLinear: TensorRT takes it only on 2-D INT4 weights with a scale per block; opset 21 only
    for graphs holding INT4 weights."""
    import numpy as np
    from onnx import numpy_helper

    from finecaption_ros.engines.quantize import pack_int4

    def graph(weight_type=TensorProto.INT4, scale_rows=2, opset=21, with_int4=True):
        q = helper.make_tensor("q", weight_type, [64, 8], pack_int4(np.zeros((64, 8), np.int8))
                               if weight_type == TensorProto.INT4 else np.zeros((64, 8), np.int8).tobytes(), raw=True)
        scale = numpy_helper.from_array(np.ones((scale_rows, 8), np.float32), "s")
        nodes = [helper.make_node("DequantizeLinear", ["q", "s"], ["w"], axis=0, block_size=32),
                 helper.make_node("MatMul", ["x", "w"], ["y"])]
        model = helper.make_model(helper.make_graph(
            nodes if with_int4 else nodes[1:], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
            [q, scale] if with_int4 else [numpy_helper.from_array(np.ones((64, 8), np.float32), "w")]),
            opset_imports=[helper.make_opsetid("", opset)])
        path = tmp_path / f"g{len(list(tmp_path.iterdir()))}.onnx"
        onnx.save(model, str(path))
        return graph_problems(path)

    assert graph() == []
    assert any("INT4 weights" in p for p in graph(weight_type=TensorProto.INT8))
    assert any("one per block" in p for p in graph(scale_rows=4))
    assert any("opset 21" in p for p in graph(with_int4=False))


def test_int4_blocks_round_to_half_a_step_and_pack_as_onnx_reads_them():
    """The quantizer's math: every weight within half a step of its block's scale, the largest of each block at
    -8..7's edge, and the packed nibbles read back by onnx's own INT4 decoder as the same values."""
    import numpy as np
    from onnx import numpy_helper

    from finecaption_ros.engines.quantize import INT4_BLOCK, int4_blocks, pack_int4

    weights = np.random.default_rng(0).standard_normal((4 * INT4_BLOCK, 6)).astype(np.float32)
    weights[:INT4_BLOCK, 0] *= 100  # one block of much larger weights gets its own scale
    values, scale = int4_blocks(weights)
    step = np.repeat(scale, INT4_BLOCK, axis=0)
    assert np.all(np.abs(values * step - weights) <= 0.5001 * step)
    assert np.all(np.abs(values).reshape(4, INT4_BLOCK, 6).max(axis=1) == 7)
    assert scale[0, 0] > 20 * scale[1, 0]
    tensor = helper.make_tensor("q", TensorProto.INT4, list(values.shape), pack_int4(values), raw=True)
    assert np.array_equal(numpy_helper.to_array(tensor).astype(np.int8), values)


def test_area_resizes_by_a_fraction_export_as_matrix_products_with_the_same_values():
    """The 8B config's 1024 px masks -> 336 px ViT: the exporter refuses adaptive pooling by a non-whole factor, so
    while exporting, such an "area" resize is two matrix products, equal to torch's own."""
    import torch
    import torch.nn.functional as F

    from finecaption_ros.engines.export import _static_resize_sizes

    masks = (torch.rand(2, 1, 1024, 1024, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    expected = F.interpolate(masks, size=(336, 336), mode="area")
    with _static_resize_sizes():
        got = F.interpolate(masks, size=(336, 336), mode="area")
        whole = F.interpolate(masks, size=(256, 256), mode="area")  # whole factors stay adaptive pooling
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.equal(whole, F.interpolate(masks, size=(256, 256), mode="area"))


def test_scattered_external_data_is_gathered_into_one_file_one_tensor_at_a_time(tmp_path):
    """What the TorchScript exporter writes for a graph over 2 GiB (one file per tensor), made small: `_externalize`
    gathers every tensor into the graph's one data file and ONNX Runtime runs the result with the same values."""
    import numpy as np
    import onnxruntime as ort
    from onnx import numpy_helper

    from finecaption_ros.engines.export import _externalize

    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((64, 64)).astype(np.float32) for _ in range(3)]
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"h{i}", f"w{i}"], [f"h{i + 1}" if i < 2 else "y"])
             for i in range(3)]
    model = helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)]), opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "g.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.onnx", "w0", "w1", "w2"]
    assert _externalize(path, None, None, {}) == ["g.onnx.data"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.onnx", "g.onnx.data"]
    x = rng.standard_normal((1, 64)).astype(np.float32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.allclose(got, x @ weights[0] @ weights[1] @ weights[2], rtol=1e-4, atol=1e-4)
