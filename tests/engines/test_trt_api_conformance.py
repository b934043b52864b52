"""The TensorRT Python API as the project calls it, checked against the real bindings of 10.3 (JetPack 6), the
newest 10.x and 11.x, without a GPU.

The real `tensorrt-cu12-bindings` wheels (pinned, pip-installed once each into its own --target directory under
~/.cache/finecaption-trt-bindings, `$FINECAPTION_TRT_BINDINGS` moves it) import over stand-in libnvinfer /
libnvonnxparser / libnvinfer_plugin shared objects compiled here with gcc (their factories return NULL). Each
version runs in its own process (`tests/engines/trt_fakes.py`), where the project's `build_engines`, `adopt_plans`
and `TrtEngine.__call__` run through strict fakes built from the real classes (see that file), in fp16 and fp32.
Skips, saying why, only when the wheels cannot be installed or gcc is missing.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BINDINGS = ("10.3.0", "10.16.1.11", "11.4.0.106")  # JetPack 6's, the newest 10.x, the newest 11.x
HERE = Path(__file__).parent
ROOT = HERE.parents[1]
# The symbols the bindings import from the TensorRT libraries (`nm -D --undefined-only tensorrt.so`), the same
# in all three versions; returning NULL / 0 is enough for the module to import.
_STUB_C = """
#include <stddef.h>
void *createInferBuilder_INTERNAL(void *logger, int version) { return NULL; }
void *createInferRefitter_INTERNAL(void *engine, void *logger, int version) { return NULL; }
void *createInferRuntime_INTERNAL(void *logger, int version) { return NULL; }
void *getBuilderPluginRegistry(int capability) { return NULL; }
void *getPluginRegistry(void) { return NULL; }
int initLibNvInferPlugins(void *logger, const char *ns) { return 0; }
void *createNvOnnxParser_INTERNAL(void *network, void *logger, int version) { return NULL; }
void *createNvOnnxParserRefitter_INTERNAL(void *refitter, void *logger, int version) { return NULL; }
int getNvOnnxParserVersion(void) { return 0; }
"""
# The sonames `readelf -d tensorrt.so` lists as NEEDED: 10.x link the .so.10 libraries, 11.x the .so.11 ones.
_LIBRARIES = ("libnvinfer", "libnvonnxparser", "libnvinfer_plugin")


def _cache() -> Path:
    return Path(os.environ.get("FINECAPTION_TRT_BINDINGS") or Path.home() / ".cache" / "finecaption-trt-bindings")


@pytest.fixture(scope="module")
def stub_libraries():
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: it compiles the stand-in TensorRT libraries")
    out = _cache() / "stub-libs"
    out.mkdir(parents=True, exist_ok=True)
    source = out / "stub.c"
    if not source.is_file() or source.read_text() != _STUB_C:
        source.write_text(_STUB_C)
        for old in out.glob("*.so.*"):
            old.unlink()
    for major in ("10", "11"):
        for library in _LIBRARIES:
            target = out / f"{library}.so.{major}"
            if not target.is_file():
                subprocess.run([gcc, "-shared", "-fPIC", "-o", str(target), f"-Wl,-soname,{target.name}",
                                str(source)], check=True, capture_output=True)
    return out


def _bindings(version: str) -> Path:
    target = _cache() / version
    if not (target / "tensorrt_bindings" / "__init__.py").is_file():
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                               "--no-deps", "--target", str(target), f"tensorrt-cu12-bindings=={version}"],
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.skip(f"cannot pip-install tensorrt-cu12-bindings=={version} (no registry here?): "
                        f"{done.stderr.strip().splitlines()[-1:]}")
    return target


@pytest.fixture(scope="module", params=BINDINGS)
def conformance(request, stub_libraries, onnx_dir, tmp_path_factory):
    """One process per TensorRT version: fp16 and fp32 through the project's code, then the bad calls."""
    version = request.param
    env = dict(os.environ, LD_LIBRARY_PATH=str(stub_libraries), PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(HERE / "trt_fakes.py"), "--bindings", str(_bindings(version)),
                           "--onnx", str(onnx_dir), "--precision", "fp16", "--precision", "fp32", "--selftest",
                           "--work", str(tmp_path_factory.mktemp(f"trt{version}"))],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["tensorrt"] == version
    return result


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_build_adopt_and_bind_use_only_the_real_api(conformance, precision):
    result = conformance[precision]
    assert "error" not in result, result["error"] + "\n" + result.get("traceback", "")
    assert result["violations"] == []
    assert result["steps"] == ["build", "adopt", "bind"]
    strongly = tuple(int(p) for p in conformance["tensorrt"].split(".")[:2]) >= (10, 12)
    assert result["typing"] == ("strongly typed" if strongly else "weakly typed")
    assert ("network strongly typed" if strongly else "network weakly typed") in result["events"]
    flagged = [e for e in result["events"] if e.startswith("built") and "BuilderFlag.FP16" in e]
    assert len(flagged) == (5 if precision == "fp16" and not strongly else 0)  # the weak path only, in fp16


def test_the_fakes_refuse_bad_calls(conformance):
    outcome = conformance["selftest"]["outcome"]
    accepted = {"a fitting call", "a tuple where Dims is declared"}
    for label, verdict in outcome.items():
        if label in accepted:
            assert verdict == "accepted", (label, verdict)
        else:
            assert verdict.startswith("refused (") and "NOT recorded" not in verdict, (label, verdict)
    assert len(outcome) == 10
