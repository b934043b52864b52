"""The colcon route with the PyPI wheels: `scripts/setup_ros.sh --wheels-only`, then `colcon build` of a clean
checkout (the tracked files only) in a fresh workspace against this venv, then `colcon test`, which must run the
pytest suite through ament_cmake_pytest and report it. Only two quick tests of the suite are selected
(PYTEST_ADDOPTS), so this checks the build and the registration, not the suite a second time."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)
SELECTED = "test_mono8_uses_the_opencv_luma_weights or test_bgr_and_rgba_frames_become_the_same_mono8"


def _run(cmd, cwd, env, timeout=900):
    run = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{run.stdout[-6000:]}\n{run.stderr[-3000:]}"
    return run.stdout


def test_colcon_build_and_test_of_a_clean_checkout(tmp_path):
    colcon = VENV / "bin" / "colcon"
    assert colcon.exists(), "colcon is not installed in this venv: pip install -r requirements.txt"
    src = tmp_path / "ws" / "src" / "finecaption_ros"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    ws = tmp_path / "ws"
    env = {**os.environ, "AMENT_PREFIX_PATH": str(VENV), "CMAKE_PREFIX_PATH": str(VENV),
           "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1",
           "PYTEST_ADDOPTS": f'-p no:cacheprovider -k "{SELECTED}"'}
    env.pop("PYTHONPATH", None)

    _run(["bash", str(src / "scripts" / "setup_ros.sh"), "--wheels-only", str(VENV)], ws, env)
    _run([str(colcon), "build", "--packages-select", "finecaption_ros", "--cmake-args",
          f"-DPython3_EXECUTABLE={sys.executable}", "-DPython3_FIND_VIRTUALENV=ONLY"], ws, env)
    install = ws / "install" / "finecaption_ros"
    assert (install / "lib" / "finecaption_ros" / "finecaption_node").is_file()
    assert (install / "share" / "finecaption_ros" / "msg" / "RegionCaptionArray.msg").is_file()
    # The workspace's own install provides the generated messages once its setup script is sourced.
    where = _run(["bash", "-c", "source install/setup.bash && cd / && python -c "
                  "'import finecaption_ros.msg as m; print(m.__file__)'"], ws, env)
    assert str(install) in where

    out = _run([str(colcon), "test", "--packages-select", "finecaption_ros", "--event-handlers",
                "console_direct+"], ws, env)
    assert "2 passed" in out and "100% tests passed" in out, out[-4000:]
    result = _run([str(colcon), "test-result", "--test-result-base", "build/finecaption_ros", "--verbose"], ws, env)
    assert "0 errors, 0 failures" in result, result
    xml = ws / "build" / "finecaption_ros" / "test_results" / "finecaption_ros" / "pytest.xunit.xml"
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    assert (int(suite.get("tests")), int(suite.get("failures")), int(suite.get("errors"))) == (2, 0, 0)
