"""Strict fakes of the TensorRT Python API, built from the classes of a real `tensorrt_bindings` module.

The real bindings import without a GPU over stand-in libnvinfer / libnvonnxparser shared objects, but their
factories return NULL, so Builder, OnnxParser and Runtime cannot be made. Here they are replaced by fakes whose
every attribute is checked against the real class: an attribute the class lacks, setting a read-only property, a
call whose arguments do not fit the pybind11 signature (read from the real docstrings, overloads included), or
a member documented "[DEPRECATED]" is a violation. Violations raise what pybind11 would (AttributeError /
TypeError) and are also recorded, so code that catches them still fails the test. Everything else (enums,
DataType, Logger, IProgressMonitor, Dims) is the real module's.

Run as a script by tests/engines/test_trt_api_conformance.py, in its own process per TensorRT version (versions
cannot share a process or a site-packages):

    python tests/engines/trt_fakes.py --bindings DIR --onnx DIR --precision fp16 --precision fp32 --work DIR
                                      [--selftest] [--trt-build FILE]

It runs the project's build_engines, adopt_plans and TrtEngine.__call__ through the fakes for each precision (and
the bad calls of `selftest`) and prints one JSON line.
"""
from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import inspect
import json
import re
import sys
import traceback
import types
from pathlib import Path

MISSING = object()
_SIGNATURE = re.compile(r"^(?:\d+\. )?(\w+)\((.*)\) -> (.+)$")
_SETTER = re.compile(r"^\((.*)\) -> (.+)$")


def _split_top_level(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char in "[(<":
            depth += 1
        elif char in "])>":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index].strip())
            start = index + 1
    if text[start:].strip():
        parts.append(text[start:].strip())
    return parts


def _params(text: str) -> list[tuple[str, str, bool]]:
    """'self: X, flags: int = 0' -> [(name, type, has_default)]."""
    params = []
    for part in _split_top_level(text):
        name, _, rest = part.partition(":")
        kind, equals, _ = rest.partition(" = ")
        params.append((name.strip(), kind.strip(), bool(equals)))
    return params


def signatures(function, name: str) -> list[list[tuple[str, str, bool]]]:
    """Every overload's parameters (self included) from a pybind11 docstring."""
    found = []
    for line in (function.__doc__ or "").splitlines():
        match = _SIGNATURE.match(line.strip())
        if match and match.group(1) == name and match.group(2) != "*args, **kwargs":
            found.append(_params(match.group(2)))
    return found


def _enum_member_doc(enum_class, member: str) -> str:
    doc = enum_class.__doc__ or ""
    match = re.search(rf"^\s*{member} :(.*?)(?=^\s*[A-Z0-9_]+ :|\Z)", doc, re.S | re.M)
    return match.group(1) if match else ""


class Checker:
    """Type conformance against pybind11 type names, and the violations found so far."""

    def __init__(self, real):
        self.real = real
        self.violations: list[str] = []

    def fail(self, kind, message: str):
        self.violations.append(message)
        raise kind(message)

    def deprecated(self, owner: str, doc: str | None) -> None:
        if doc and "[DEPRECATED]" in doc:
            line = next(line.strip() for line in doc.splitlines() if "[DEPRECATED]" in line)
            self.violations.append(f"deprecated API used: {owner} ({line})")

    def resolve(self, name: str):
        short = re.split(r"\.|::", name)[-1]
        found = getattr(self.real, short, None)
        return found if isinstance(found, type) else None

    def conforms(self, value, kind: str) -> bool:
        kind = kind.strip()
        if kind.startswith("typing.Optional[") or kind.startswith("Optional["):
            return value is None or self.conforms(value, kind[kind.index("[") + 1:-1])
        if " | " in kind:
            return any(self.conforms(value, k) for k in kind.split(" | "))
        if kind in ("object", "typing.Any", "capsule"):
            return True
        if kind == "None":
            return value is None
        if kind in ("int", "typing.SupportsInt", "typing.SupportsIndex"):
            # pybind11 would take an enum's __index__; flags are bit masks, so an enum here is a bug
            return type(value) is int
        if kind in ("float", "typing.SupportsFloat"):
            return type(value) in (int, float)
        if kind == "bool":
            return type(value) is bool
        if kind == "str":
            return type(value) is str
        if kind in ("buffer", "typing_extensions.Buffer", "collections.abc.Buffer", "Buffer"):
            try:
                memoryview(value)
                return True
            except TypeError:
                return False
        if kind == "tuple":
            return isinstance(value, tuple)
        base, _, inner = kind.partition("[")
        if base in ("list", "List", "typing.List", "collections.abc.Sequence", "typing.Sequence", "Sequence"):
            return isinstance(value, (list, tuple)) and all(self.conforms(v, inner[:-1]) for v in value)
        cls = self.resolve(kind)
        if cls is None:
            raise RuntimeError(f"the conformance fakes cannot check the pybind11 type {kind!r}; teach "
                               f"Checker.conforms about it")
        if isinstance(value, Strict):
            return issubclass(value._spec, cls)
        if isinstance(value, cls):
            return True
        if cls.__name__.startswith("Dims"):  # pybind11 converts a list / tuple of ints implicitly
            try:
                cls(value)
                return True
            except TypeError:
                return False
        return False

    def bind(self, owner: str, overloads, args: tuple, kwargs: dict, skip_self: bool = True) -> dict:
        """The named arguments of the first overload they fit, or a TypeError like pybind11's."""
        for params in overloads:
            params = params[1:] if skip_self else params
            if len(args) > len(params):
                continue
            bound, ok = {}, True
            for (name, kind, _), value in zip(params, args):
                bound[name] = value
            for name, value in kwargs.items():
                if name in bound or name not in [p[0] for p in params]:
                    ok = False
                bound[name] = value
            for name, kind, has_default in params:
                if name not in bound and not has_default:
                    ok = False
                elif name in bound and not self.conforms(bound[name], kind):
                    ok = False
            if ok:
                return bound
        supported = "; ".join("(" + ", ".join(f"{n}: {k}" for n, k, _ in p[1 if skip_self else 0:]) + ")"
                              for p in overloads)
        given = ", ".join([repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()])
        self.fail(TypeError, f"{owner}(): incompatible function arguments. Supported: {supported}. "
                             f"Invoked with: ({given})")


class Strict:
    """An object standing in for an instance of the real class `_spec`; behaviour comes from `_world`."""

    __slots__ = ("_spec", "_world", "_state")

    def __init__(self, spec, world, **state):
        object.__setattr__(self, "_spec", spec)
        object.__setattr__(self, "_world", world)
        object.__setattr__(self, "_state", state)

    def __repr__(self):
        return f"<fake {self._spec.__name__}>"

    def __getattr__(self, name):
        spec, world = self._spec, self._world
        checker = world.checker
        attr = inspect.getattr_static(spec, name, MISSING)
        if attr is MISSING or attr is None:  # pybind11 removes a member by setting it to None
            checker.fail(AttributeError, f"'{spec.__name__}' object has no attribute '{name}'")
        owner = f"{spec.__name__}.{name}"
        if isinstance(attr, property):
            checker.deprecated(owner, attr.__doc__)
            if name in self._state:
                return self._state[name]
            return world.behaviour(self, name)()
        checker.deprecated(owner, getattr(attr, "__doc__", None))
        overloads = signatures(attr, name)
        if not overloads:
            raise RuntimeError(f"no pybind11 signature found for {owner}")

        def call(*args, **kwargs):
            bound = checker.bind(owner, overloads, args, kwargs)
            return world.behaviour(self, name)(**bound)

        return call

    def __setattr__(self, name, value):
        spec, checker = self._spec, self._world.checker
        attr = inspect.getattr_static(spec, name, MISSING)
        owner = f"{spec.__name__}.{name}"
        if attr is MISSING or attr is None:
            checker.fail(AttributeError, f"'{spec.__name__}' object has no attribute '{name}'")
        if not isinstance(attr, property):
            checker.fail(AttributeError, f"{owner} is not a property")
        if attr.fset is None:
            checker.fail(AttributeError, f"{owner} is read-only (can't set attribute)")
        checker.deprecated(owner, attr.__doc__)
        match = _SETTER.match((attr.fset.__doc__ or "").strip().splitlines()[0])
        params = _params(match.group(1)) if match else []
        if len(params) != 2 or not checker.conforms(value, params[1][1]):
            checker.fail(TypeError, f"{owner} = {value!r}: the setter takes {params[1:] if params else '?'}")
        self._state[name] = value


_ONNX_TO_TRT = {1: "float32", 10: "float16", 6: "int32", 7: "int64", 9: "bool", 16: "bfloat16"}


class World:
    """What the fakes do: a parser that reads the ONNX graph into layers, a builder that serialises 'plans'
    naming their graph, a runtime whose engines report the graph's I/O, execution contexts that track shapes."""

    def __init__(self, real, graphs: dict | None = None):
        self.real = real
        self.checker = Checker(real)
        self.graphs = graphs or {}  # graph name -> manifest graph spec (inputs / outputs with dtypes, shapes)
        self.events: list[str] = []

    def behaviour(self, fake: Strict, name: str):
        handler = getattr(self, f"{fake._spec.__name__}__{name}", None)
        if handler is None:
            raise NotImplementedError(f"the fake {fake._spec.__name__} has no behaviour for {name}: add "
                                      f"World.{fake._spec.__name__}__{name}")
        return lambda **kwargs: handler(fake, **kwargs)

    # ---- constructors (the module's Builder / OnnxParser / Runtime) --------------------------------------------
    def construct(self, cls_name: str, *args, **kwargs):
        real_cls = getattr(self.real, cls_name)
        bound = self.checker.bind(f"{cls_name}.__init__", signatures(real_cls.__init__, "__init__"), args, kwargs)
        fake = Strict(real_cls, self)
        init = getattr(self, f"{cls_name}__init", None)
        if init is not None:
            init(fake, **bound)
        return fake

    def OnnxParser__init(self, fake, network, logger):
        fake._state["network"] = network

    # ---- builder ------------------------------------------------------------------------------------------------
    def Builder__create_network(self, fake, flags=0):
        strongly = bool(flags & (1 << int(self.real.NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
        self.events.append("network strongly typed" if strongly else "network weakly typed")
        return Strict(self.real.INetworkDefinition, self, layers=[], inputs=[], strongly_typed=strongly)

    def Builder__create_builder_config(self, fake):
        return Strict(self.real.IBuilderConfig, self, flags=set())

    def Builder__create_optimization_profile(self, fake):
        return Strict(self.real.IOptimizationProfile, self, shapes={})

    def Builder__platform_has_fast_fp16(self, fake):
        return True

    def Builder__build_serialized_network(self, fake, network, config):
        flags = config._state["flags"]
        if network._state["strongly_typed"] and flags:
            self.checker.violations.append(f"precision flags {sorted(map(str, flags))} on a strongly typed network "
                                           f"(TensorRT rejects the build)")
            return None
        graph = network._state.get("graph")
        profile = config._state.get("profile")
        dynamic = {i["name"] for i in self.graphs[graph]["inputs"] if any(isinstance(d, str) for d in i["shape"])}
        if profile is None or set(profile._state["shapes"]) != dynamic:
            self.checker.violations.append(f"{graph}: the optimisation profile does not cover every dynamic input")
        self.events.append(f"built {graph} with flags {sorted(str(f) for f in flags)}")
        return b"PLAN " + graph.encode()

    def INetworkDefinition__num_layers(self, fake):
        return len(fake._state["layers"])

    def INetworkDefinition__get_layer(self, fake, index):
        return fake._state["layers"][index]

    def OnnxParser__parse_from_file(self, fake, model):
        import onnx

        path = Path(model)
        if not path.is_file():
            return False
        graph = onnx.load(str(path), load_external_data=False).graph
        types_of = {v.name: v.type.tensor_type.elem_type for v in list(graph.input) + list(graph.value_info)
                    + list(graph.output)}
        types_of.update({t.name: t.data_type for t in graph.initializer})
        network = fake._state["network"]
        network._state["graph"] = path.stem
        network._state["inputs"] = [i.name for i in graph.input]
        kinds = {"Constant": "CONSTANT", "Shape": "SHAPE", "Cast": "CAST", "Softmax": "SOFTMAX", "MatMul":
                 "MATRIX_MULTIPLY", "Gather": "GATHER", "LayerNormalization": "NORMALIZATION"}
        for node in graph.node:
            outputs = [Strict(self.real.ITensor, self, name=o, dtype=getattr(self.real, _ONNX_TO_TRT.get(
                types_of.get(o, 1), "float32"))) for o in node.output]
            network._state["layers"].append(Strict(
                self.real.ILayer, self, name=node.name or node.output[0], outputs=outputs, num_outputs=len(outputs),
                type=getattr(self.real.LayerType, kinds.get(node.op_type, "ELEMENTWISE"))))
        return True

    def OnnxParser__num_errors(self, fake):
        return 0

    def ILayer__get_output(self, fake, index):
        return fake._state["outputs"][index]

    def ILayer__set_output_type(self, fake, index, dtype):
        fake._state["outputs"][index]._state["dtype"] = dtype

    def IBuilderConfig__set_memory_pool_limit(self, fake, pool, pool_size):
        fake._state["pool"] = (pool, pool_size)

    def IBuilderConfig__set_flag(self, fake, flag):
        fake._state["flags"].add(flag)

    def IBuilderConfig__create_timing_cache(self, fake, serialized_timing_cache):
        return Strict(self.real.ITimingCache, self)

    def IBuilderConfig__set_timing_cache(self, fake, cache, ignore_mismatch):
        return True

    def IBuilderConfig__add_optimization_profile(self, fake, profile):
        fake._state["profile"] = profile
        return 0

    def ITimingCache__serialize(self, fake):
        return b"timing cache"

    def IOptimizationProfile__set_shape(self, fake, input, min, opt, max):
        shapes = [tuple(self.real.Dims(s)) for s in (min, opt, max)]
        if not all(a <= b <= c for a, b, c in zip(*shapes)):
            self.checker.violations.append(f"profile of {input}: min <= opt <= max fails for {shapes}")
        fake._state["shapes"][input] = shapes

    # ---- runtime ------------------------------------------------------------------------------------------------
    def Runtime__deserialize_cuda_engine(self, fake, serialized_engine):
        data = bytes(serialized_engine)
        if not data.startswith(b"PLAN "):
            return None
        graph = data[5:].decode()
        spec = self.graphs[graph]
        io = [(v, True) for v in spec["inputs"]] + [(v, False) for v in spec["outputs"]]
        return Strict(self.real.ICudaEngine, self, io=io, graph=graph, num_io_tensors=len(io))

    def ICudaEngine__get_tensor_name(self, fake, index):
        return fake._state["io"][index][0]["name"]

    def _io(self, engine, name):
        for value, is_input in engine._state["io"]:
            if value["name"] == name:
                return value, is_input
        self.checker.fail(ValueError, f"{engine._state['graph']} has no tensor {name!r}")

    def ICudaEngine__get_tensor_dtype(self, fake, name):
        return getattr(self.real, self._io(fake, name)[0]["dtype"])

    def ICudaEngine__get_tensor_mode(self, fake, name):
        modes = self.real.TensorIOMode
        return modes.INPUT if self._io(fake, name)[1] else modes.OUTPUT

    def ICudaEngine__create_execution_context(self, fake, strategy=None):
        return Strict(self.real.IExecutionContext, self, engine=fake, shapes={}, addresses={})

    def IExecutionContext__set_input_shape(self, fake, name, shape):
        value, is_input = self._io(fake._state["engine"], name)
        if not is_input or len(tuple(shape)) != len(value["shape"]):
            self.checker.violations.append(f"set_input_shape({name!r}, {tuple(shape)}) does not fit {value}")
            return False
        fake._state["shapes"][name] = tuple(shape)
        return True

    def IExecutionContext__set_tensor_address(self, fake, name, memory):
        self._io(fake._state["engine"], name)
        fake._state["addresses"][name] = memory
        return True

    def IExecutionContext__get_tensor_shape(self, fake, name):
        engine = fake._state["engine"]
        symbols = {}
        for value, is_input in engine._state["io"]:
            if is_input and value["name"] in fake._state["shapes"]:
                for dim, size in zip(value["shape"], fake._state["shapes"][value["name"]]):
                    if isinstance(dim, str):
                        symbols[dim] = size
        if "past" in symbols:
            symbols["total"] = symbols["past"] + 1
        value = self._io(engine, name)[0]
        return self.real.Dims([d if isinstance(d, int) else symbols[d] for d in value["shape"]])

    def IExecutionContext__execute_async_v3(self, fake, stream_handle):
        engine = fake._state["engine"]
        missing = [v["name"] for v, _ in engine._state["io"] if v["name"] not in fake._state["addresses"]]
        if missing:
            self.checker.violations.append(f"{engine._state['graph']}: executed without addresses for {missing}")
        return True


def fake_module(real, world: World) -> types.ModuleType:
    """The real module with Builder / OnnxParser / Runtime replaced by strict fakes."""

    class Module(types.ModuleType):
        def __getattr__(self, name):
            if name in ("Builder", "OnnxParser", "Runtime"):
                return lambda *args, **kwargs: world.construct(name, *args, **kwargs)
            return getattr(real, name)

    module = Module("tensorrt")
    module.__version__ = real.__version__
    module.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # torch._dynamo looks modules up by spec
    return module


# ---- the scenarios ---------------------------------------------------------------------------------------------
_SIZES = {"frames": 1, "regions": 3, "batch": 3, "prompt": 5}


def _feeds(spec: dict, visual: int):
    import torch

    sizes = dict(_SIZES, sequence=visual + 5, past=visual + 5, total=visual + 6)
    dtypes = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64, "int32": torch.int32,
              "bool": torch.bool}
    return {v["name"]: torch.zeros([d if isinstance(d, int) else sizes[d] for d in v["shape"]],
                                   dtype=dtypes[v["dtype"]]) for v in spec["inputs"]}


def run_project(real, onnx_dir: Path, precision: str, work: Path, trt_build_file: str | None) -> dict:
    import shutil

    import torch

    from finecaption_ros.engines import manifest as M

    from finecaption_ros.engines.trt_backend import TrtEngine  # torch, transformers: before tensorrt is replaced

    graphs = M.graphs_dir(onnx_dir, precision)
    if not (graphs / M.MANIFEST_NAME).is_file():  # the code under test may predate fp16 graphs
        graphs = onnx_dir
    specs = M.read_onnx_manifest(graphs)["graphs"]
    world = World(real, specs)
    sys.modules["tensorrt"] = fake_module(real, world)
    if trt_build_file:  # another version of trt_build.py (main's, to show what it did)
        spec = importlib.util.spec_from_file_location("finecaption_ros.engines.trt_build", trt_build_file)
        trt_build = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = trt_build
        spec.loader.exec_module(trt_build)
    else:
        from finecaption_ros.engines import trt_build

    trt_build.gpu_info = lambda device=0: ("NVIDIA Jetson AGX Orin", "8.7")
    torch.cuda.current_stream = lambda device=None: types.SimpleNamespace(cuda_stream=0, synchronize=lambda: None)
    copy = work / "onnx"
    shutil.copytree(onnx_dir, copy, dirs_exist_ok=True)
    result = {"tensorrt": real.__version__, "precision": precision, "steps": []}
    try:
        plan_dir = trt_build.build_engines(copy, precision=precision, progress=lambda m: None)
        result["steps"].append("build")
        result["typing"] = json.loads((plan_dir / "manifest.json").read_text()).get("typing")
        trt_build.adopt_plans(copy, plan_dir, precision)
        result["steps"].append("adopt")
        runtime = sys.modules["tensorrt"].Runtime(sys.modules["tensorrt"].Logger(real.Logger.WARNING))
        visual = int(M.read_onnx_manifest(graphs)["num_visual_tokens"])
        for name, spec in specs.items():
            engine = runtime.deserialize_cuda_engine((plan_dir / f"{name}.plan").read_bytes())
            outputs = TrtEngine(sys.modules["tensorrt"], engine, name, torch.device("cpu"))(_feeds(spec, visual))
            if sorted(outputs) != sorted(o["name"] for o in spec["outputs"]):
                world.checker.violations.append(f"{name}: bound outputs {sorted(outputs)}")
        result["steps"].append("bind")
    except Exception as error:  # reported, not raised: the test shows it
        result["error"] = f"{type(error).__name__}: {error}"
        result["traceback"] = traceback.format_exc(limit=-4)
    result["violations"] = world.checker.violations
    result["events"] = sorted(set(world.events))
    return result


def selftest(real) -> dict:
    """Bad calls the fakes must refuse; returns each one's outcome."""
    world = World(real)
    trt = fake_module(real, world)
    builder = trt.Builder(real.Logger(real.Logger.WARNING))
    network = builder.create_network(0)
    layer = Strict(real.ILayer, world, name="x", type=real.LayerType.CAST, num_outputs=0, outputs=[])
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    bad = {
        "unknown attribute": lambda: builder.build_cuda_engine_v9,
        "read-only property set": lambda: setattr(layer, "type", real.LayerType.IDENTITY),
        "an int where an enum is declared": lambda: config.set_flag(1),
        "an enum where a bit mask is declared": lambda: builder.create_network(
            real.NetworkDefinitionCreationFlag.STRONGLY_TYPED),
        "a missing argument": lambda: profile.set_shape("visual", (1, 2), (1, 2)),
        "an unknown keyword": lambda: config.set_timing_cache(None, ignore_mismatch=True, strict=True),
        "a wrong constructor argument": lambda: trt.OnnxParser(network, "logger"),
        "a property set to the wrong type": lambda: setattr(config, "progress_monitor", 5),
    }
    outcome = {}
    for label, attempt in bad.items():
        before = len(world.checker.violations)
        try:
            attempt()
            outcome[label] = "accepted"
        except (AttributeError, TypeError) as error:
            recorded = len(world.checker.violations) > before
            outcome[label] = f"refused ({type(error).__name__}{'' if recorded else ', NOT recorded'}): {error}"
    good = {
        "a fitting call": lambda: config.set_flag(real.BuilderFlag.TF32),
        "a tuple where Dims is declared": lambda: profile.set_shape("visual", (1, 2), (2, 2), (3, 2)),
    }
    for label, attempt in good.items():
        try:
            attempt()
            outcome[label] = "accepted"
        except Exception as error:
            outcome[label] = f"refused: {error}"
    return {"tensorrt": real.__version__, "outcome": outcome}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bindings", required=True, help="a --target dir holding tensorrt_bindings")
    parser.add_argument("--onnx", type=Path, help="an export dir (fp32 graphs, fp16 ones in its fp16/)")
    parser.add_argument("--precision", action="append", default=[], help="fp16 / fp32; repeat for both")
    parser.add_argument("--work", type=Path)
    parser.add_argument("--trt-build", default=None, help="run this trt_build.py instead of the package's")
    parser.add_argument("--selftest", action="store_true", help="also try the bad calls")
    args = parser.parse_args()
    sys.path.insert(0, args.bindings)
    import tensorrt_bindings as real

    result = {"tensorrt": real.__version__}
    for precision in args.precision:
        result[precision] = run_project(real, args.onnx, precision, args.work / precision, args.trt_build)
    if args.selftest:
        result["selftest"] = selftest(real)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
