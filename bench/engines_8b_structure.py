"""The FineCaption-8B-shaped config's graphs, produced by the project's exporter without 32 GB of weights, and the
TensorRT op check run on every one of them.

    python bench/engines_8b_structure.py [--out DIR] [--keep] [--precision fp32|fp16] [--weights float|int8|int4]

How the weights are kept small, and why this way: the TorchScript exporter traces by running each graph once, so it
needs real tensors (the meta device fails inside the exporter: `.item()` on shapes, constants it must copy), and
the export is traced on small inputs (in fp32 by default; `--precision fp16` traces the fp16 graphs TensorRT builds
fp16 plans from, `--weights int4` the weight-only int4 decoders):
- decoder: the 8B Llama shape (4096 wide, 32 heads, 8 KV heads, 14336 MLP, 128256-token vocabulary, untied head) at
  its full depth of 32 layers, all 32 the *same* module: the graphs hold 32 layers of nodes and 64 KV-cache inputs
  and outputs, while the weights written are one layer's plus the embedding and the head (~5 GB fp32, which still
  takes the >2 GiB external-data path). The prefill is traced with 4 visual tokens instead of 1044 (the visual axis
  dynamic while tracing, then pinned to 1044): its cost is per token, its ops are not.
- encoders: ViT-L/14 at 336 px and ConvNeXt-Large at 1024 px at full width and image size, one layer of the ViT and
  one block per ConvNeXt stage (each further layer / block is another copy of the same module, the same ops).
- scene context: the 8B config has none; neighbour tokens (2) and a count token are switched on, as in the tiny and
  1B configs, so that the fifth graph exists (and the decoder sees 1044 visual tokens instead of 1041).
Printed at the end: every graph with its nodes, op types, inputs, outputs, weight bytes on disk and the op check's
verdict, then what was and was not exercised.
"""
from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from finecaption_ros.engines import graphs as G  # noqa: E402
from finecaption_ros.engines.export import to_half, example_inputs, export_graph, graph_specs  # noqa: E402
from finecaption_ros.engines.memory import num_visual_tokens  # noqa: E402
from finecaption_ros.engines.trt_ops import graph_ops, graph_problems  # noqa: E402
from finecaption_ros.model.config import FineCaptionConfig  # noqa: E402
from finecaption_ros.model.finecaption import FineCaptionModel  # noqa: E402

CONFIG = ROOT / "finecaption_ros" / "configs" / "finecaption_8b.json"
TRACE_VISUAL_TOKENS = 4
START = time.monotonic()


def say(message: str) -> None:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"[{time.monotonic() - START:6.0f} s, peak RSS {rss:5.2f} GiB] {message}", flush=True)


def build_model() -> tuple[FineCaptionModel, FineCaptionConfig, dict]:
    full = FineCaptionConfig.load(CONFIG)
    full.neighbor_tokens, full.count_token = 2, True
    small = FineCaptionConfig.load(CONFIG)
    small.neighbor_tokens, small.count_token = 2, True
    layers = full.decoder["num_hidden_layers"]
    small.mask_encoder = dict(small.mask_encoder, num_hidden_layers=1)
    small.hr_encoder = dict(small.hr_encoder, depths=[1] * len(full.hr_encoder["depths"]))
    small.decoder = dict(small.decoder, num_hidden_layers=1)
    torch.manual_seed(0)
    model = FineCaptionModel(small).eval()
    body = model.decoder.model
    body.layers = nn.ModuleList([body.layers[0]] * layers)  # one module, 32 times: 32 layers of nodes
    model.decoder.config.num_hidden_layers = layers
    shape = {"decoder layers": f"{layers} (one module repeated)", "ViT layers": f"1 of {full.mask_encoder['num_hidden_layers']}",
             "ConvNeXt blocks per stage": f"1 of {full.hr_encoder['depths']}",
             "parameters held": sum(p.numel() for p in model.parameters())}
    return model, full, shape


def trace_args(model: FineCaptionModel) -> dict[str, tuple]:
    """Per graph, the arguments to trace it on: the encoders' from the model itself, the decoders' at 4 visual
    tokens."""
    x = example_inputs(model, frames=2, regions=2, prompt=2)
    with torch.inference_mode():
        frames = model.encode_frames(x["hr"])
        tokens = model.region_tokens(x["lr"], x["masks"], x["boxes"], frames, x["frame_index"])
    available = {"region_tokens": tokens, "boxes": x["boxes"], "frame_index": x["frame_index"], "density": frames.density}
    regions, prompt = x["prompt_ids"].shape
    visual = torch.randn(regions, TRACE_VISUAL_TOKENS, model.decoder.config.hidden_size)
    length = TRACE_VISUAL_TOKENS + prompt
    attention = torch.ones(regions, length, dtype=torch.long)
    config, attn = model.decoder.config, model.decoder.model.layers[0].self_attn
    past = [torch.randn(regions, config.num_key_value_heads, length, attn.head_dim)
            for _ in range(2 * config.num_hidden_layers)]
    return {
        G.FRAME_ENCODER: (x["hr"],),
        G.REGION_ENCODER: (x["lr"], x["masks"], x["boxes"], x["frame_index"], frames.coarse, frames.fine),
        G.SCENE_CONTEXT: tuple(available[n] for n in G.scene_context_inputs(model)),
        G.DECODER_PREFILL: (visual, x["prompt_ids"], attention, (attention.cumsum(1) - 1)),
        G.DECODER_STEP: (x["prompt_ids"][:, :1], torch.ones(regions, length + 1, dtype=torch.long),
                         torch.full((regions, 1), length, dtype=torch.long), *past),
    }


def pin_visual_tokens(path: Path, tokens: int) -> None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    visual = next(i for i in model.graph.input if i.name == "visual")
    visual.type.tensor_type.shape.dim[1].dim_value = tokens
    onnx.save(model, str(path))


def main() -> int:
    import onnx

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="where the graphs go (default: a temporary dir)")
    parser.add_argument("--keep", action="store_true", help="keep the graphs (default: deleted at the end)")
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
    parser.add_argument("--weights", choices=("float", "int8", "int4"), default="float",
                        help="the decoder graphs' weights (weight-only int8 per column / int4 per block)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = args.out or Path(tempfile.mkdtemp(prefix="finecaption_8b_structure_"))
    out.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out).free / 2**30
    if free < 20:
        raise SystemExit(f"{out}: {free:.0f} GiB free, 20 GiB needed (the decoder's data file is ~5 GiB)")
    model, full, shape = build_model()
    visual_tokens = num_visual_tokens(full)
    say(f"8B-shaped model built: {shape}")
    args_by_graph = trace_args(model)  # traced in fp32: export_graph casts the float inputs for an fp16 export
    if args.precision == "fp16":
        to_half(model)
    say("trace inputs ready")
    specs = graph_specs(model)
    input_names, output_names, axes = specs[G.DECODER_PREFILL]
    specs[G.DECODER_PREFILL] = (input_names, output_names, dict(axes, visual={0: "batch", 1: "visual_tokens"}))
    rows, stored = [], {}
    for name, spec in specs.items():
        entry = export_graph(model, name, spec, args_by_graph[name], None, out, 17, args.precision, args.weights,
                             None, stored)
        path = out / entry["file"]
        if name == G.DECODER_PREFILL:
            pin_visual_tokens(path, visual_tokens)
        header = onnx.load(str(path), load_external_data=False)
        files = [path] + [out / f for f in entry.get("data", [])]
        onnx.checker.check_model(str(path))  # raises on an invalid graph
        rows.append((name, len(header.graph.node), sorted(graph_ops(path)), len(header.graph.input),
                     len(header.graph.output), sum(f.stat().st_size for f in files), entry.get("data", []),
                     graph_problems(path), entry["export_seconds"]))
        say(f"{name}: {rows[-1][1]} nodes, op check {'passed' if not rows[-1][7] else rows[-1][7][:3]}")
    opsets = "21 (int4 decoders) and 17" if args.weights == "int4" else "17"
    print(f"\n{CONFIG.name} (+2 neighbour tokens, count token): {visual_tokens} visual tokens, {args.precision} "
          f"graphs, {args.weights} decoder weights, opset {opsets}")
    print("every graph passed onnx.checker; the decoder graphs share one data file, counted in both rows")
    print("| graph | nodes | inputs | outputs | MiB on disk (data files) | export s | TensorRT op check |")
    print("|---|---|---|---|---|---|---|")
    for name, nodes, ops, inputs, outputs, size, data, problems, seconds in rows:
        verdict = "passed" if not problems else f"{len(problems)} problems: {problems[:2]}"
        print(f"| {name} | {nodes} | {inputs} | {outputs} | {size / 2**20:,.0f} ({', '.join(data) or 'none'}) | "
              f"{seconds} | {verdict} |")
    print("\nops per graph:")
    for name, _, ops, *_ in rows:
        print(f"  {name}: {' '.join(ops)}")
    print(f"""
exercised: the project's exporter (graph_specs, the graph modules, export_graph) on the 8B shapes: every tensor
  width, head count, vocabulary, image size and the decoder's full depth of 32 layers (64 KV-cache inputs and
  outputs); external data for graphs over 2 GiB (decoder data file shared by prefill and step); onnx.checker and
  the TensorRT op check on all five graphs.
not exercised: the weights of 31 of the 32 decoder layers, 23 of 24 ViT layers and {sum(full.hr_encoder['depths']) - 4}
  of {sum(full.hr_encoder['depths'])} ConvNeXt blocks (the same modules repeated); precisions and weights other than
  {args.precision} / {args.weights} (--precision, --weights); the prefill traced at {TRACE_VISUAL_TOKENS} visual tokens
  with that axis symbolic, then pinned to {visual_tokens}; running the graphs (ONNX Runtime or TensorRT) and parity; a TensorRT build (no GPU here).""")
    if not args.keep:
        shutil.rmtree(out)
        print(f"\n{out} deleted (--keep keeps it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
