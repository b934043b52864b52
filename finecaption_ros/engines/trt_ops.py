"""Which ONNX ops TensorRT parses, and a checker for exported graphs.

`TENSORRT_SUPPORTED_OPS` is written down from the ONNX-TensorRT operator matrix (onnx/onnx-tensorrt
docs/operators.md): the ops marked supported in TensorRT 8.4 that are still supported in 10.x, plus
`LayerNormalization` and `GridSample` (8.6). Ops added later (`Reciprocal`, `Gelu`, `Attention`,
`RMSNormalization`, `RotaryEmbedding`, ...) are deliberately left out so the graphs build on every TensorRT >= 10.0
(which parses opsets 9 to 20; JetPack 6 ships 10.3). The restrictions that matter for these graphs are checked too:
`Resize` without antialiasing and in a supported mode, `Reduce*` / `Squeeze` / `Unsqueeze` axes known at build
time, no custom domains.
"""
from __future__ import annotations

from pathlib import Path

MIN_OPSET = 17
MAX_OPSET = 20  # the highest opset TensorRT 10.0 parses
# INT4 weights: ONNX has the INT4 type and blocked DequantizeLinear only from opset 21, and TensorRT's parser reads
# them since 10.0 ("Added support for INT4 quantization", onnx-tensorrt changelog, 10.0 EA), so a graph holding
# INT4 weights may say 21; its other ops mean at 21 what they meant at 20 (`quantize._raise_opset_to_21`).
MAX_OPSET_INT4 = 21

TENSORRT_SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu Clip Concat
Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout Einsum Elu
Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gemm GlobalAveragePool GlobalLpPool
GlobalMaxPool Greater GreaterOrEqual GridSample HardSigmoid Identity If InstanceNormalization IsNaN
LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax LpNormalization LpPool LRN MatMul Max MaxPool Mean Min
Mul Neg Not Or Pad ParametricSoftplus Pow PRelu QuantizeLinear Range ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp
ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize Round ScaledTanh
ScatterElements ScatterND Selu Shape Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split
Sqrt Squeeze Sub Sum Tan Tanh Tile TopK Transpose Unsqueeze Where Xor
""".split())

_RESIZE_MODES = {"nearest", "linear"}
_RESIZE_TRANSFORMS = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}


def graph_problems(path: str | Path) -> list[str]:
    """Every reason TensorRT >= 10.0 could refuse this ONNX graph; empty when none was found."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)
    problems = []
    initializers = {init.name: init for init in model.graph.initializer}
    has_int4 = any(t.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4) for t in initializers.values())
    highest = MAX_OPSET_INT4 if has_int4 else MAX_OPSET
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    version = opsets.get("ai.onnx")
    if version is None or not MIN_OPSET <= version <= highest:
        problems.append(f"opset {version} outside {MIN_OPSET}..{highest}")
    constants = set(initializers)
    constants |= {out for node in model.graph.node if node.op_type == "Constant" for out in node.output}
    for node in model.graph.node:
        where = f"{node.op_type} node {node.name or node.output[0]!r}"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: custom domain {node.domain!r}")
            continue
        if node.op_type not in TENSORRT_SUPPORTED_OPS:
            problems.append(f"{where}: op not supported by TensorRT 10.0")
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Resize":
            mode = attrs.get("mode", b"nearest").decode()
            transform = attrs.get("coordinate_transformation_mode", b"half_pixel").decode()
            if attrs.get("antialias", 0):
                problems.append(f"{where}: antialiasing is unsupported")
            if mode not in _RESIZE_MODES or transform not in _RESIZE_TRANSFORMS:
                problems.append(f"{where}: mode {mode}/{transform} is unsupported")
        if node.op_type.startswith("Reduce") and len(node.input) > 1 and node.input[1] \
                and node.input[1] not in constants:
            problems.append(f"{where}: axes are not a build-time constant")
        if node.op_type in ("Squeeze", "Unsqueeze") and len(node.input) > 1 and node.input[1] not in constants:
            problems.append(f"{where}: axes are not a build-time constant")
        if node.op_type == "DequantizeLinear":
            problems += _dequantize_problems(where, node, attrs, initializers)
    return problems


def _dequantize_problems(where: str, node, attrs: dict, initializers: dict) -> list[str]:
    """TensorRT's restrictions on DequantizeLinear: scale and zero point initializers; blocked (block_size) only for
    2-D INT4 weights, blocked along one axis, the scale of the same rank."""
    import onnx

    problems = [f"{where}: {role} is not an initializer" for role, name in zip(("scale", "zero point"), node.input[1:])
                if name and name not in initializers]
    if not attrs.get("block_size"):
        return problems
    weight, scale = initializers.get(node.input[0]), initializers.get(node.input[1])
    if weight is None or weight.data_type not in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        problems.append(f"{where}: block quantization of something other than INT4 weights")
    elif len(weight.dims) != 2 or scale is None or len(scale.dims) != 2:
        problems.append(f"{where}: block quantization needs 2-D weights and scales")
    else:
        axis = attrs.get("axis", 1) % 2
        blocks = [d // (attrs["block_size"] if i == axis else 1) for i, d in enumerate(weight.dims)]
        if list(scale.dims) != blocks:
            problems.append(f"{where}: scale shape {list(scale.dims)} is not one per block {blocks}")
    return problems


def graph_ops(path: str | Path) -> set[str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {node.op_type for node in model.graph.node}
