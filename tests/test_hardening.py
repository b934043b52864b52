"""Bad input, files and models: the CLI's one error path, damaged model directories, and nothing that runs code
it was handed. Every bad file here is written by the test."""
from __future__ import annotations

import ast
import base64
import gzip
import json
import os
import pickle
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from finecaption_ros.cli import main
from finecaption_ros.data.compositioncap import encode_mask
from finecaption_ros.model.errors import ModelLoadError
from finecaption_ros.model.finecaption import FineCaptionModel, load_tokenizer

REPO = Path(__file__).resolve().parents[1]
SOURCES = [p for folder in ("finecaption_ros", "bench", "engine", "scripts") for p in (REPO / folder).rglob("*.py")]


# ---- nothing loads pickles or runs code from user files ---------------------------------------------------------
UNPICKLERS = ("pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve")


def _unsafe_calls(path: Path) -> list[str]:
    """Calls that can run code from a file: torch.load without weights_only=True, trust_remote_code other than
    False, allow_pickle other than False, unpickling, eval / exec."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        keywords = {k.arg: k.value for k in node.keywords}
        constant = lambda key: getattr(keywords.get(key), "value", "missing")  # noqa: E731
        if name == "load" and isinstance(func, ast.Attribute) and getattr(func.value, "id", "") == "torch" \
                and constant("weights_only") is not True:
            found.append(f"{path}:{node.lineno} torch.load without weights_only=True")
        if "trust_remote_code" in keywords and constant("trust_remote_code") is not False:
            found.append(f"{path}:{node.lineno} trust_remote_code not False")
        if "allow_pickle" in keywords and constant("allow_pickle") is not False:
            found.append(f"{path}:{node.lineno} allow_pickle not False")
        if isinstance(func, ast.Name) and func.id in ("eval", "exec"):
            found.append(f"{path}:{node.lineno} {func.id}()")
        owner = getattr(getattr(func, "value", None), "id", "")
        if name in ("load", "loads", "Unpickler", "open") and owner in UNPICKLERS or name == "Unpickler":
            found.append(f"{path}:{node.lineno} {owner}.{name}()")
    return found


def test_no_code_path_loads_pickles_or_remote_code():
    assert len(SOURCES) > 40  # the package, benchmarks and scripts were all found
    found = [hit for path in SOURCES for hit in _unsafe_calls(path)]
    assert not found, "\n".join(found)
    text = "\n".join(p.read_text() for p in SOURCES)
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in text and "trust_remote_code=True" not in text


def test_the_safety_check_finds_what_it_looks_for(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch, numpy as np\nimport pickle\ntorch.load(p)\ntorch.load(p, weights_only=False)\n"
                   "np.load(p, allow_pickle=True)\nf(x, trust_remote_code=True)\neval('1')\npickle.loads(b)\n"
                   "torch.load(p, weights_only=True)\nnp.load(p, allow_pickle=False)\nmodel.eval()\n"
                   "f(x, trust_remote_code=False)\nexcept_type = pickle.UnpicklingError\n")
    assert len(_unsafe_calls(bad)) == 6


# ---- model directories ------------------------------------------------------------------------------------------
@pytest.fixture()
def model_copy(random_model_dir, tmp_path):
    directory = tmp_path / "model"
    shutil.copytree(random_model_dir, directory)
    return directory


def _evil_tokenizer(directory: Path, marker: Path, in_config: str = "tokenizer_config.json") -> None:
    (directory / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
                                       "from transformers import PreTrainedTokenizerFast\n"
                                       "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    path = directory / in_config
    settings = json.loads(path.read_text())
    settings["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None], "AutoConfig": "evil.EvilConfig"}
    settings["tokenizer_class"] = "EvilTokenizer"
    path.write_text(json.dumps(settings))


@pytest.mark.parametrize("in_config", ["tokenizer_config.json", "config.json"])
def test_a_tokenizer_that_names_custom_code_is_refused(model_copy, tmp_path, in_config):
    marker = tmp_path / "ran"
    _evil_tokenizer(model_copy, marker, in_config)
    with pytest.raises(ModelLoadError, match=rf"{in_config} names custom code to run .*never runs code"):
        load_tokenizer(model_copy)
    assert not marker.exists()


def test_the_cli_refuses_custom_code_without_asking(model_copy, tmp_path):
    """As the attack ran: `finecaption caption --model DIR`, someone answering "y" at any prompt."""
    marker = tmp_path / "ran"
    _evil_tokenizer(model_copy, marker)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "finecaption_ros.cli", "caption", "--model", str(model_copy),
                           "--demo-seed", "1"], input="y\ny\n", capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("finecaption: error: ")
    assert "tokenizer_config.json names custom code" in done.stderr and "Traceback" not in done.stderr
    assert "[y/N]" not in done.stdout + done.stderr and not marker.exists()


def _damage(directory: Path, how: str) -> str:
    """Damages one file of a model directory; returns the file name the error must name."""
    weights = directory / "model.safetensors"
    if how == "weights_corrupt":
        weights.write_bytes(b"\x00\x01garbage" * 100)
    elif how == "weights_truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "weights_empty":
        weights.write_bytes(b"")
    elif how == "weights_of_another_model":
        from safetensors.torch import save_file
        import torch

        save_file({"decoder.lm_head.weight": torch.zeros(3, 3)}, str(weights))
    elif how.startswith("config_"):
        text = {"config_empty_object": "{}", "config_not_json": "{not json", "config_list": "[]",
                "config_binary": "\xff\xfe".encode("latin-1").decode("latin-1"),
                "config_missing_keys": json.dumps({"name": "x", "hr_image_size": 256}),
                "config_wrong_type": json.dumps(dict(json.loads((directory / "config.json").read_text()),
                                                     hr_image_size="big")),
                "config_bad_tower": json.dumps(dict(json.loads((directory / "config.json").read_text()),
                                                    decoder={"model_type": "no_such_model"})),
                }[how]
        (directory / "config.json").write_bytes(text.encode("latin-1") if how == "config_binary" else text.encode())
        return "config.json"
    elif how == "tokenizer_corrupt":
        (directory / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nope"}}')
        return str(directory)
    elif how == "tokenizer_not_json":
        (directory / "tokenizer_config.json").write_text("{{{")
        return "tokenizer_config.json"
    return "model.safetensors"


DAMAGE = ["weights_corrupt", "weights_truncated", "weights_empty", "weights_of_another_model", "config_empty_object",
          "config_not_json", "config_list", "config_binary", "config_missing_keys", "config_wrong_type",
          "config_bad_tower", "tokenizer_corrupt", "tokenizer_not_json"]


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_model_directory_raises_one_error_naming_the_file(model_copy, how):
    from finecaption_ros.captioner import Captioner

    named = _damage(model_copy, how)
    with pytest.raises(ModelLoadError) as err:
        Captioner.from_pretrained(model_copy)
    message = str(err.value)
    assert named in message and ("re-save the model" in message or "restore" in message), message
    assert "\n" not in message and len(message) < 1200
    assert isinstance(err.value, ValueError)  # what the node's start-up turns into its one FATAL line


def test_missing_model_files_are_file_not_found(model_copy):
    (model_copy / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors in"):
        FineCaptionModel.from_pretrained(model_copy)


# ---- the CLI: one line, exit 2 ----------------------------------------------------------------------------------
def _files(tmp_path: Path) -> dict[str, Path]:
    files = {"empty": tmp_path / "empty.png", "text": tmp_path / "text.png", "image": tmp_path / "image.png",
             "labels": tmp_path / "labels.png", "object_npy": tmp_path / "objects.npy",
             "pickle_npy": tmp_path / "pickle.npy", "float_npy": tmp_path / "float.npy",
             "rgb_labels": tmp_path / "rgb_labels.png", "cube_npy": tmp_path / "cube.npy",
             "a_file": tmp_path / "a_file", "folder": tmp_path / "folder"}
    files["empty"].write_bytes(b"")
    files["text"].write_text("this is not an image\n")
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(files["image"])
    labels = np.zeros((48, 64), np.uint8)
    labels[8:24, 8:24] = 1
    Image.fromarray(labels).save(files["labels"])
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(files["rgb_labels"])
    np.save(files["object_npy"], np.array([[{"x": 1}, None]], dtype=object), allow_pickle=True)
    files["pickle_npy"].write_bytes(pickle.dumps(labels))
    np.save(files["float_npy"], labels.astype(np.float32))
    np.save(files["cube_npy"], np.zeros((2, 48, 64), np.int32))
    files["a_file"].write_text("x")
    files["folder"].mkdir()
    return files


CLI_CASES = [
    # (arguments, text the one line must hold); {name} is a file from _files
    ("caption --image {missing}", "argument --image: {missing} does not exist"),
    ("caption --image {empty} --masks {labels}", "is empty (0 bytes)"),
    ("caption --image {text} --masks {labels}", "--image {text} is not an image that can be read"),
    ("caption --image {folder}", "is not a file"),
    ("caption --image {image} --masks {missing}", "argument --masks: {missing} does not exist"),
    ("caption --image {image} --masks {empty}", "is empty (0 bytes)"),
    ("caption --image {image} --masks {text}", "--masks {text} is not an image that can be read"),
    ("caption --image {image} --masks {object_npy}", "Object arrays cannot be loaded when allow_pickle=False"),
    ("caption --image {image} --masks {pickle_npy}", "has no .npy header"),
    ("caption --image {image} --masks {float_npy}", "holds float32 values"),
    ("caption --image {image} --masks {cube_npy}", "a label map is one HxW channel"),
    ("caption --image {image} --masks {rgb_labels}", "a label map is one HxW channel"),
    ("caption --masks {labels}", "give --image (and --masks) or --demo-seed N"),
    ("caption --demo-seed 1 --image {image}", "either --demo-seed or --image"),
    ("caption --demo-seed -1", "argument --demo-seed: must be >= 0, got -1"),
    ("caption --demo-seed 1 --max-new-tokens -1", "argument --max-new-tokens: must be within 1..512, got -1"),
    ("caption --demo-seed 1 --max-new-tokens 0", "must be within 1..512, got 0"),
    ("caption --demo-seed 1 --max-new-tokens 100000", "must be within 1..512"),
    ("caption --demo-seed 1 --max-new-tokens lots", "expected an integer, got 'lots'"),
    ("caption --demo-seed 1 --task poem", "argument --task: invalid choice: 'poem'"),
    ("caption --demo-seed 1 --task attribute --attributes color,,size", "has an empty name"),
    ("caption --model {missing} --demo-seed 1", "model directory {missing} does not exist"),
    ("eval --n 0", "argument --n: must be >= 1, got 0"),
    ("eval --n -5", "argument --n: must be >= 1, got -5"),
    ("eval --tasks bogus", "argument --tasks: unknown 'bogus'; choose from attribute,dense,global"),
    ("eval --tasks dense,dense", "names one twice"),
    ("eval --tasks attribute,", "has an empty name"),
    ("eval --tasks ''", "has an empty name"),
    ("eval --out {folder}", "is a folder; give a file name"),
    ("export-onnx --out {a_file}", "argument --out: {a_file} is a file; give a folder"),
    ("export-onnx --out {a_file}/sub", "is a file, not a folder"),
    ("build-engine --out {a_file}", "argument --out: {a_file} is a file"),
    ("demo-data --out {a_file}", "is a file; give a folder"),
    ("demo-data --out {folder} --n 0", "argument --n: must be >= 1"),
    ("train --steps 0", "--steps must be >= 1, got 0"),
    ("train --lr nan", "--lr must be a finite number"),
    ("train --p-global 2", "--p-global must be >= 0 and <= 1, got 2.0"),
    ("train --use-hr maybe", "expected true or false, got 'maybe'"),
    ("train --compositioncap {missing} --out {folder}/run", "annotation file {missing} does not exist"),
    ("train --compositioncap {text} --out {folder}/run", "not valid JSON"),
    ("train --compositioncap {escape} --out {folder}/run", "must be relative to the image root, without '..'"),
    ("train --compositioncap {bad_mask} --out {folder}/run", "record 0, region 0: mask is not valid base64"),
    ("frobnicate", "argument command: invalid choice: 'frobnicate'"),
    ("", "the following arguments are required: command"),
    ("caption --demo-seed 1 --bogus-flag", "unrecognized arguments: --bogus-flag"),
]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("finecaption: error: ") and "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("argv,text", CLI_CASES, ids=[c[0] or "nothing" for c in CLI_CASES])
def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys, argv, text):
    files = {name: str(path) for name, path in _files(tmp_path).items()}
    files["missing"] = str(tmp_path / "missing.png")
    escape = tmp_path / "escape.json"
    escape.write_text(json.dumps([{"image": "../outside.png", "global_caption": "x"}]))
    bad_mask = tmp_path / "bad_mask.json"
    bad_mask.write_text(json.dumps([{"image": "image.png", "height": 48, "width": 64,
                                     "regions": [{"mask": "!!!!", "dense_caption": "x"}]}]))
    files.update(escape=str(escape), bad_mask=str(bad_mask))
    assert main(shlex.split(argv.format(**files))) == 2
    assert text.format(**files) in _one_error_line(capsys)


@pytest.mark.parametrize("how", ["weights_corrupt", "weights_truncated", "config_empty_object", "config_not_json",
                                 "tokenizer_corrupt"])
def test_cli_with_a_damaged_model_is_one_line(model_copy, capsys, how):
    named = _damage(model_copy, how)
    assert main(["caption", "--model", str(model_copy), "--demo-seed", "1"]) == 2
    assert named in _one_error_line(capsys)


def test_captioner_input_errors_take_the_same_path(random_model_dir, tmp_path, capsys):
    files = _files(tmp_path)
    assert main(["caption", "--model", str(random_model_dir), "--image", str(files["image"]),
                 "--masks", str(files["labels"]), "--task", "attribute", "--attributes", "smell"]) == 2
    assert "unknown attribute(s) ['smell']" in _one_error_line(capsys)


def test_the_installed_command_prints_one_line(tmp_path):
    """The console script itself, in its own process: exit status 2, one stderr line, no traceback."""
    script = Path(sys.executable).with_name("finecaption")
    assert script.is_file(), f"{script} missing: run make setup"
    (tmp_path / "zero.png").write_bytes(b"")
    done = subprocess.run([str(script), "caption", "--image", str(tmp_path / "zero.png")], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"finecaption: error: argument --image: {tmp_path / 'zero.png'} is empty (0 bytes) " \
                          "(see `finecaption caption --help`)\n"


# ---- training never overwrites a model by accident --------------------------------------------------------------
def test_train_refuses_an_existing_model_dir_unless_overwrite(random_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(random_model_dir, out)
    before = (out / "model.safetensors").read_bytes()
    small = ["--steps", "1", "--scenes-per-batch", "1", "--warmup", "1", "--workers", "0", "--threads", "1"]
    assert main(["train", "--out", str(out)] + small) == 2
    line = _one_error_line(capsys)
    assert f"--out {out} already holds a model (model.safetensors); pass --overwrite" in line
    assert main(["train", "--out", str(out), "--resume"] + small) == 2  # nothing to resume from either
    assert "has no trainer_state.pt to resume from" in _one_error_line(capsys)
    assert (out / "model.safetensors").read_bytes() == before
    assert main(["train", "--out", str(out), "--overwrite"] + small) == 0
    assert (out / "model.safetensors").read_bytes() != before
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--steps", "2"] + small[2:]) == 0  # its own state resumes


def test_resume_never_unpickles_a_trainer_state(tmp_path, random_model_dir, capsys):
    out = tmp_path / "run"
    shutil.copytree(random_model_dir, out)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.write_text, (marker, "ran"))

    import torch

    torch.save({"optimizer": {}, "step": 1, "elapsed_s": 0.0, "extra": Payload()}, out / "trainer_state.pt")
    assert main(["train", "--out", str(out), "--resume", "--steps", "2", "--workers", "0"]) == 2
    line = _one_error_line(capsys)
    assert "trainer_state.pt: not a trainer state of tensors and plain values" in line
    assert "holds Python objects, which are never unpickled" in line
    assert not marker.exists()
    (out / "trainer_state.pt").write_bytes(b"not a torch file")
    assert main(["train", "--out", str(out), "--resume", "--steps", "2", "--workers", "0"]) == 2
    assert "trainer_state.pt: not a trainer state" in _one_error_line(capsys)
    torch.save([1, 2], out / "trainer_state.pt")
    assert main(["train", "--out", str(out), "--resume", "--steps", "2", "--workers", "0"]) == 2
    assert "not a trainer state written by `finecaption train`" in _one_error_line(capsys)


def test_a_compositioncap_mask_bomb_is_refused_through_the_cli(tmp_path, capsys):
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(tmp_path / "image.png")
    bomb = base64.b64encode(gzip.compress(b"\x01" * (64 << 20))).decode()
    records = [{"image": "image.png", "height": 48, "width": 64,
                "regions": [{"mask": bomb, "dense_caption": "x"},
                            {"mask": encode_mask(np.ones((48, 64), bool)), "dense_caption": "y"}]}]
    (tmp_path / "ann.json").write_text(json.dumps(records))
    assert main(["train", "--compositioncap", str(tmp_path / "ann.json"), "--out", str(tmp_path / "run")]) == 2
    assert "record 0, region 0: mask has more than 3072 bytes but height x width = 48 x 64" in \
        _one_error_line(capsys)


def test_evaluate_refuses_what_the_cli_refuses(default_captioner):
    from finecaption_ros.evaluate import evaluate

    for n in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="n must be a number of scenes >= 1"):
            evaluate(default_captioner, n=n, progress=False)
    for tasks in ((), ("bogus",), ("dense", "poem")):
        with pytest.raises(ValueError, match="tasks must name some of attribute, dense, global"):
            evaluate(default_captioner, n=1, tasks=tasks, progress=False)


def test_images_past_pils_pixel_limit_are_refused_not_warned_about(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for side, labels in ((40, "warned"), (64, "refused")):  # PIL warns at 1x its limit and refuses at 2x
        path = tmp_path / f"{labels}.png"
        Image.fromarray(np.zeros((side, side, 3), np.uint8)).save(path)
        assert main(["caption", "--image", str(path)]) == 2
        assert "is not an image that can be read" in _one_error_line(capsys)


def test_the_captioner_bounds_caption_length_and_region_count(default_captioner):
    from finecaption_ros.captioner import CaptionerInputError
    from finecaption_ros.tasks import MAX_REGIONS

    image = np.zeros((32, 32, 3), np.uint8)
    labels = np.zeros((32, 32), np.int32)
    labels[4:12, 4:12] = 1
    for bad in (-1, 0, 10_000, 2.0, True):
        with pytest.raises(CaptionerInputError, match="max_new_tokens must be an integer in 1..512"):
            default_captioner.caption(image, labels, max_new_tokens=bad)
    assert default_captioner.caption(image, labels, max_new_tokens=1)[0].caption is not None
    noisy = np.arange(1, 32 * 32 + 1, dtype=np.int32).reshape(32, 32)  # every pixel its own region
    with pytest.raises(CaptionerInputError, match=f"1024 regions is more than the {MAX_REGIONS} one frame may hold"):
        default_captioner.caption(image, noisy)


def test_a_model_path_that_is_a_file_is_named_as_such(tmp_path, capsys):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    assert main(["caption", "--model", str(tmp_path / "model.safetensors"), "--demo-seed", "1"]) == 2
    assert "model.safetensors is a file, not a folder" in _one_error_line(capsys)


def test_the_engines_subcommands_take_the_same_path(model_copy, tmp_path, capsys):
    _damage(model_copy, "weights_truncated")
    assert main(["export-onnx", "--model", str(model_copy), "--out", str(tmp_path / "onnx")]) == 2
    assert "model.safetensors is corrupt or truncated" in _one_error_line(capsys)
    assert main(["plan-memory", "--config", str(tmp_path / "missing.json")]) == 2
    assert "no FineCaption config" in _one_error_line(capsys)
