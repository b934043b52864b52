"""Static checks of the launch files and the package manifest (`launch` / `launch_ros` are not installable here):
each launch file runs against stand-ins for the launch API that record what it builds, then every node it starts
must be an installed executable and every parameter it sets one that executable declares."""
from __future__ import annotations

import importlib
import inspect
import re
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import List

import pytest

from finecaption_ros.ros_support.params import (
    EXECUTABLE_PARAMS,
    LISTENER_PARAMS,
    NODE_PARAMS,
    SOURCE_PARAMS,
    validate_one,
    validate_source,
)

ROOT = Path(__file__).resolve().parents[2]
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))
SPECS = {"finecaption_node": NODE_PARAMS, "finecaption_source": SOURCE_PARAMS, "caption_listener": LISTENER_PARAMS}
# Topics each of our executables subscribes or publishes under a relative (remappable) name.
TOPICS = {"finecaption_node": {"image", "mask", "region_captions"},
          "finecaption_source": {"image", "mask"},
          "caption_listener": {"region_captions", "annotated_image", "ground_truth"}}
# Camera drivers the main launch file may start: package -> executable (as those packages install them).
CAMERA_DRIVERS = {"v4l2_camera": "v4l2_camera_node", "usb_cam": "usb_cam_node_exe"}


# ---------------------------------------------------------------------------------------------- launch stand-ins
class Recorded:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class LaunchConfiguration(Recorded):
    def __init__(self, variable_name, default=None):
        super().__init__(variable_name, default=default)
        self.name = variable_name

    def perform(self, context):
        return context.launch_configurations[self.name]


class DeclareLaunchArgument(Recorded):
    def __init__(self, name, *, default_value=None, description=None, choices=None):
        super().__init__(name, default_value=default_value, description=description, choices=choices)
        self.name = name


class LaunchDescription(Recorded):
    def __init__(self, initial_entities=None):
        super().__init__(initial_entities)
        self.entities = list(initial_entities or [])


class Node(Recorded):
    # The keyword arguments of launch_ros.actions.Node (and of the ExecuteProcess it extends).
    def __init__(self, *, executable, package=None, name=None, namespace=None, exec_name=None, parameters=None,
                 remappings=None, ros_arguments=None, arguments=None, output="log", condition=None,
                 respawn=False, respawn_delay=None, emulate_tty=False, additional_env=None, on_exit=None):
        super().__init__(executable=executable, package=package, name=name, parameters=parameters or [],
                         remappings=remappings or [], condition=condition, output=output, on_exit=on_exit)


class OpaqueFunction(Recorded):
    def __init__(self, *, function, args=None, kwargs=None):
        super().__init__(function=function)
        self.function = function


class SetEnvironmentVariable(Recorded):
    def __init__(self, name, value):
        super().__init__(name, value)
        self.name, self.value = name, value


class PythonLaunchDescriptionSource(Recorded):
    def __init__(self, launch_file_path):
        super().__init__(launch_file_path)
        self.path = Path(launch_file_path)


class IncludeLaunchDescription(Recorded):
    def __init__(self, launch_description_source, *, launch_arguments=None):
        super().__init__(launch_description_source, launch_arguments=list(launch_arguments or []))
        self.source, self.arguments = launch_description_source, dict(launch_arguments or [])


class Shutdown(Recorded):
    def __init__(self, *, reason="reason not given"):
        super().__init__(reason=reason)


class ParameterValue(Recorded):
    def __init__(self, value, *, value_type=None):
        super().__init__(value, value_type=value_type)
        self.value, self.value_type = value, value_type


class IfCondition(Recorded):
    def __init__(self, predicate_expression):
        super().__init__(predicate_expression)


class PythonExpression(Recorded):
    def __init__(self, expression):
        super().__init__(expression)


STANDINS = {
    "launch": {"LaunchDescription": LaunchDescription},
    "launch.actions": {"DeclareLaunchArgument": DeclareLaunchArgument, "OpaqueFunction": OpaqueFunction,
                       "SetEnvironmentVariable": SetEnvironmentVariable, "Shutdown": Shutdown,
                       "IncludeLaunchDescription": IncludeLaunchDescription},
    "launch.launch_description_sources": {"PythonLaunchDescriptionSource": PythonLaunchDescriptionSource},
    "launch.conditions": {"IfCondition": IfCondition, "UnlessCondition": IfCondition},
    "launch.substitutions": {"LaunchConfiguration": LaunchConfiguration, "PythonExpression": PythonExpression},
    "launch_ros": {},
    "launch_ros.actions": {"Node": Node},
    "launch_ros.parameter_descriptions": {"ParameterValue": ParameterValue},
}


def load_launch(path: Path, monkeypatch) -> LaunchDescription:
    for name, attrs in STANDINS.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    assert isinstance(description, LaunchDescription)
    entities = []  # included launch files in place, as `ros2 launch` visits them
    for entity in description.entities:
        if isinstance(entity, IncludeLaunchDescription):
            included = load_launch(entity.source.path, monkeypatch)
            declared = {e.name for e in included.entities if isinstance(e, DeclareLaunchArgument)}
            assert set(entity.arguments) <= declared, f"{path.name} passes undeclared arguments"
            entities += included.entities
        else:
            entities.append(entity)
    description.entities = entities
    return description


def walk(value):
    """Every recorded object inside a value (lists, dicts, tuples, nested stand-ins)."""
    if isinstance(value, Recorded):
        yield value
        for item in list(value.args) + list(value.kwargs.values()):
            yield from walk(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from walk(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from walk(item)


def cmake_executables() -> dict[str, str]:
    text = (ROOT / "CMakeLists.txt").read_text()
    block = re.search(r"set\(FINECAPTION_EXECUTABLES(.*?)\)", text, re.DOTALL).group(1)
    return dict(re.findall(r'"(\w+):([\w.]+)"', block))


# ---------------------------------------------------------------------------------------------- tests
def test_there_are_launch_files():
    assert {p.name for p in LAUNCH_FILES} >= {"finecaption.launch.py", "demo.launch.py"}


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_nodes_exist_and_set_only_declared_parameters(path, monkeypatch):
    description = load_launch(path, monkeypatch)
    declared = {e.name for e in description.entities if isinstance(e, DeclareLaunchArgument)}
    used = {o.name for o in walk(description.entities) if isinstance(o, LaunchConfiguration)}
    assert used <= declared, f"launch arguments used but not declared: {used - declared}"
    executables = cmake_executables()
    nodes = [e for e in description.entities if isinstance(e, Node)]
    assert nodes
    for node in nodes:
        package, exe = node.kwargs["package"], node.kwargs["executable"]
        if package != "finecaption_ros":
            assert CAMERA_DRIVERS.get(package) == exe, f"unknown driver {package}/{exe}"
            assert node.kwargs["condition"] is not None, "camera drivers start only when asked for"
            continue
        assert exe in executables, f"{exe} is not installed by CMakeLists.txt"
        module = importlib.import_module(executables[exe])
        assert callable(getattr(module, "main", None)), f"{executables[exe]} has no main()"
        specs = {s.name: s for s in SPECS[exe]}
        for params in node.kwargs["parameters"]:
            assert isinstance(params, dict)
            for name, value in params.items():
                assert name in EXECUTABLE_PARAMS[exe], f"{path.name}: {exe} declares no parameter {name!r}"
                want = type(specs[name].default)
                if isinstance(value, ParameterValue) and want is list:  # launch_ros types a YAML list by List[str]
                    assert value.value_type == List[str], f"{name}: value_type {value.value_type} but List[str]"
                elif isinstance(value, ParameterValue):
                    assert value.value_type is want, f"{name}: value_type {value.value_type} but {want}"
                else:  # a literal: it must have the declared type and pass validation
                    assert isinstance(value, want), f"{name}: {value!r} is not {want.__name__}"
                    reason = validate_one(name, value) if exe == "finecaption_node" else validate_source(name, value)
                    assert reason is None, reason
        for source, _ in node.kwargs["remappings"]:
            assert source in TOPICS[exe], f"{exe} has no topic {source!r} to remap"


def test_launch_argument_defaults_are_valid_parameter_values(monkeypatch):
    description = load_launch(ROOT / "launch" / "finecaption.launch.py", monkeypatch)
    defaults = {e.name: e.kwargs["default_value"] for e in description.entities
                if isinstance(e, DeclareLaunchArgument)}
    assert validate_one("task", defaults["task"]) is None
    assert validate_one("backend", defaults["backend"]) is None
    assert defaults["model"] == ""  # the embedded default model
    assert defaults["camera"] == "none"
    # One camera, unmanaged, no latency budget: the node as it runs without the launch file.
    assert (defaults["cameras"], defaults["lifecycle"], float(defaults["latency_budget"])) == ("[]", "false", 0.0)


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_arguments_with_fixed_values_have_choices(path, monkeypatch):
    """`ros2 launch` itself refuses backend:=bogus, task:=bogus or camera:=bogus, before anything starts."""
    from finecaption_ros.ros_support.params import BACKENDS
    from finecaption_ros.tasks import TASKS

    description = load_launch(path, monkeypatch)
    choices = {e.name: e.kwargs["choices"] for e in description.entities if isinstance(e, DeclareLaunchArgument)}
    assert choices["backend"] == list(BACKENDS) and choices["task"] == list(TASKS)
    if "camera" in choices:
        assert choices["camera"] == ["none", *CAMERA_DRIVERS]
    for name, allowed in choices.items():
        if allowed:
            default = next(e.kwargs["default_value"] for e in description.entities
                           if isinstance(e, DeclareLaunchArgument) and e.name == name)
            assert default in allowed, name


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_the_launch_ends_when_the_captioner_exits_and_cameras_start_first(path, monkeypatch):
    from finecaption_ros.ros_support.dds import PROFILE_VARIABLE

    description = load_launch(path, monkeypatch)
    nodes = [e for e in description.entities if isinstance(e, Node)]
    captioners = [n for n in nodes if n.kwargs["executable"] == "finecaption_node"]
    assert len(captioners) == 1
    assert isinstance(captioners[0].kwargs["on_exit"], Shutdown), "the launch must end when the captioner exits"
    position = description.entities.index(captioners[0])
    for node in nodes:  # camera drivers and the demo source start before the captioner
        if node.kwargs["executable"] in set(CAMERA_DRIVERS.values()) | {"finecaption_source"}:
            assert description.entities.index(node) < position
    # The frames' Fast DDS profile is in the environment of every process it starts.
    env = [i for i, e in enumerate(description.entities) if isinstance(e, SetEnvironmentVariable)
           and e.name == PROFILE_VARIABLE]
    assert env and env[0] < min(description.entities.index(n) for n in nodes)
    assert Path(description.entities[env[0]].value).is_file()


def test_a_camera_that_is_not_installed_is_refused_before_anything_starts(monkeypatch):
    monkeypatch.setenv("AMENT_PREFIX_PATH", sys.prefix)  # as a sourced ROS environment has it
    description = load_launch(ROOT / "launch" / "finecaption.launch.py", monkeypatch)
    checks = [e for e in description.entities if isinstance(e, OpaqueFunction)]
    assert len(checks) == 1
    first_node = min(i for i, e in enumerate(description.entities) if isinstance(e, Node))
    assert description.entities.index(checks[0]) < first_node
    context = types.SimpleNamespace(launch_configurations={"camera": "none"})
    assert checks[0].function(context) == []
    for camera in CAMERA_DRIVERS:  # neither driver is installed in this venv
        context.launch_configurations["camera"] = camera
        with pytest.raises(RuntimeError, match=f"camera:={camera} needs the ROS package '{camera}'"):
            checks[0].function(context)


def test_stand_in_node_matches_the_documented_keywords():
    keywords = set(inspect.signature(Node.__init__).parameters) - {"self"}
    assert {"package", "executable", "name", "parameters", "remappings", "condition", "output"} <= keywords


def test_installed_executables_and_launch_files_match_cmake():
    venv_lib = Path(sys.prefix) / "lib" / "finecaption_ros"
    if not venv_lib.is_dir():
        pytest.fail(f"{venv_lib} missing: run scripts/setup_ros.sh first")
    for exe in cmake_executables():
        path = venv_lib / exe
        assert path.is_file() and path.stat().st_mode & 0o111, f"{path} not installed or not executable"
    for launch_file in LAUNCH_FILES:
        assert (Path(sys.prefix) / "share" / "finecaption_ros" / "launch" / launch_file.name).is_file()


def test_package_xml_is_format_3_with_every_dependency():
    root = ET.parse(ROOT / "package.xml").getroot()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == "finecaption_ros"
    deps = {e.text for e in root if e.tag.endswith("depend")}
    assert {"ament_cmake", "rosidl_default_generators", "rosidl_default_runtime", "rclpy", "std_msgs",
            "sensor_msgs", "diagnostic_msgs", "python3-numpy"} <= deps
    assert root.findtext("export/build_type") == "ament_cmake"
    assert root.findtext("member_of_group") == "rosidl_interface_packages"
    # Every message package the interfaces or the node use is declared.
    imported = set()
    for path in list((ROOT / "finecaption_ros" / "ros").glob("*.py")):
        imported |= set(re.findall(r"^from (\w+_msgs|rcl_interfaces|builtin_interfaces)\.", path.read_text(),
                                   re.MULTILINE))
    for path in list((ROOT / "msg").glob("*.msg")) + list((ROOT / "srv").glob("*.srv")):
        imported |= set(re.findall(r"^(\w+_msgs)/", path.read_text(), re.MULTILINE))
    assert imported <= deps, imported - deps
