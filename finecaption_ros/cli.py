"""`finecaption` command line: caption, train, eval, demo-data (and export-onnx / build-engine from the engines).

Every error takes one path (`cli_args.run`): one line `finecaption: error: ...` on stderr and exit status 2.
"""
from __future__ import annotations

import json
import sys
import warnings
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from .cli_args import (ArgumentParser, CommandError, boolean, input_file, int_between, names_from, nonnegative_int,
                       output_dir, output_file, positive_int, run)
from .tasks import ATTRIBUTES, DEFAULT_MAX_NEW_TOKENS, MAX_NEW_TOKENS, TASKS
from .train_settings import TrainSettings

_NPY_MAGIC = b"\x93NUMPY"


def _open_image(path: Path, what: str):
    from PIL import Image

    try:
        with warnings.catch_warnings():  # PIL only warns below twice its pixel limit; refuse those too
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            image.load()
        return image
    # PIL reports unreadable files as any of these, and decompression bombs as its own error or warning.
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as err:
        raise CommandError(f"{what} {path} is not an image that can be read ({err}); give a PNG or JPEG file") from None


def _load_rgb(path: Path) -> np.ndarray:
    return np.asarray(_open_image(path, "--image").convert("RGB"))


def _load_labels(path: Path) -> np.ndarray:
    """A label map from a PNG (grey, 16-bit or palette) or a .npy array, never from a pickle."""
    with open(path, "rb") as handle:
        is_npy = handle.read(len(_NPY_MAGIC)) == _NPY_MAGIC
    if is_npy:
        try:
            labels = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:  # object arrays need pickle: refused here
            raise CommandError(f"--masks {path} is not a plain numeric .npy array ({err}); save the label map with "
                               "np.save(path, labels.astype(np.int32))") from None
    elif path.suffix.lower() == ".npy":
        raise CommandError(f"--masks {path} has no .npy header; save the label map with np.save")
    else:
        labels = np.asarray(_open_image(path, "--masks"))
    if labels.dtype.kind not in "biu":
        raise CommandError(f"--masks {path} holds {labels.dtype} values; a label map holds integers (0 = background)")
    if labels.ndim != 2:
        raise CommandError(f"--masks {path} has shape {labels.shape}; a label map is one HxW channel (a grey or "
                           "palette PNG, or a 2-D .npy)")
    return labels if labels.dtype == bool else labels.astype(np.int32)


def cmd_caption(args) -> int:
    from .captioner import Captioner

    if args.bag:
        return _caption_bag(args)
    if args.demo_seed is not None:
        if args.image or args.masks:
            raise CommandError("give either --demo-seed or --image/--masks, not both")
        from .data.scenes import SceneGenerator

        scene = SceneGenerator(split="eval", seed=args.demo_seed).sample()
        image, labels = scene.image, scene.labels
    elif args.image:
        image = _load_rgb(args.image)
        labels = _load_labels(args.masks) if args.masks else None
    else:
        raise CommandError("give --image (and --masks) or --demo-seed N")
    captioner = Captioner.from_pretrained(args.model, backend=args.backend, engine_dir=args.engine_dir,
                                           grounded_relations=False if args.free_relations else None)
    results = captioner.caption(image, labels, task=args.task, attributes=list(args.attributes or ()) or None,
                                max_new_tokens=args.max_new_tokens)
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


def _caption_bag(args) -> int:
    """`caption --bag`: every image + mask pair of a rosbag2, paired and checked as the node does."""
    from .ros_support.bags import caption_bag, check_topics

    if not (args.image_topic and args.mask_topic and args.out):
        raise CommandError("--bag needs --image-topic, --mask-topic and --out")
    if args.image or args.masks or args.demo_seed is not None:
        raise CommandError("give either --bag or --image/--masks/--demo-seed, not both")
    check_topics(args.bag, args.image_topic, args.mask_topic)  # a bad bag fails before the model loads
    from .captioner import Captioner

    captioner = Captioner.from_pretrained(args.model, backend=args.backend, engine_dir=args.engine_dir,
                                           grounded_relations=False if args.free_relations else None)
    summary = caption_bag(args.bag, args.out, captioner, args.image_topic, args.mask_topic, task=args.task,
                          attributes=list(args.attributes or ()) or None, storage=args.storage,
                          annotated=args.annotated, sync_slop=args.sync_slop, progress=True)
    print("\n".join(summary.lines()))
    return 0


def cmd_train(args) -> int:
    from .train import train

    settings = TrainSettings(**{f.name: getattr(args, f.name) for f in fields(TrainSettings)})
    train(settings)
    return 0


def cmd_eval(args) -> int:
    from .captioner import Captioner
    from .evaluate import evaluate

    captioner = Captioner.from_pretrained(args.model, backend=args.backend, engine_dir=args.engine_dir,
                                           grounded_relations=False if args.free_relations else None)
    if args.suite == "camera":
        from .camera_suite import format_table, run_suite

        if args.tasks:
            raise CommandError("--tasks applies to --suite generator; the camera suite asks every task")
        report = run_suite(captioner, n=args.n or 30, seed=args.seed)
        print(format_table(report), file=sys.stderr)
    else:
        report = evaluate(captioner, n=args.n or 500, seed=args.seed, tasks=args.tasks or TASKS)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
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


def _add_model_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=None,
                        help="model directory (default: the embedded default model)")
    parser.add_argument("--backend", default="torch", choices=("torch", "onnxruntime", "tensorrt"))
    parser.add_argument("--engine-dir", default=None, help="ONNX / TensorRT engine directory for those backends")
    parser.add_argument("--free-relations", action="store_true",
                        help="decode relative locations freely, instead of naming only a colour and category the "
                             "model reads for another region of the frame (Captioner grounded_relations)")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="finecaption", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("caption", help="caption the masked regions of an image")
    _add_model_arguments(p)
    p.add_argument("--image", type=input_file, help="RGB image file")
    p.add_argument("--masks", type=input_file, help="instance label map: PNG (0 = background) or .npy")
    p.add_argument("--demo-seed", type=nonnegative_int, default=None, help="caption a generated demo scene instead")
    p.add_argument("--task", default="dense", choices=TASKS)
    p.add_argument("--attributes", type=names_from(), default=None,
                   help=f"comma-separated, for --task attribute: {','.join(ATTRIBUTES)} (or the model's own)")
    p.add_argument("--max-new-tokens", type=int_between(1, MAX_NEW_TOKENS), default=DEFAULT_MAX_NEW_TOKENS,
                   help=f"caption length limit in tokens (default {DEFAULT_MAX_NEW_TOKENS})")
    p.add_argument("--json", action="store_true", help="print JSON instead of lines")
    p.add_argument("--bag", help="caption a rosbag2 (folder, .db3 or .mcap) offline, with the node's pairing rules")
    p.add_argument("--image-topic", help="--bag: the sensor_msgs/Image topic of the frames")
    p.add_argument("--mask-topic", help="--bag: the instance-mask topic (mono8, mono16 or 32SC1 label images)")
    p.add_argument("--out", help="--bag: new bag folder for the input topics + /region_captions and captions.jsonl")
    p.add_argument("--storage", choices=("sqlite3", "mcap"), default=None, help="--bag: output storage (default: "
                   "the input's)")
    p.add_argument("--annotated", action="store_true", help="--bag: also write /finecaption_node/annotated_image")
    p.add_argument("--sync-slop", type=float, default=0.0, help="--bag: seconds image and mask stamps may differ")
    p.set_defaults(func=cmd_caption)

    p = sub.add_parser("train", help="train a model on fresh synthetic scenes (torchrun for DDP)")
    defaults = TrainSettings()
    for f in fields(TrainSettings):
        flag = "--" + f.name.replace("_", "-")
        value = getattr(defaults, f.name)
        base = f.type.split("|")[0].strip()  # annotations are strings here: "int", "float | None", ...
        if base == "bool" and value is not None:
            p.add_argument(flag, dest=f.name, action="store_true", default=value)
            continue
        kind = {"int": int, "float": float, "str": str, "bool": boolean}[base]
        p.add_argument(flag, dest=f.name, type=kind, default=value,
                       choices=("mask", "box", "none") if f.name == "mask_mode" else None)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate on fresh synthetic scenes; prints JSON")
    _add_model_arguments(p)
    p.add_argument("--suite", choices=("generator", "camera"), default="generator",
                   help="generator: the training generator's 256x256 frames; camera: one row per camera condition "
                        "(frame sizes, shifts, masks, rotation, noise), the table on stderr")
    p.add_argument("--n", type=positive_int, default=None,
                   help="number of scenes (generator: 500; camera: 30 per condition)")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--tasks", type=names_from(TASKS), default=None,
                   help=f"comma-separated subset of {','.join(TASKS)}")
    p.add_argument("--out", type=output_file, default=None, help="also write the JSON report here")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo-data", help="write synthetic scenes with masks and CompositionCap-format annotations")
    p.add_argument("--out", type=output_dir, required=True)
    p.add_argument("--n", type=positive_int, default=100)
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--size", type=int_between(64, 4096), default=256)
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
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
