"""`finecaption export-onnx`, `finecaption build-engine` and `finecaption plan-memory`.

`register(subparsers)` adds the subcommands to the `finecaption` CLI; each sets `func` (args -> exit code) as its
parser default. `python -m finecaption_ros.engines.cli ...` runs them standalone.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from ..cli_args import ArgumentParser, CommandError, output_dir, run
from .manifest import PRECISIONS, EngineError, PlanLimits
from .quantize import WEIGHTS

_LIMIT_HELP = {
    "max_regions": "regions per call (the region encoder runs more in chunks; models with neighbour tokens need "
                   "every region of a frame in one call, so keep it >= the node's max_regions)",
    "max_batch": "sequences decoded together (regions x attributes; the captioner batches at most 64)",
    "max_prompt": "prompt tokens",
    "max_new_tokens": "generated tokens",
    "max_frames": "frames per encoder call",
}


def _default_model() -> Path:
    from ..model.finecaption import DEFAULT_MODEL_DIR

    return DEFAULT_MODEL_DIR


def register(subparsers) -> None:
    export = subparsers.add_parser(
        "export-onnx", help="export a model to ONNX graphs (frame encoder, region encoder, decoder prefill/step)",
        description="Exports the model's graphs (opset >= 17) with its config, tokenizer and a manifest, then "
                    "checks them against torch with ONNX Runtime.")
    export.add_argument("--model", type=Path, default=None, help="model directory (default: the packaged model)")
    export.add_argument("--out", type=output_dir, default=None,
                        help="output directory (default: <model>/onnx if it holds this model's export, else "
                             "~/.cache/finecaption/engines/<model>-<digest>, where --backend onnxruntime looks)")
    export.add_argument("--opset", type=int, default=17,
                        help="ONNX opset, 17..19 (20 turns GELU into a Gelu op that TensorRT 10.0 lacks)")
    export.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32 (default), or fp16: fp16 weights and compute with the norm statistics, softmaxes "
                             "and logits in fp32, what fp16 TensorRT plans are built from (the default --out is "
                             "then the fp32 export dir's fp16/ subdirectory, where build-engine looks)")
    export.add_argument("--weights", choices=WEIGHTS, default="float",
                        help="int8 / int4: the decoder graphs' matrix weights weight-only int8 per output channel, "
                             "or int4 per block of 32 rows (opset 21 decoder graphs); the default --out is then "
                             "<export dir>/<precision>-<weights>; pass it as --engine-dir")
    export.add_argument("--external-data", action="store_true",
                        help="write every graph's weights as ONNX external data (<graph>.onnx.data; the decoder "
                             "graphs share decoder.onnx.data), as is done anyway for graphs near ONNX's 2 GiB limit")
    export.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs torch check")
    export.set_defaults(func=run_export)

    build = subparsers.add_parser(
        "build-engine", help="build TensorRT plans for this GPU from an ONNX export",
        description="Builds one TensorRT plan per graph for the GPU and TensorRT version this runs on, with an "
                    "optimisation profile for every dynamic axis, and writes a manifest keyed by TensorRT version, "
                    "GPU, compute capability, precision and the ONNX sha256. Also prints the equivalent trtexec "
                    "commands.")
    build.add_argument("--onnx", type=Path, default=None,
                       help="ONNX export directory (default: the packaged model's default export dir)")
    build.add_argument("--model", type=Path, default=None,
                       help="model directory, exported first when --onnx holds no export of it")
    build.add_argument("--precision", choices=PRECISIONS, default="fp16",
                       help="fp16 (default) plans are built from the export's fp16 graphs (<onnx>/fp16/, exported "
                            "there first when --model is given or implied), fp32 plans from its fp32 graphs")
    defaults = PlanLimits()
    for name, text in _LIMIT_HELP.items():
        build.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name),
                           help=f"{text} (default {getattr(defaults, name)})")
    build.add_argument("--workspace", type=int, default=4096, help="builder workspace in MiB (default 4096)")
    build.add_argument("--timing-cache", type=Path, default=None,
                       help="timing cache file, read and updated (default <onnx>/tensorrt/timing.cache)")
    build.add_argument("--out", type=output_dir, default=None,
                       help="plan directory (default <onnx>/tensorrt/<trt version>_<gpu>_sm<cc>_<precision>, where "
                            "the backend looks)")
    build.add_argument("--device", type=int, default=0, help="CUDA device index")
    build.add_argument("--print-trtexec", action="store_true",
                       help="only print the equivalent trtexec commands (needs neither TensorRT nor a GPU)")
    build.add_argument("--adopt", action="store_true",
                       help="write the manifest for plans already built with the printed trtexec commands")
    build.set_defaults(func=run_build)

    plan = subparsers.add_parser(
        "plan-memory", help="weights + KV cache + activations per graph, and which Jetson modules hold them",
        description="Counts each graph's parameters on the meta device (nothing is allocated), adds the KV cache for "
                    "the regions and tokens asked for and an estimate of the largest activations, and says which "
                    "Jetson Orin modules can hold it all.")
    plan.add_argument("--config", type=Path, default=None,
                      help="a FineCaption config JSON or a model directory (default: the packaged model)")
    plan.add_argument("--regions", type=int, default=16, help="regions captioned together (default 16)")
    plan.add_argument("--attributes", type=int, default=1, help="attributes asked per region (default 1)")
    plan.add_argument("--max-new-tokens", type=int, default=PlanLimits().max_new_tokens)
    plan.add_argument("--prompt", type=int, default=PlanLimits().max_prompt, help="prompt tokens (default 32)")
    plan.add_argument("--precision", choices=("fp32", "fp16", "int8", "int4"), default="fp16",
                      help="weights; int8 / int4 are weight-only for the decoder's linear layers")
    plan.set_defaults(func=run_plan_memory)


def _say(message: str) -> None:
    print(message, flush=True)


def run_export(args) -> int:
    from .export import default_engine_dir, export_onnx
    from .manifest import graphs_dir

    model = args.model or _default_model()
    try:
        out = args.out or graphs_dir(default_engine_dir(model), args.precision)
        if args.weights != "float" and not args.out:
            out = default_engine_dir(model) / f"{args.precision}-{args.weights}"
        manifest = export_onnx(model, out, opset=args.opset, verify=not args.no_verify, progress=_say,
                               precision=args.precision, external_data=True if args.external_data else None,
                               weights=args.weights)
    except (FileNotFoundError, ValueError, NotImplementedError, RuntimeError) as error:
        raise CommandError(str(error)) from None
    errors = manifest.get("verification", {})
    print(f"\n{'graph':<18}{'MiB':>8}{'export s':>10}{'rel. error vs torch':>22}")
    for name, graph in manifest["graphs"].items():
        error = f"{errors[name]:.2e}" if name in errors else "-"
        print(f"{name:<18}{graph['bytes'] / 2**20:>8.2f}{graph['export_seconds']:>10.2f}{error:>22}")
    print(f"{'all files':<18}{manifest['bytes'] / 2**20:>8.2f}   (weights shared between graphs counted once)")
    print(f"\n{out}  (model {manifest['model']['name']} {manifest['model']['digest'][:12]}, {args.precision}, "
          f"opset {manifest['opset']}, {manifest['export_seconds']:.1f} s)")
    return 0


def run_plan_memory(args) -> int:
    from .memory import load_config, report

    try:
        config = load_config(args.config or _default_model())
        print(report(config, args.regions, args.max_new_tokens, args.precision, args.prompt, args.attributes))
    except (FileNotFoundError, ValueError) as error:
        raise CommandError(str(error)) from None
    return 0


def _limits(args) -> PlanLimits:
    return PlanLimits(**{name: getattr(args, name) for name in _LIMIT_HELP})


def run_build(args) -> int:
    from . import trt_build
    from .export import default_engine_dir, ensure_onnx

    try:
        if args.onnx is None:
            model = args.model or _default_model()
            onnx_dir = ensure_onnx(model, default_engine_dir(model), precision=args.precision)
        elif args.model is not None:
            onnx_dir = ensure_onnx(args.model, args.onnx, precision=args.precision)
        else:
            onnx_dir = args.onnx
        limits = _limits(args)
        cache = args.timing_cache or onnx_dir / trt_build.PLANS_SUBDIR / "timing.cache"
        if args.print_trtexec:
            plan_dir = args.out or _plan_dir_guess(onnx_dir, args.precision, args.device)
            _print_trtexec(onnx_dir, plan_dir, args, limits, cache)
            return 0
        if args.adopt:
            plan_dir = trt_build.adopt_plans(onnx_dir, args.out, args.precision, limits, args.device)
            print(f"manifest written for the plans in {plan_dir}")
            return 0
        plan_dir = trt_build.build_engines(onnx_dir, args.out, args.precision, limits, args.workspace, cache,
                                           progress=_say, device=args.device)
        _print_trtexec(onnx_dir, plan_dir, args, limits, cache)
        return 0
    except (EngineError, FileNotFoundError, ValueError, RuntimeError) as error:
        raise CommandError(str(error)) from None


def _plan_dir_guess(onnx_dir: Path, precision: str, device: int) -> Path:
    from . import trt_build

    try:
        return trt_build.default_plan_dir(onnx_dir, trt_build.runtime_target(precision, device))
    except EngineError:  # no TensorRT / GPU here: name the directory by its pattern
        return onnx_dir / trt_build.PLANS_SUBDIR / f"trt<version>_<gpu>_sm<cc>_{precision}"


def _print_trtexec(onnx_dir: Path, plan_dir: Path, args, limits: PlanLimits, cache: Path) -> None:
    from .trt_build import trtexec_commands

    print("\nequivalent trtexec commands (then `finecaption build-engine --adopt` with the same options writes the "
          "manifest):")
    print(f"mkdir -p {shlex.quote(str(plan_dir))}")
    for command in trtexec_commands(onnx_dir, plan_dir, args.precision, limits, args.workspace, cache):
        print(command)


def main(argv=None) -> int:
    parser = ArgumentParser(prog="finecaption")
    register(parser.add_subparsers(dest="command", required=True))
    return run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
