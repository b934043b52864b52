"""Small rclpy helpers shared by the nodes."""
from __future__ import annotations

import threading
import time

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from rclpy.exceptions import ParameterNotDeclaredException
from rclpy.parameter import Parameter
from rclpy.parameter_service import ParameterService
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import RegionOfInterest

from finecaption_ros.msg import RegionCaption, RegionCaptionArray

from ..ros_support.params import ParamSpec

MAX_LOG_LINE = 400  # characters; log lines quote message fields, which a sender controls

_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
          float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING,
          list: ParameterType.PARAMETER_STRING_ARRAY}


def declaration(spec: ParamSpec) -> tuple:
    """(name, default, descriptor) for Node.declare_parameters. rclpy types an empty list as a byte array, so a
    parameter whose default is [] is dynamically typed; validation (params.py) still wants a list of strings."""
    desc = descriptor(spec)
    if spec.default == []:
        desc.type, desc.dynamic_typing = ParameterType.PARAMETER_NOT_SET, True
    return spec.name, spec.default, desc


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    desc = ParameterDescriptor(name=spec.name, type=_TYPES[type(spec.default)], read_only=spec.read_only)
    text = spec.description
    if spec.choices:
        text += f" (one of: {', '.join(spec.choices)})"
    desc.description = text
    if spec.constraints:
        desc.additional_constraints = spec.constraints
    elif spec.choices:
        desc.additional_constraints = f"one of: {', '.join(spec.choices)}"
    if spec.minimum is not None and isinstance(spec.default, bool) is False:
        if isinstance(spec.default, int):
            desc.integer_range = [IntegerRange(from_value=int(spec.minimum), to_value=int(spec.maximum), step=0)]
        elif isinstance(spec.default, float):
            desc.floating_point_range = [FloatingPointRange(from_value=float(spec.minimum),
                                                            to_value=float(spec.maximum), step=0.0)]
    return desc


def qos_profile(name: str, depth: int) -> QoSProfile:
    if name == "sensor_data":
        profile = QoSProfile(depth=depth)
        profile.history = qos_profile_sensor_data.history
        profile.reliability = qos_profile_sensor_data.reliability
        profile.durability = qos_profile_sensor_data.durability
        return profile
    reliability = ReliabilityPolicy.RELIABLE if name == "reliable" else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=reliability,
                      durability=DurabilityPolicy.VOLATILE)


def stamp_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def fill_image(msg, fields: dict):
    msg.height = fields["height"]
    msg.width = fields["width"]
    msg.encoding = fields["encoding"]
    msg.is_bigendian = fields["is_bigendian"]
    msg.step = fields["step"]
    msg.data = fields["data"]
    return msg


def bounded(text: str, limit: int = MAX_LOG_LINE) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def captions_message(result, header, model_id: str, backend: str) -> RegionCaptionArray:
    """A pipeline FrameResult as the RegionCaptionArray for the frame with `header`."""
    msg = RegionCaptionArray(header=header, model_id=model_id, backend=backend,
                             inference_time=float(result.inference_s))
    for c in result.captions:
        x, y, w, h = c.bbox
        msg.captions.append(RegionCaption(
            region_id=int(c.region_id), task=c.task, attribute=c.attribute, caption=c.caption,
            confidence=float(c.confidence),
            bbox=RegionOfInterest(x_offset=int(x), y_offset=int(y), width=int(w), height=int(h)),
            mask_area=int(c.mask_area), reused=bool(c.reused)))
    return msg


class BatchParameterService(ParameterService):
    """rclpy's parameter services, except that a SetParameters batch which is valid together is applied together:
    rclpy sets each parameter alone, so {task: attribute, attributes: [color]} while attributes is [] refused task
    against the old list and applied attributes. A batch that fails together is set one by one, as rclpy does."""

    def _set_parameters_callback(self, request, response):
        node = self._get_node()
        if len(request.parameters) > 1:
            try:
                together = node.set_parameters_atomically([Parameter.from_parameter_msg(p)
                                                           for p in request.parameters])
            except ParameterNotDeclaredException:
                together = None
            if together is not None and together.successful:
                response.results = [together] * len(request.parameters)
                return response
        return super()._set_parameters_callback(request, response)


class ProblemLog:
    """One log line per problem, the same kind (key) at most once a second with the count it skipped, bounded in
    length. rclpy refuses a second severity from one call site (ValueError: Logger severity cannot be changed), so
    each severity has exactly one line that logs it; and nothing here raises, at shutdown least of all."""

    def __init__(self, logger):
        self.logger = logger
        self._state: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def warn(self, key: str, line: str) -> None:
        line = self._throttled(key, line)
        if line:
            try:
                self.logger.warning(line)
            except Exception:
                pass

    def error(self, key: str, line: str) -> None:
        line = self._throttled(key, line)
        if line:
            try:
                self.logger.error(line)
            except Exception:
                pass

    def debug(self, text: str) -> None:
        try:
            self.logger.debug(text)
        except Exception:
            pass

    def _throttled(self, key: str, line: str) -> str | None:
        now = time.monotonic()
        with self._lock:
            last, skipped = self._state.get(key, (-1e9, 0))
            if now - last < 1.0:
                self._state[key] = (last, skipped + 1)
                return None
            self._state[key] = (now, 0)
        return bounded(line) + (f" ({skipped} more like this in the last second)" if skipped else "")
