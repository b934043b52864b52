"""The node's parameters in one table (name, default, description, constraints) and their validation, without
rclpy: the node turns each into a ParameterDescriptor; the launch-file test checks launch files against it."""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

from ..tasks import ATTRIBUTE_TASK, ATTRIBUTES, DEFAULT_MAX_NEW_TOKENS, MAX_NEW_TOKENS, MAX_REGIONS, TASKS
from .errors import echo

BACKENDS = ("torch", "onnxruntime", "tensorrt")
QOS_PROFILES = ("sensor_data", "reliable", "best_effort")


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: object
    description: str
    read_only: bool = False
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None
    constraints: str = ""

    @property
    def type_name(self) -> str:
        return type(self.default).__name__ if not isinstance(self.default, list) else "string_array"


NODE_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("cameras", [], "camera namespaces, each with its own <ns>/image + <ns>/mask inputs and "
              "<ns>/region_captions output, all captioned in one batch; empty = one camera on image, mask, "
              "region_captions", read_only=True, constraints="distinct ROS names, e.g. [front, left]"),
    ParamSpec("lifecycle", False, "a managed (lifecycle) node: it waits for configure (loads the model) and "
              "activate (takes frames); otherwise it configures and activates itself at start-up", read_only=True),
    ParamSpec("model_path", "", "FineCaption model folder or file; empty = the embedded default model",
              read_only=True, constraints="must exist when set"),
    ParamSpec("backend", "torch", "inference backend", read_only=True, choices=BACKENDS),
    ParamSpec("engine_dir", "", "folder of exported engines (onnxruntime / tensorrt backends); empty = default",
              read_only=True),
    ParamSpec("engine_precision", "fp16", "TensorRT plan precision (tensorrt backend)", read_only=True,
              choices=("fp16", "fp32")),
    ParamSpec("engine_on_mismatch", "rebuild", "TensorRT plans built for another GPU / TensorRT / model: rebuild "
              "them at start-up, or refuse to start with the command that fixes it", read_only=True,
              choices=("rebuild", "refuse")),
    ParamSpec("num_threads", 0, "CPU threads per inference worker; 0 = the cores less one (for DDS and the camera), "
              "shared by the workers", read_only=True, minimum=0, maximum=256),
    ParamSpec("inference_process", True, "caption in a child process of the node, fed frames through shared "
              "memory: its own interpreter lock, so receiving images cannot slow inference; false = in the node's "
              "own process", read_only=True),
    ParamSpec("inference_workers", 0, "threads that caption in parallel, each a batch of other cameras' frames; "
              "0 = one per camera up to the core count (1 for the tensorrt backend)", read_only=True, minimum=0,
              maximum=64),
    ParamSpec("grounded_relations", True, "a relative location names only a colour and category the model reads for "
              "another region of the frame (models of the synthetic world); false = decoded freely", read_only=True),
    ParamSpec("task", "dense", "what to caption: one attribute per region, a dense caption per region, or the whole "
              "image", choices=TASKS),
    ParamSpec("attributes", ["color", "category"], "attribute names for task 'attribute'",
              constraints=f"non-empty for task 'attribute'; known attributes: {', '.join(ATTRIBUTES)}"),
    ParamSpec("max_regions", 16, "caption at most this many regions per frame (the largest); extra ones are "
              "skipped and counted", minimum=1, maximum=MAX_REGIONS),
    ParamSpec("min_region_area", 16, "regions with fewer mask pixels are skipped and counted", minimum=0,
              maximum=1 << 24),
    ParamSpec("max_new_tokens", DEFAULT_MAX_NEW_TOKENS, "caption length limit in tokens", minimum=1,
              maximum=MAX_NEW_TOKENS),
    ParamSpec("latency_budget", 0.0, "seconds a paired frame may wait for the worker; an older one is dropped and "
              "counted (frames_stale), per camera; 0 = no budget", minimum=0.0, maximum=60.0),
    ParamSpec("sync_slop", 0.0, "seconds an image and a mask stamp may differ and still pair; 0 = exact",
              minimum=0.0, maximum=10.0),
    ParamSpec("sync_timeout", 2.0, "seconds an image or mask waits for its partner before it is dropped",
              minimum=0.01, maximum=60.0),
    ParamSpec("sync_queue_size", 8, "images (and masks) that may wait for their partner", minimum=1, maximum=100),
    ParamSpec("qos", "sensor_data", "QoS of the image and mask subscriptions", read_only=True, choices=QOS_PROFILES),
    ParamSpec("qos_depth", 10, "history depth of the image and mask subscriptions", read_only=True, minimum=1,
              maximum=100),
    ParamSpec("max_image_pixels", 3840 * 2160 * 2, "frames with more pixels are skipped and counted", minimum=1,
              maximum=1 << 30),
    ParamSpec("publish_annotated", False, "publish ~/annotated_image (masks tinted, captions drawn) for RViz"),
    ParamSpec("caption_reuse", True, "reuse a region's caption while its id, mask and pixels barely change"),
    ParamSpec("reuse_iou_threshold", 0.9, "minimum mask IoU with the captioned frame for reuse", minimum=0.0,
              maximum=1.0),
    ParamSpec("reuse_pixel_threshold", 4.0, "maximum mean absolute pixel change (0..255) for reuse", minimum=0.0,
              maximum=255.0),
    ParamSpec("reuse_max_age", 10.0, "seconds a caption may be reused; 0 = no limit", minimum=0.0, maximum=3600.0),
    ParamSpec("service_queue_depth", 64, "~/caption_regions requests that may wait (DDS history depth); they are "
              "answered in order, one between each two stream frames", read_only=True, minimum=1, maximum=1000),
    ParamSpec("diagnostics_period", 1.0, "seconds between /diagnostics messages", read_only=True, minimum=0.05,
              maximum=60.0),
)
NODE_PARAM_NAMES = frozenset(p.name for p in NODE_PARAMS)
_BY_NAME = {p.name: p for p in NODE_PARAMS}


def param_default(name: str):
    """The node parameter's default: what every other place that needs it (the pipeline's config) reads."""
    return _BY_NAME[name].default


# rcl reads an empty YAML list from the command line as a parameter without a type, which rclpy hands over as None.
_ROS_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*(/[A-Za-z][A-Za-z0-9_]*)*")
NO_ATTRIBUTES = ("attributes has no value: ROS 2 cannot type an empty list such as `-p attributes:=[]`; give at "
                 "least one attribute, e.g. -p attributes:=[color] (the list is only used by task 'attribute')")


def _type_error(spec: ParamSpec, value) -> str | None:
    if value is None and spec.name == "attributes":
        return NO_ATTRIBUTES
    if value is None and spec.default == []:  # a list that may be empty: declared by type, so None is "none"
        return None
    if value is None:
        return f"{spec.name} has no value; give a value of type {spec.type_name}"
    if isinstance(spec.default, list):
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            return f"{spec.name} must be a list of strings; got {echo(value)}"
        return None
    kinds = (int, float) if isinstance(spec.default, float) else type(spec.default)
    if not isinstance(value, kinds) or (isinstance(value, bool) and not isinstance(spec.default, bool)):
        return f"{spec.name} must be of type {spec.type_name}; got {echo(value)}"
    return None


def validate_one(name: str, value, known_attributes=ATTRIBUTES) -> str | None:
    """Why `value` is not acceptable for parameter `name`, or None."""
    spec = _BY_NAME.get(name)
    if spec is None:
        return None
    reason = _type_error(spec, value)
    if reason:
        return reason
    if spec.choices is not None and value not in spec.choices:
        return f"{name} must be one of {', '.join(spec.choices)}; got {echo(value)}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name} must be a finite number; got {value!r}"
    if spec.minimum is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < spec.minimum or value > spec.maximum:
            return f"{name} must be within [{spec.minimum}, {spec.maximum}]; got {value!r}"
    if name == "model_path" and value and not os.path.exists(os.path.expanduser(value)):
        return f"model_path {echo(value, 300)} does not exist"
    if name == "engine_dir" and value and not os.path.isdir(os.path.expanduser(value)):
        return f"engine_dir {echo(value, 300)} is not a folder"
    if name == "cameras":
        bad = [c for c in value or () if not _ROS_NAME.fullmatch(c)]
        if bad:
            return (f"cameras: {echo(bad[0])} is not a ROS namespace (letters, digits, _ and /, starting with a "
                    "letter), e.g. -p cameras:=[front,left]")
        if len(set(value or ())) != len(value or ()):
            return "cameras lists a name twice"
    if name == "attributes":
        unknown = [a for a in value if a not in known_attributes]
        if unknown:
            return (f"unknown attribute(s) {', '.join(echo(a) for a in unknown[:5])}; "
                    f"known: {', '.join(known_attributes)}")
        if len(set(value)) != len(value):
            return "attributes lists a name twice"
    return None


def validate(changes: dict, current: dict, known_attributes=ATTRIBUTES) -> str | None:
    """Why a batch of parameter changes cannot be applied, or None: every value is checked on its own, then the
    whole batch against the current values, as if all were set at once. So {task: attribute, attributes: [color,
    texture]} is accepted while attributes is [], though task alone would not be. The node calls this at start-up
    and for every set-parameters request (rclpy's SetParameters hands its callback one parameter at a time,
    SetParametersAtomically the whole batch)."""
    for name, value in changes.items():
        reason = validate_one(name, value, known_attributes)
        if reason:
            return reason
    merged = {**current, **changes}
    # (rclpy declares parameters one at a time: the pair is checked once both exist.)
    if merged.get("task") == ATTRIBUTE_TASK and "attributes" in merged and not merged["attributes"]:
        return "task 'attribute' needs a non-empty attributes list"
    return None


# The demo / file / camera source node's parameters (finecaption_ros.ros.source).
SOURCE_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("source", "synthetic", "'synthetic' (scene generator with instance masks), a video file, an image "
              "folder, or a camera device ('/dev/video0' or 'camera:0')", read_only=True),
    ParamSpec("rate", 2.0, "frames per second", read_only=True, minimum=0.01, maximum=1000.0),
    ParamSpec("max_frames", 0, "stop after this many frames; 0 = run until stopped", read_only=True, minimum=0,
              maximum=1 << 31),
    ParamSpec("loop", True, "start a video file or image folder again at its end", read_only=True),
    ParamSpec("width", 256, "synthetic frame width (any camera shape, e.g. 640 with height 480)", read_only=True,
              minimum=16, maximum=8192),
    ParamSpec("height", 256, "synthetic frame height", read_only=True, minimum=16, maximum=8192),
    ParamSpec("scale", 1, "nearest-neighbour upscale factor of synthetic frames", read_only=True, minimum=1,
              maximum=16),
    ParamSpec("seed", 0, "synthetic scene seed", read_only=True, minimum=0, maximum=1 << 31),
    ParamSpec("split", "eval", "synthetic scenes: 'train' (seen attribute pairs only) or 'eval' (some novel pairs)",
              read_only=True, choices=("train", "eval")),
    ParamSpec("frame_id", "camera", "header.frame_id of published frames", read_only=True),
    ParamSpec("encoding", "rgb8", "image encoding to publish", read_only=True,
              choices=("rgb8", "bgr8", "rgba8", "bgra8", "mono8")),
    ParamSpec("mask_encoding", "mono8", "mask encoding to publish", read_only=True,
              choices=("mono8", "mono16", "32SC1")),
    ParamSpec("mask_dir", "", "image folder source: folder of label images named like the images (optional)",
              read_only=True),
    ParamSpec("publish_ground_truth", True, "synthetic: publish the scene's true captions on ~/ground_truth",
              read_only=True),
    ParamSpec("qos", "reliable", "QoS of the published topics", read_only=True, choices=QOS_PROFILES),
    ParamSpec("bag", "", "rosbag2 to replay (folder, .db3 or .mcap) instead of source: its topics under their "
              "recorded names, messages as recorded (header stamps included), at the recorded pace; once",
              read_only=True),
    ParamSpec("bag_rate", 1.0, "bag replay speed factor, as ros2 bag play --rate (2.0 = twice as fast)",
              read_only=True, minimum=0.01, maximum=100.0),
    ParamSpec("bag_topics", "", "bag replay: comma-separated topics to publish; empty = every topic",
              read_only=True),
    ParamSpec("bag_wait_subscribers", 0.0, "bag replay: wait up to this many seconds, before the first message, "
              "until every replayed topic has a subscriber; 0 = start at once", read_only=True, minimum=0.0,
              maximum=3600.0),
)
SOURCE_PARAM_NAMES = frozenset(p.name for p in SOURCE_PARAMS)
_SOURCE_BY_NAME = {p.name: p for p in SOURCE_PARAMS}


def validate_source(name: str, value) -> str | None:
    spec = _SOURCE_BY_NAME.get(name)
    if spec is None:
        return None
    if spec.choices is not None and value not in spec.choices:
        return f"{name} must be one of {', '.join(spec.choices)}; got {echo(value)}"
    if spec.minimum is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < spec.minimum or value > spec.maximum:
            return f"{name} must be within [{spec.minimum}, {spec.maximum}]; got {value!r}"
    return None

# The caption listener's parameters (finecaption_ros.ros.listener).
LISTENER_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("count", 0, "stop after this many caption messages; 0 = never", read_only=True, minimum=0,
              maximum=1 << 31),
    ParamSpec("timeout", 0.0, "stop after this many seconds; 0 = never", read_only=True, minimum=0.0,
              maximum=1e6),
    ParamSpec("save_dir", "", "folder for annotated frames (from annotated_image); empty = none", read_only=True),
    ParamSpec("save_count", 5, "annotated frames to save", read_only=True, minimum=0, maximum=1 << 20),
    ParamSpec("ground_truth", True, "also print the demo camera's true captions (topic ground_truth)",
              read_only=True),
)
LISTENER_PARAM_NAMES = frozenset(p.name for p in LISTENER_PARAMS)

# Executable name -> declared parameter names, for the launch-file checks.
EXECUTABLE_PARAMS = {
    "finecaption_node": NODE_PARAM_NAMES,
    "finecaption_source": SOURCE_PARAM_NAMES,
    "caption_listener": LISTENER_PARAM_NAMES,
}
