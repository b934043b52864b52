"""Start-up: clear errors for a missing model and invalid parameters; the installed executable runs."""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pytest
from rosharness import Client, NodeProcess, node_command, region_ids

from finecaption_ros.data.scenes import SceneGenerator

VENV_PREFIX = Path(sys.prefix)
INSTALLED_NODE = VENV_PREFIX / "lib" / "finecaption_ros" / "finecaption_node"


def run_to_exit(cmd, tmp_path, timeout=60.0) -> tuple[int, str]:
    proc = NodeProcess(cmd, tmp_path / "node.log")
    try:
        code = proc.wait(timeout)
    finally:
        proc.stop()
    return code, proc.log()


def test_missing_model_path_is_a_clear_startup_error(tmp_path):
    started = time.monotonic()
    code, log = run_to_exit(node_command({"model_path": "/no/such/model"}), tmp_path)
    assert code == 2, log
    assert "model_path '/no/such/model' does not exist" in log
    assert "Traceback" not in log
    assert time.monotonic() - started < 30  # refused before the model is loaded


@pytest.mark.parametrize("param,value,text", [
    ("task", "poem", "task must be one of"),
    ("backend", "cuda", "backend must be one of"),
    ("max_regions", "0", "max_regions"),
    ("attributes", "[smell]", "unknown attribute"),
    ("task", "attribute -p attributes:=['']", "unknown attribute"),
    ("attributes", "[]", "attributes has no value: ROS 2 cannot type an empty list"),
])
def test_invalid_startup_parameters_are_refused(tmp_path, param, value, text):
    cmd = node_command() + ["-p", f"{param}:={value.split(' -p ')[0]}"]
    if " -p " in value:
        cmd += ["-p", value.split(" -p ")[1]]
    code, log = run_to_exit(cmd, tmp_path)
    assert code == 2, log
    assert text in log and "Traceback" not in log


def _model_copy(tmp_path) -> Path:
    from finecaption_ros.captioner import DEFAULT_MODEL_DIR

    directory = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, directory)
    return directory


def _fatal_line(code: int, log: str) -> str:
    """A start-up that fails says so in one FATAL line, with no traceback, and exits 2."""
    assert code == 2, log
    assert "Traceback" not in log, log
    fatal = [line for line in log.splitlines() if "FATAL" in line]
    assert len(fatal) == 1, log
    return fatal[0]


@pytest.mark.parametrize("damage,named,text", [
    ("truncated_weights", "model.safetensors", "is corrupt or truncated"),
    ("empty_config", "config.json", "missing FineCaption config keys"),
    ("custom_code", "tokenizer_config.json", "names custom code to run"),
])
def test_a_damaged_model_is_one_fatal_line_naming_the_file(tmp_path, damage, named, text):
    model = _model_copy(tmp_path)
    marker = tmp_path / "code_ran"
    if damage == "truncated_weights":
        weights = model / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100_000])
    elif damage == "empty_config":
        (model / "config.json").write_text("{}")
    else:
        (model / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n")
        settings = json.loads((model / "tokenizer_config.json").read_text())
        settings.update(auto_map={"AutoTokenizer": ["evil.EvilTokenizer", None]}, tokenizer_class="EvilTokenizer")
        (model / "tokenizer_config.json").write_text(json.dumps(settings))
    code, log = run_to_exit(node_command({"model_path": str(model)}), tmp_path)
    line = _fatal_line(code, log)
    assert f"{model / named}" in line and text in line, line
    assert "re-save the model" in line or "never runs code" in line  # and the fix
    assert not marker.exists()


def test_model_folder_without_a_model_is_refused(tmp_path):
    empty = tmp_path / "empty_model"
    empty.mkdir()
    code, log = run_to_exit(node_command({"model_path": str(empty)}), tmp_path)
    assert code == 2, log
    assert "cannot load the model" in log or "model not found" in log


def test_installed_executable_runs_from_anywhere(ros, tmp_path):
    """The executable `ros2 run finecaption_ros finecaption_node` starts (installed by scripts/setup_ros.sh or
    colcon), run outside the checkout, with the default SensorData QoS and the global task."""
    assert INSTALLED_NODE.is_file(), f"{INSTALLED_NODE} missing: run scripts/setup_ros.sh first"
    assert (VENV_PREFIX / "share" / "finecaption_ros" / "launch" / "finecaption.launch.py").is_file()
    assert (VENV_PREFIX / "share" / "ament_index" / "resource_index" / "packages" / "finecaption_ros").is_file()
    name = "installed_finecaption_node"
    cmd = node_command({"task": "global"}, name=name, base=[str(INSTALLED_NODE)])
    proc = NodeProcess(cmd, tmp_path / "installed.log", cwd=tmp_path)
    client = Client(name, name="installed_test_client", reliable=False)
    try:
        client.wait_for_node(proc)
        scene = SceneGenerator(seed=11).sample()
        stamp = 50.5
        deadline = time.monotonic() + 60
        while True:  # best effort: publish again until one frame gets through
            client.publish(scene.image, scene.labels, stamp)
            try:
                msg = client.captions_for(stamp, timeout=5)
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                stamp += 1
        assert [(c.region_id, c.task) for c in msg.captions] == [(0, "global")]
        assert msg.captions[0].caption.strip()
    finally:
        client.close()
        code = proc.stop()
    assert code in (0, -2), proc.log()
    assert region_ids(scene.labels)  # the scene had regions (the global task ignores them)


def test_node_runs_on_the_onnxruntime_backend_with_the_same_captions(ros, tmp_path):
    """backend:=onnxruntime with an empty engine folder: the node exports the default model on first use, then
    captions through ONNX Runtime exactly what the torch captioner says."""
    from finecaption_ros.captioner import Captioner

    name = "onnxruntime_finecaption_node"
    (tmp_path / "onnx").mkdir()
    params = {"backend": "onnxruntime", "engine_dir": str(tmp_path / "onnx"), "qos": "reliable"}
    proc = NodeProcess(node_command(params, name=name), tmp_path / "ort.log")
    client = Client(name, name="ort_test_client")
    try:
        client.wait_for_node(proc)
        scene = SceneGenerator(seed=21).sample()
        client.publish(scene.image, scene.labels, 70.5)
        msg = client.captions_for(70.5)
    finally:
        client.close()
        code = proc.stop()
    assert code in (0, -2), proc.log()
    assert msg.backend == "onnxruntime"
    assert (tmp_path / "onnx" / "manifest.json").is_file()
    expected = Captioner.from_pretrained().caption(scene.image, scene.labels, task="dense")
    assert [(c.region_id, c.caption) for c in msg.captions] == [(r.region_id, r.caption) for r in expected]
