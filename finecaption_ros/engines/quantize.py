"""Weight-only int8 for the decoder graphs: every MatMul whose weight is a constant gets an int8 copy of it and a
per-output-channel scale, dequantized in the graph right before the MatMul.

`DequantizeLinear` (opset 13+, per-axis) followed by `MatMul` is the weight-only pattern both ONNX Runtime (CPU)
and TensorRT >= 10 (explicit quantization) run; activations stay in the graph's float type. Symmetric: scale =
max|w| / 127 per column, no zero point. At opset < 19 the scale must be fp32, so fp16 graphs cast the
dequantized weight back to fp16 (TensorRT folds the pair).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

WEIGHTS = ("float", "int8")
_MIN_ELEMENTS = 4096  # small matrices are not worth a scale vector


def quantize_matmul_weights(path: str | Path) -> dict:
    """Rewrites the graph at `path` in place; returns how many weights were quantized and their bytes before/after."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    users = {}
    for node in graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    replaced, before, after = 0, 0, 0
    new_nodes = []
    for node in graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if weight is None or len(weight.dims) != 2 or weight.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16) \
                or int(np.prod(weight.dims)) < _MIN_ELEMENTS:
            new_nodes.append(node)
            continue
        values = numpy_helper.to_array(weight).astype(np.float32)  # (K, N): y = x @ W
        scale = np.maximum(np.abs(values).max(axis=0), 1e-8) / 127.0
        quantized = np.clip(np.round(values / scale), -127, 127).astype(np.int8)
        base = weight.name.replace("/", "_").replace(":", "_")
        q_name, s_name, out = f"{base}_int8", f"{base}_scale", f"{base}_dequantized_{replaced}"
        graph.initializer.extend([numpy_helper.from_array(quantized, q_name),
                                  numpy_helper.from_array(scale.astype(np.float32), s_name)])
        new_nodes.append(helper.make_node("DequantizeLinear", [q_name, s_name], [out], axis=1,
                                          name=f"{base}_DequantizeLinear_{replaced}"))
        if weight.data_type == TensorProto.FLOAT16:
            new_nodes.append(helper.make_node("Cast", [out], [out + "_fp16"], to=TensorProto.FLOAT16,
                                              name=f"{base}_Cast_{replaced}"))
            out += "_fp16"
        node.input[1] = out
        new_nodes.append(node)
        users[weight.name] -= 1
        before += weight.ByteSize()
        after += quantized.nbytes + scale.nbytes
        replaced += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    unused = [t for t in graph.initializer if t.name in users and users[t.name] == 0]
    for tensor in unused:
        graph.initializer.remove(tensor)
    onnx.save(model, str(path))
    return {"weights": replaced, "bytes_before": before, "bytes_after": after}
