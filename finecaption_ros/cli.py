"""`finecaption` command line: caption, train, eval, demo-data (and export-onnx / build-engine from the engines)."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from .tasks import ATTRIBUTES, TASKS


def _load_rgb(path: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def _load_labels(path: str) -> np.ndarray:
    if path.endswith(".npy"):
        return np.load(path)
    from PIL import Image

    return np.asarray(Image.open(path)).astype(np.int32)


def cmd_caption(args) -> int:
    from .captioner import Captioner, CaptionerInputError

    if args.demo_seed is not None:
        from .data.scenes import SceneGenerator

        scene = SceneGenerator(split="eval", seed=args.demo_seed).sample()
        image, labels = scene.image, scene.labels
    elif args.image:
        image = _load_rgb(args.image)
        labels = _load_labels(args.masks) if args.masks else None
    else:
        print("give --image (and --masks) or --demo-seed N", file=sys.stderr)
        return 2
    try:
        captioner = Captioner.from_pretrained(args.model, backend=args.backend, engine_dir=args.engine_dir)
    except (FileNotFoundError, ImportError, RuntimeError) as error:  # EngineError is a RuntimeError
        print(f"error: {error}", file=sys.stderr)
        return 2
    attributes = args.attributes.split(",") if args.attributes else None
    try:
        results = captioner.caption(image, labels, task=args.task, attributes=attributes,
                                    max_new_tokens=args.max_new_tokens)
    except CaptionerInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"model": captioner.model_id, "backend": captioner.backend,
                          "captions": [asdict(r) for r in results]}, indent=2))
        return 0
    for r in results:
        what = f"{r.task}:{r.attribute}" if r.attribute else r.task
        print(f"region {r.region_id:3d}  {what:<28} {r.caption}  (confidence {r.confidence:.2f})")
    print(f"{captioner.model_id} on {captioner.backend}: {results[0].timings_ms['total']:.1f} ms "
          f"({', '.join(f'{k} {v:.1f}' for k, v in results[0].timings_ms.items() if k != 'total')})")
    return 0


def cmd_train(args) -> int:
    from .train import TrainSettings, train

    settings = TrainSettings(**{f.name: getattr(args, f.name) for f in fields(TrainSettings)})
    train(settings)
    return 0


def cmd_eval(args) -> int:
    from .captioner import Captioner
    from .evaluate import evaluate

    captioner = Captioner.from_pretrained(args.model, backend=args.backend, engine_dir=args.engine_dir)
    if args.suite == "camera":
        from .evaluate_camera import camera_suite, format_table

        report = camera_suite(captioner, n=args.n or 40, seed=args.seed)
        print(format_table(report), file=sys.stderr)
    else:
        tasks = tuple(args.tasks.split(",")) if args.tasks else TASKS
        report = evaluate(captioner, n=args.n or 500, seed=args.seed, tasks=tasks)
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


def cmd_demo_data(args) -> int:
    """Writes scenes as PNG images, PNG label maps and a CompositionCap-format annotation file."""
    from PIL import Image
    from tqdm import tqdm

    from .data.compositioncap import encode_mask
    from .data.scenes import SceneGenerator

    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    generator = SceneGenerator(args.size, args.size, split=args.split, seed=args.seed)
    records = []
    for index in tqdm(range(args.n), desc="scenes"):
        scene = generator.sample()
        name = f"{index:06d}.png"
        Image.fromarray(scene.image).save(out / "images" / name)
        Image.fromarray(scene.labels.astype(np.uint8)).save(out / "masks" / name)
        records.append({
            "image": f"images/{name}", "height": args.size, "width": args.size,
            "global_caption": scene.global_caption(),
            "regions": [{"id": o.region_id, "mask": encode_mask(scene.mask(o.region_id)),
                         "attribute_captions": {a: o.attribute(a) for a in ATTRIBUTES},
                         "dense_caption": o.dense_caption(), "novel": o.novel, "touching": o.touching}
                        for o in scene.objects],
        })
    (out / "annotations.json").write_text(json.dumps({"annotations": records}) + "\n")
    print(f"wrote {args.n} scenes to {out} (images/, masks/ label PNGs, annotations.json)")
    return 0


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="model directory (default: the embedded default model)")
    parser.add_argument("--backend", default="torch", choices=("torch", "onnxruntime", "tensorrt"))
    parser.add_argument("--engine-dir", default=None, help="ONNX / TensorRT engine directory for those backends")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finecaption", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("caption", help="caption the masked regions of an image")
    _add_model_arguments(p)
    p.add_argument("--image", help="RGB image file")
    p.add_argument("--masks", help="instance label map: PNG (0 = background) or .npy")
    p.add_argument("--demo-seed", type=int, default=None, help="caption a generated demo scene instead")
    p.add_argument("--task", default="dense", choices=TASKS)
    p.add_argument("--attributes", default=None, help=f"comma-separated, for --task attribute: {','.join(ATTRIBUTES)}")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print JSON instead of lines")
    p.set_defaults(func=cmd_caption)

    from .train import TrainSettings

    p = sub.add_parser("train", help="train a model on fresh synthetic scenes (torchrun for DDP)")
    defaults = TrainSettings()
    parse_bool = lambda text: text.lower() in ("1", "true", "yes")  # noqa: E731
    for f in fields(TrainSettings):
        flag = "--" + f.name.replace("_", "-")
        value = getattr(defaults, f.name)
        base = f.type.split("|")[0].strip()  # annotations are strings here: "int", "float | None", ...
        if base == "bool" and value is not None:
            p.add_argument(flag, dest=f.name, action="store_true", default=value)
            continue
        kind = {"int": int, "float": float, "str": str, "bool": parse_bool}[base]
        p.add_argument(flag, dest=f.name, type=kind, default=value,
                       choices=("mask", "box", "none") if f.name == "mask_mode" else None)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate on fresh synthetic scenes; prints JSON")
    _add_model_arguments(p)
    p.add_argument("--suite", default="generator", choices=("generator", "camera"),
                   help="generator: the generator's clean 256 px scenes; camera: one row per camera condition "
                        "(sizes, shifts, masks, backgrounds, effects), counts 1-10 and consistency; the table goes "
                        "to stderr, the JSON to stdout")
    p.add_argument("--n", type=int, default=None,
                   help="scenes (generator suite; default 500) or scenes per condition (camera suite; default 40)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tasks", default=None, help=f"comma-separated subset of {','.join(TASKS)} (generator suite)")
    p.add_argument("--out", default=None, help="also write the JSON report here")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo-data", help="write synthetic scenes with masks and CompositionCap-format annotations")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--split", default="eval", choices=("train", "eval"))
    p.set_defaults(func=cmd_demo_data)

    try:
        from .engines import cli as engine_cli
    except ImportError:  # the engine layer ships with the package; this guards a partial install
        engine_cli = None
    if engine_cli is not None:
        engine_cli.register(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
