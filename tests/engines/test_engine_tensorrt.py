"""TensorRT: plan manifest and selection policy, unreadable plans, missing tensorrt, trtexec commands, the binding
of the region graphs.

Everything but the last test runs without a GPU: `tensorrt` is replaced at the module boundary by a stand-in whose
`Runtime.deserialize_cuda_engine` behaves like the real one (an engine object for a plan, None for bytes it cannot
read), and the GPU probe is pinned; the policy code under test is the real one. The last test builds and runs real
plans and skips unless tensorrt and a CUDA GPU are present.
"""
import json
import sys
import types

import numpy as np
import pytest
import torch

from finecaption_ros.captioner import Captioner
from finecaption_ros.engines import BackendUnavailableError, PlanLoadError, PlanMismatchError, load_backend
from finecaption_ros.engines import trt_backend, trt_build
from finecaption_ros.engines.cli import main as cli_main
from finecaption_ros.engines.manifest import (PlanLimits, PlanManifest, RuntimeTarget, plan_key, read_graphs,
                                             read_onnx_manifest)
from finecaption_ros.engines.graphs import GRAPHS

ORIN = ("NVIDIA Jetson AGX Orin", "8.7")
RUNNING_TRT = "10.3.0"


class FakeEngine:
    def __init__(self, data):
        self.data = data


def fake_tensorrt(version=RUNNING_TRT):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class Logger:
        WARNING = 2

        def __init__(self, level=None):
            self.level = level

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data):
            return FakeEngine(data) if data.startswith(b"PLAN") else None

    trt.Logger, trt.Runtime = Logger, Runtime
    return trt


@pytest.fixture
def on_orin(monkeypatch):
    """tensorrt 10.3.0 importable, the GPU an Orin; returns the fake module."""
    trt = fake_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_build, "gpu_info", lambda device=0: ORIN)
    return trt


@pytest.fixture
def onnx_copy(onnx_dir, tmp_path):
    """A private copy of the export (tests write plans beside it)."""
    import shutil

    return shutil.copytree(onnx_dir, tmp_path / "onnx")


def write_plans(onnx_dir, target, limits=None, plan_dir=None, sha_override=None):
    manifest = read_graphs(onnx_dir, target.precision)[1]
    plan_dir = plan_dir or onnx_dir / "tensorrt" / plan_key(target)
    plan_dir.mkdir(parents=True, exist_ok=True)
    for name in manifest["graphs"]:
        (plan_dir / f"{name}.plan").write_bytes(b"PLAN " + name.encode())
    sha = {name: g["sha256"] for name, g in manifest["graphs"].items()}
    sha.update(sha_override or {})
    PlanManifest(target=target, onnx_sha256=sha, model_digest=manifest["model"]["digest"],
                 limits=limits or PlanLimits(), plans={n: f"{n}.plan" for n in manifest["graphs"]}).save(plan_dir)
    return plan_dir


def orin_target(precision="fp16", tensorrt=RUNNING_TRT, gpu=ORIN):
    return RuntimeTarget(tensorrt=tensorrt, gpu=gpu[0], compute_capability=gpu[1], precision=precision)


@pytest.fixture
def rebuilds(monkeypatch):
    """Stands in for the TensorRT builder: records each call and writes plans for the running target."""
    calls = []

    def build(onnx_dir, plan_dir, precision, limits, *args, **kwargs):
        calls.append({"plan_dir": plan_dir, "precision": precision, "limits": limits})
        write_plans(onnx_dir, trt_build.runtime_target(precision), limits, plan_dir)
        return plan_dir

    monkeypatch.setattr(trt_backend, "build_engines", build)
    return calls


# ---- manifest ----------------------------------------------------------------------------------------------------
def test_plan_key_and_manifest_round_trip(tmp_path):
    target = orin_target()
    assert plan_key(target) == "trt10.3.0_nvidia-jetson-agx-orin_sm87_fp16"
    manifest = PlanManifest(target=target, onnx_sha256={"decoder_step": "ab" * 32}, model_digest="cd" * 32,
                            limits=PlanLimits(max_regions=4), plans={"decoder_step": "decoder_step.plan"})
    manifest.save(tmp_path)
    assert PlanManifest.load(tmp_path) == manifest
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(PlanLoadError, match="unreadable"):
        PlanManifest.load(tmp_path)


def test_matching_plans_load_without_a_rebuild(on_orin, onnx_copy, rebuilds):
    write_plans(onnx_copy, orin_target())
    engines, plans, runtime = trt_backend.load_plans(onnx_copy, "fp16", on_mismatch="refuse")
    assert isinstance(runtime, on_orin.Runtime)  # kept: engines must not outlive their runtime
    assert set(engines) == set(read_onnx_manifest(onnx_copy)["graphs"])
    assert all(isinstance(e, FakeEngine) for e in engines.values())
    assert plans.target == orin_target() and rebuilds == []


@pytest.mark.parametrize("built_for,expected", [
    (dict(tensorrt="10.0.1"), "TensorRT version: plans built for '10.0.1', running '10.3.0'"),
    (dict(gpu=("NVIDIA GeForce RTX 4090", "8.9")), "GPU: plans built for 'NVIDIA GeForce RTX 4090', running "
                                                   "'NVIDIA Jetson AGX Orin'; compute capability: plans built for "
                                                   "'8.9', running '8.7'"),
    (dict(precision="fp32"), "precision: plans built for 'fp32', running 'fp16'"),
])
def test_mismatched_plans_are_refused_naming_the_mismatch_and_the_fix(on_orin, onnx_copy, rebuilds, built_for,
                                                                      expected):
    # plans copied from another machine into the directory this machine reads
    plan_dir = onnx_copy / "stale"
    write_plans(onnx_copy, orin_target(**built_for), plan_dir=plan_dir)
    with pytest.raises(PlanMismatchError) as refused:
        trt_backend.load_plans(onnx_copy, "fp16", plan_dir=plan_dir, on_mismatch="refuse")
    message = str(refused.value)
    assert expected in message
    assert f"finecaption build-engine --onnx {onnx_copy} --precision fp16" in message
    assert rebuilds == []


def test_mismatched_plans_are_rebuilt_by_default(on_orin, onnx_copy, rebuilds, caplog):
    plan_dir = write_plans(onnx_copy, orin_target(tensorrt="10.0.1"),
                           plan_dir=onnx_copy / "tensorrt" / plan_key(orin_target()))
    engines, plans, _ = trt_backend.load_plans(onnx_copy, "fp16")
    assert len(rebuilds) == 1 and rebuilds[0]["plan_dir"] == plan_dir
    assert plans.target.tensorrt == RUNNING_TRT and len(engines) == len(GRAPHS)
    assert "rebuilding" in caplog.text and "TensorRT version" in caplog.text


def test_no_plans_for_this_gpu(on_orin, onnx_copy, rebuilds):
    write_plans(onnx_copy, orin_target(gpu=("NVIDIA GeForce RTX 4090", "8.9")))  # plans for another GPU only
    with pytest.raises(PlanMismatchError, match=r"no plans for NVIDIA Jetson AGX Orin \(sm 8.7\), TensorRT 10.3.0"):
        trt_backend.load_plans(onnx_copy, "fp16", on_mismatch="refuse")
    trt_backend.load_plans(onnx_copy, "fp16")
    assert len(rebuilds) == 1
    assert rebuilds[0]["plan_dir"] == onnx_copy / "tensorrt" / plan_key(orin_target())


def test_reexported_onnx_makes_plans_stale(on_orin, onnx_copy, rebuilds):
    write_plans(onnx_copy, orin_target(), sha_override={"decoder_step": "f" * 64})
    with pytest.raises(PlanMismatchError, match="ONNX graph decoder_step: plans built from sha256 ffffffffffff"):
        trt_backend.load_plans(onnx_copy, "fp16", on_mismatch="refuse")


def test_larger_limits_than_the_plans_allow_need_a_rebuild(on_orin, onnx_copy, rebuilds):
    write_plans(onnx_copy, orin_target(), limits=PlanLimits(max_regions=8))
    wanted = PlanLimits(max_regions=32)
    with pytest.raises(PlanMismatchError, match="max_regions: plans allow 8, 32 requested") as refused:
        trt_backend.load_plans(onnx_copy, "fp16", limits=wanted, on_mismatch="refuse")
    assert "--max-regions 32" in str(refused.value)
    plans = trt_backend.load_plans(onnx_copy, "fp16", limits=wanted).manifest
    assert rebuilds[0]["limits"] == wanted and plans.limits.max_regions == 32
    trt_backend.load_plans(onnx_copy, "fp16", limits=PlanLimits(max_regions=4))  # smaller: the plans serve it
    assert len(rebuilds) == 1


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing", "manifest"])
def test_unreadable_plans_are_refused_or_rebuilt(on_orin, onnx_copy, rebuilds, damage):
    plan_dir = write_plans(onnx_copy, orin_target())
    victim = plan_dir / "region_encoder.plan"
    if damage == "garbage":
        victim.write_bytes(b"\x00\x13not a plan")
    elif damage == "truncated":
        victim.write_bytes(b"")
    elif damage == "missing":
        victim.unlink()
    else:
        (plan_dir / "manifest.json").write_text('{"format": "finecaption-tensorrt-plans", "target": ')
    with pytest.raises(PlanLoadError) as refused:
        trt_backend.load_plans(onnx_copy, "fp16", on_mismatch="refuse")
    message = str(refused.value)
    assert ("manifest.json" if damage == "manifest" else "region_encoder.plan") in message
    assert "finecaption build-engine" in message
    engines = trt_backend.load_plans(onnx_copy, "fp16").engines
    assert len(rebuilds) == 1 and isinstance(engines["region_encoder"], FakeEngine)


def test_a_rebuild_that_still_does_not_load_is_an_error(on_orin, onnx_copy, monkeypatch):
    monkeypatch.setattr(trt_backend, "build_engines", lambda *a, **k: None)  # builds nothing
    with pytest.raises(PlanLoadError, match="freshly built TensorRT plans are unusable"):
        trt_backend.load_plans(onnx_copy, "fp16")


def test_bad_policy_and_precision_are_rejected(on_orin, onnx_copy):
    with pytest.raises(ValueError, match="on_mismatch"):
        trt_backend.load_plans(onnx_copy, "fp16", on_mismatch="ignore")
    with pytest.raises(ValueError, match="precision"):
        trt_backend.load_plans(onnx_copy, "int8")


# ---- missing pieces ----------------------------------------------------------------------------------------------
def test_without_tensorrt_the_backend_says_how_to_get_it(random_model_dir, onnx_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` now raises ImportError
    for attempt in (lambda: load_backend("tensorrt", random_model_dir, onnx_dir),
                    lambda: Captioner.from_pretrained(random_model_dir, backend="tensorrt", engine_dir=onnx_dir)):
        with pytest.raises(BackendUnavailableError) as missing:
            attempt()
        message = str(missing.value)
        assert "pip install 'tensorrt-cu12>=10,<11.5'" in message and "python3-libnvinfer" in message
        assert "onnxruntime" in message
    assert cli_main(["build-engine", "--onnx", str(onnx_dir)]) == 2
    assert "needs NVIDIA TensorRT >= 10" in capsys.readouterr().err


def test_old_tensorrt_is_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("8.6.1"))
    with pytest.raises(BackendUnavailableError, match="8.6.1 is too old"):
        trt_build.import_tensorrt()


def test_tensorrt_without_a_cuda_torch_is_refused(on_orin, random_model_dir, onnx_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackendUnavailableError, match="CUDA build of torch"):
        load_backend("tensorrt", random_model_dir, onnx_dir)


def test_no_gpu_is_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(trt_build.shutil, "which", lambda name: None)
    with pytest.raises(BackendUnavailableError, match="no NVIDIA GPU found"):
        trt_build.runtime_target("fp16")


# ---- profiles and trtexec ----------------------------------------------------------------------------------------
def test_every_dynamic_axis_gets_a_profile_and_trtexec_commands_match(onnx_dir, tmp_path):
    graphs, manifest = read_graphs(onnx_dir, "fp16")
    assert graphs == onnx_dir / "fp16"
    limits = PlanLimits(max_regions=12, max_batch=40, max_prompt=20, max_new_tokens=30)
    ranges = trt_build.axis_ranges(manifest, limits)
    visual = manifest["num_visual_tokens"]
    assert ranges["regions"] == (1, 8, 12) and ranges["batch"][2] == 40
    assert ranges["total"][2] == visual + 20 + 30 and ranges["past"][2] == visual + 49
    commands = trt_build.trtexec_commands(onnx_dir, tmp_path / "plans", "fp16", limits, 2048, tmp_path / "t.cache")
    assert len(commands) == len(manifest["graphs"])
    for command, (name, graph) in zip(commands, manifest["graphs"].items()):
        assert f"--onnx={graphs / graph['file']} " in command
        assert f"--saveEngine={tmp_path / 'plans' / name}.plan" in command
        assert "--stronglyTyped" in command and "--fp16" not in command  # the precision is the graph's
        assert "--memPoolSize=workspace:2048M" in command and f"--timingCacheFile={tmp_path}/t.cache" in command
        shapes = trt_build.profile_shapes(graph, ranges)
        dynamic = [i["name"] for i in graph["inputs"] if any(isinstance(d, str) for d in i["shape"])]
        assert sorted(shapes) == sorted(dynamic)
        for flag, k in (("--minShapes=", 0), ("--optShapes=", 1), ("--maxShapes=", 2)):
            for input_name, shape in shapes.items():
                assert f"{input_name}:{'x'.join(map(str, shape[k]))}" in command.split(flag)[1].split(" ")[0]
    step = dict(zip(manifest["graphs"], commands))["decoder_step"]
    assert f"past_key_values.0.key:40x{manifest['num_key_value_heads']}x{visual + 49}x{manifest['head_dim']}" in step


def test_limits_beyond_the_decoder_positions_are_refused(onnx_dir):
    manifest = read_onnx_manifest(onnx_dir)
    with pytest.raises(ValueError, match="exceeds the decoder's"):
        trt_build.axis_ranges(manifest, PlanLimits(max_prompt=200, max_new_tokens=200))


def test_print_trtexec_needs_neither_tensorrt_nor_a_gpu(onnx_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert cli_main(["build-engine", "--onnx", str(onnx_dir), "--print-trtexec", "--precision", "fp32"]) == 0
    out = capsys.readouterr().out
    assert out.count("trtexec --onnx=") == len(GRAPHS) and "--fp16" not in out
    assert "trt<version>_<gpu>_sm<cc>_fp32" in out


# ---- the binding layer over stand-in plans -----------------------------------------------------------------------
class OrtAsPlan:
    """Stands in for a deserialized plan (`TrtEngine`): the same graph run by ONNX Runtime, torch tensors in/out."""

    def __init__(self, path):
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.calls = 0

    def __call__(self, feeds):
        self.calls += 1
        results = self.session.run(None, {name: feeds[name].numpy() for name in self.inputs})
        return {name: torch.from_numpy(value) for name, value in zip(self.outputs, results)}


def test_the_tensorrt_binding_encodes_regions_like_torch_and_refuses_to_split_a_scene(random_model_dir, onnx_dir):
    """TensorRTBackend.visual_tokens over stand-in plans: region encoder in chunks of max_regions, then the scene
    context over all of them; a frame with more regions than the scene-context profile is refused (its neighbour
    tokens cannot be computed in chunks)."""
    from finecaption_ros.engines.export import example_inputs, relative_error
    from finecaption_ros.model.finecaption import FineCaptionModel

    model = FineCaptionModel.from_pretrained(random_model_dir).eval()
    x = example_inputs(model, frames=1, regions=6, seed=4)
    x["frame_index"] = torch.zeros(6, dtype=torch.long)
    with torch.inference_mode():
        frames = model.encode_frames(x["hr"])
        expected = model.visual_tokens(x["lr"], x["masks"], x["boxes"], frames, x["frame_index"])
    backend = trt_backend.TensorRTBackend.__new__(trt_backend.TensorRTBackend)  # no GPU: bind the stand-ins
    backend.engines = {name: OrtAsPlan(onnx_dir / f"{name}.onnx") for name in GRAPHS}
    backend.use_hr = True
    backend.limits = PlanLimits(max_regions=6)
    got = backend.visual_tokens(x["lr"], x["masks"], x["boxes"], frames, x["frame_index"])
    assert relative_error(got, expected) < 1e-4
    backend.limits = PlanLimits(max_regions=4)
    with pytest.raises(ValueError, match="--max-regions 6"):
        backend.visual_tokens(x["lr"], x["masks"], x["boxes"], frames, x["frame_index"])


# ---- the real thing ----------------------------------------------------------------------------------------------
def _real_tensorrt_and_gpu():
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt is not installed (optional extra: pip install 'tensorrt>=10')"
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to torch"
    return None


@pytest.mark.skipif(_real_tensorrt_and_gpu() is not None, reason=str(_real_tensorrt_and_gpu()))
def test_real_tensorrt_plans_match_onnxruntime(random_model_dir, onnx_copy):
    from finecaption_ros.data.scenes import SceneGenerator

    limits = dict(max_regions=8, max_batch=16, max_prompt=16, max_new_tokens=8)
    trt_captioner = Captioner.from_pretrained(random_model_dir, backend="tensorrt", engine_dir=onnx_copy,
                                              precision="fp32", **limits)
    ort_captioner = Captioner.from_pretrained(random_model_dir, backend="onnxruntime", engine_dir=onnx_copy)
    generator = SceneGenerator(seed=77)
    for _ in range(3):
        scene = generator.sample()
        a = trt_captioner.caption(scene.image, scene.labels, task="dense", max_new_tokens=8)
        b = ort_captioner.caption(scene.image, scene.labels, task="dense", max_new_tokens=8)
        assert [r.caption for r in a] == [r.caption for r in b]
        np.testing.assert_allclose([r.confidence for r in a], [r.confidence for r in b], rtol=1e-3)
    manifest = json.loads(next((onnx_copy / "tensorrt").glob("*/manifest.json")).read_text())
    assert manifest["target"]["precision"] == "fp32"
