"""Weight-only int8 / int4 for the decoder graphs: every MatMul whose weight is a constant gets a quantized copy of it
and its scales, dequantized in the graph right before the MatMul; activations stay in the graph's float type.

- int8: one scale per output column (`DequantizeLinear` per-axis, opset 13+). At opset < 19 the scale must be fp32,
  so fp16 graphs cast the dequantized weight back to fp16 (TensorRT folds the pair).
- int4: one scale per block of `INT4_BLOCK` input rows of each column (`DequantizeLinear` with `block_size`, which
  with the INT4 type exists only from opset 21; the scales in the graph's float type, so no Cast). The graph is
  exported at opset 20 and its opset raised to 21 here (`_raise_opset_to_21`).

`DequantizeLinear` + `MatMul` is the weight-only pattern both runtimes take: TensorRT >= 10 (explicit quantization,
INT4 block quantization of weights) and ONNX Runtime's CPU provider, which runs blocked int4 DequantizeLinear as is
(and at ORT_ENABLE_ALL may fuse the pair into its own MatMulNBits kernel). ONNX Runtime's `MatMulNBits` contrib op is
not written into the graph: TensorRT does not parse it. Symmetric, no zero point: scale = max|w| / 127 (int8) or
max|w| / 7 (int4, values -8..7).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

WEIGHTS = ("float", "int8", "int4")
INT4_BLOCK = 32  # rows of the weight per int4 scale (what plan-memory counts too)
INT4_OPSET = 21
_MIN_ELEMENTS = 4096  # small matrices are not worth a scale vector
# Ops whose meaning (not only their type list) changed at opset 21; a graph holding one is not raised from 20.
_CHANGED_AT_21 = {"GroupNormalization"}


def quantize_matmul_weights(path: str | Path, weights: str = "int8") -> dict:
    """Rewrites the graph at `path` in place; returns how many weights were quantized and their bytes before/after.
    A graph whose weights the exporter wrote as one external file per tensor (over 2 GiB) is written back the same
    way, for `export._externalize` to gather: int8 weights of a 1B decoder still exceed protobuf's 2 GiB."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    if weights not in ("int8", "int4"):
        raise ValueError(f"weights must be int8 or int4, got {weights!r}")
    path = Path(path)
    scattered = {ExternalDataInfo(t).location for t in onnx.load(str(path), load_external_data=False).graph.initializer
                 if uses_external_data(t)}
    model = onnx.load(str(path))
    graph = model.graph
    if weights == "int4":
        _raise_opset_to_21(model)
    initializers = {t.name: t for t in graph.initializer}
    users = {}
    for node in graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    replaced, before, after, kept = 0, 0, 0, []
    new_nodes = []
    for node in graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if weight is None or len(weight.dims) != 2 or weight.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16) \
                or int(np.prod(weight.dims)) < _MIN_ELEMENTS:
            new_nodes.append(node)
            continue
        if weights == "int4" and weight.dims[0] % INT4_BLOCK:
            kept.append(weight.name)  # a partial last block is legal ONNX, but not worth a second code path
            new_nodes.append(node)
            continue
        values = numpy_helper.to_array(weight).astype(np.float32)  # (K, N): y = x @ W
        base = weight.name.replace("/", "_").replace(":", "_")
        out = f"{base}_dequantized_{replaced}"
        if weights == "int8":
            q_tensor, s_tensor, nbytes = _int8(values, f"{base}_int8", f"{base}_scale")
            attrs = {"axis": 1}
        else:
            q_tensor, s_tensor, nbytes = _int4(values, f"{base}_int4", f"{base}_scale", weight.data_type)
            attrs = {"axis": 0, "block_size": INT4_BLOCK}
        graph.initializer.extend([q_tensor, s_tensor])
        new_nodes.append(helper.make_node("DequantizeLinear", [q_tensor.name, s_tensor.name], [out],
                                          name=f"{base}_DequantizeLinear_{replaced}", **attrs))
        if weights == "int8" and weight.data_type == TensorProto.FLOAT16:
            new_nodes.append(helper.make_node("Cast", [out], [out + "_fp16"], to=TensorProto.FLOAT16,
                                              name=f"{base}_Cast_{replaced}"))
            out += "_fp16"
        node.input[1] = out
        new_nodes.append(node)
        users[weight.name] -= 1
        before += weight.ByteSize()
        after += nbytes
        replaced += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    unused = [t for t in graph.initializer if t.name in users and users[t.name] == 0]
    for tensor in unused:
        graph.initializer.remove(tensor)
    if not scattered:
        onnx.save(model, str(path))
    else:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=1024)
        left = {ExternalDataInfo(t).location for t in graph.initializer if uses_external_data(t)}
        for name in scattered - left:  # the float weights that were quantized away
            (path.parent / name).unlink(missing_ok=True)
    return {"weights": replaced, "bytes_before": before, "bytes_after": after, "kept_float": kept}


def _int8(values: np.ndarray, q_name: str, s_name: str):
    from onnx import numpy_helper

    scale = np.maximum(np.abs(values).max(axis=0), 1e-8) / 127.0
    quantized = np.clip(np.round(values / scale), -127, 127).astype(np.int8)
    scale = scale.astype(np.float32)
    return numpy_helper.from_array(quantized, q_name), numpy_helper.from_array(scale, s_name), \
        quantized.nbytes + scale.nbytes


def int4_blocks(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, N) float -> int4 values in -8..7 as int8 (K, N), and scales (K / INT4_BLOCK, N): w ~= q * scale of its
    block of rows."""
    rows, columns = values.shape
    blocks = values.reshape(rows // INT4_BLOCK, INT4_BLOCK, columns)
    scale = np.maximum(np.abs(blocks).max(axis=1), 1e-8) / 7.0
    quantized = np.clip(np.round(blocks / scale[:, None, :]), -8, 7).astype(np.int8)
    return quantized.reshape(rows, columns), scale


def pack_int4(values: np.ndarray) -> bytes:
    """Two values per byte, the first in the low nibble (ONNX's and TensorRT's INT4 layout), row-major."""
    flat = values.astype(np.int8).reshape(-1)
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.int8)])
    nibbles = flat.view(np.uint8) & 0x0F
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8).tobytes()


def _int4(values: np.ndarray, q_name: str, s_name: str, float_type: int):
    from onnx import TensorProto, helper, numpy_helper

    quantized, scale = int4_blocks(values)
    packed = pack_int4(quantized)
    scale = scale.astype(np.float16 if float_type == TensorProto.FLOAT16 else np.float32)
    q_tensor = helper.make_tensor(q_name, TensorProto.INT4, list(values.shape), packed, raw=True)
    return q_tensor, numpy_helper.from_array(scale, s_name), len(packed) + scale.nbytes


def _raise_opset_to_21(model) -> None:
    """An opset-20 graph -> opset 21, the first with INT4 and blocked DequantizeLinear. Between 20 and 21 the other
    ops only gained types (int4, uint4), so the graph means the same; the few whose meaning changed are refused."""
    import onnx

    main = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not main or main[0].version not in (20, INT4_OPSET):
        raise ValueError(f"int4 weights need the graph exported at opset 20 (got {main[0].version if main else None})")
    changed = sorted({n.op_type for n in model.graph.node if n.op_type in _CHANGED_AT_21})
    if changed:
        raise ValueError(f"cannot raise the graph to opset 21: {', '.join(changed)} changed meaning there")
    main[0].version = INT4_OPSET
    model.ir_version = max(model.ir_version, onnx.IR_VERSION_2024_3_25)  # IR 10: the INT4 type
