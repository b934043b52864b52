"""finecaption_node: captions the masked regions of paired image + instance-mask frames.

Subscribes: `image` (sensor_msgs/Image: rgb8, bgr8, rgba8, bgra8, mono8) and `mask` (instance label image: mono8,
mono16, 32SC1; 0 = background), paired by header stamp (exact, or within `sync_slop`).
Publishes: `region_captions` (finecaption_ros/RegionCaptionArray, header copied from the image),
`~/annotated_image` (when `publish_annotated`), `/diagnostics` (diagnostic_msgs/DiagnosticArray).
Service: `~/caption_regions` (finecaption_ros/CaptionRegions).

Threads: one SingleThreadedExecutor thread receives images, masks, parameter calls and timers; one worker thread
runs every caption, stream frames and service requests alike; a second single-threaded executor only takes
service requests and waits (without the GIL) for the worker's answer. A MultiThreadedExecutor's Python threads
would hold the GIL in turns with the inference thread, whose hundreds of small torch ops each need it back.
Latest-frame policy: at most one paired frame waits; a newer one replaces it and the older is counted as dropped.
Bad input is logged in one line, counted in diagnostics and never stops the node; Ctrl-C stops the worker before
the ROS context goes down.
"""
from __future__ import annotations

import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image

from finecaption_ros.msg import RegionCaptionArray
from finecaption_ros.srv import CaptionRegions

from ..ros_support.annotate import annotate
from ..ros_support.errors import FrameError
from ..ros_support.image_codec import check_image, check_mask, encode
from ..ros_support.dds import use_large_frame_transport
from ..ros_support.latest import REQUEST, LatestSlot
from ..ros_support.pairing import IMAGE, MASK, StampPairer
from ..ros_support.params import NODE_PARAMS, validate
from ..ros_support.pipeline import CaptionPipeline, PipelineConfig
from ..ros_support.startup import StartupError, inference_threads, load_captioner
from ..ros_support.stats import NodeStats, rss_mb
from ..tasks import ATTRIBUTES
from .common import BatchParameterService, ProblemLog, bounded, captions_message, descriptor, fill_image, qos_profile, stamp_ns

NODE_NAME = "finecaption_node"


@dataclass
class _Frame:
    image: Image
    mask: Image
    stamp_ns: int
    received: float  # time.monotonic() when the pair formed
    pairing_s: float  # executor-thread time of both callbacks (header checks + pairing)


@dataclass
class _Request:
    request: object
    response: object
    received: float
    done: threading.Event = field(default_factory=threading.Event)


class FineCaptionNode(Node):
    def __init__(self, captioner=None, node_name: str = NODE_NAME, **kwargs):
        super().__init__(node_name, start_parameter_services=False, **kwargs)
        self._parameter_service = BatchParameterService(self)
        self.stats = NodeStats()
        self._known_attributes = tuple(ATTRIBUTES)
        self.log = ProblemLog(self.get_logger())
        self._running = True
        self._annotated_failed = False

        self.add_on_set_parameters_callback(self._validate_parameters)
        try:
            self.declare_parameters("", [(s.name, s.default, descriptor(s)) for s in NODE_PARAMS])
        except Exception as err:  # rclpy's InvalidParameterValueException / InvalidParameterTypeException
            raise StartupError(f"invalid parameter: {err}") from err
        p = self.param_values()

        self.captioner = captioner or load_captioner(p["model_path"], p["backend"], p["engine_dir"], p["num_threads"],
                                                           precision=p["engine_precision"],
                                                           on_mismatch=p["engine_on_mismatch"])
        self.model_id = str(getattr(self.captioner, "model_id", "unknown"))
        self.backend = str(getattr(self.captioner, "backend", p["backend"]))
        self._known_attributes = tuple(getattr(self.captioner, "supported_attributes", ATTRIBUTES))
        reason = validate({"attributes": p["attributes"]}, p, self._known_attributes)
        if reason:
            raise StartupError(f"invalid parameter: {reason}")
        self.pipeline = CaptionPipeline(self.captioner, PipelineConfig.from_params(p))
        self._warm_up()
        self.pairer = StampPairer(int(p["sync_slop"] * 1e9), int(p["sync_timeout"] * 1e9), p["sync_queue_size"])
        self.slot = LatestSlot(max_requests=1)  # the service executor hands over one request at a time
        self.add_post_set_parameters_callback(self._apply_parameters)

        qos = qos_profile(p["qos"], p["qos_depth"])
        for topic, kind in (("image", IMAGE), ("mask", MASK)):
            events = SubscriptionEventCallbacks(
                message_lost=lambda info, topic=topic: self._on_lost(topic, info),
                incompatible_qos=lambda info, topic=topic: self._on_incompatible(topic, info))
            self.create_subscription(Image, topic, lambda msg, kind=kind: self._on_input(kind, msg), qos,
                                     event_callbacks=events)
        self.captions_pub = self.create_publisher(RegionCaptionArray, "region_captions", 50)
        self.annotated_pub = self.create_publisher(Image, "~/annotated_image", 2)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(p["diagnostics_period"], self._publish_diagnostics)
        self.create_timer(0.1, self._expire)
        self.worker = threading.Thread(target=self._work, name="finecaption-inference", daemon=True)
        self.worker.start()
        # The service lives on a hidden helper node with its own executor thread, which waits while the worker
        # captions a request; parameter calls on this node stay answered meanwhile. Created last: once the
        # service is there, the node is ready.
        self._service_node = Node(f"_{self.get_name()}_service", namespace=self.get_namespace(),
                                  context=self.context, use_global_arguments=False, enable_rosout=False,
                                  start_parameter_services=False)
        self._service_node.create_service(
            CaptionRegions, f"{self.get_fully_qualified_name()}/caption_regions", self._on_service,
            qos_profile=QoSProfile(depth=p["service_queue_depth"]))
        self._service_executor = SingleThreadedExecutor(context=self.context)
        self._service_executor.add_node(self._service_node)
        self._service_thread = threading.Thread(target=self._spin_service, name="finecaption-service", daemon=True)
        self._service_thread.start()
        self.get_logger().info(
            f"ready: model {self.model_id} ({self.backend}), task {p['task']}; "
            f"{self.resolve_topic_name('image')} + {self.resolve_topic_name('mask')} -> "
            f"{self.resolve_topic_name('region_captions')} (QoS {p['qos']})")

    def _warm_up(self) -> None:
        """One small caption before the node reports ready, so the first real frame is not the slow one."""
        t0 = time.perf_counter()
        image = np.zeros((64, 64, 3), np.uint8)
        labels = np.zeros((64, 64), np.int32)
        labels[16:48, 16:48] = 1
        try:
            self.captioner.caption(image, labels, task="dense", max_new_tokens=2)
        except Exception as err:  # a model that cannot caption at all fails here, clearly, at start-up
            raise StartupError(f"the model cannot caption a test frame: {type(err).__name__}: {err}") from err
        self.get_logger().debug(f"warm-up took {time.perf_counter() - t0:.2f} s")

    # ----------------------------------------------------------------------------------------------- parameters
    def param_values(self) -> dict:
        return {s.name: self.get_parameter(s.name).value for s in NODE_PARAMS if self.has_parameter(s.name)}

    def _validate_parameters(self, params) -> SetParametersResult:
        changes = {p.name: p.value for p in params}
        if "attributes" in changes and changes["attributes"] is not None:
            changes["attributes"] = list(changes["attributes"])
        reason = validate(changes, self.param_values(), self._known_attributes)
        return SetParametersResult(successful=not reason, reason=reason or "")

    def _apply_parameters(self, params) -> None:
        values = self.param_values()
        self.pipeline.configure(PipelineConfig.from_params(values))
        self.pairer.slop_ns = int(values["sync_slop"] * 1e9)
        self.pairer.timeout_ns = int(values["sync_timeout"] * 1e9)
        self.pairer.max_pending = int(values["sync_queue_size"])

    # ----------------------------------------------------------------------------------------------- logging
    def _reject(self, err: FrameError, what: str = "frame") -> None:
        self.stats.reject(err.reason, bounded(str(err)))
        line = f"{what} rejected ({err.reason}): {err}"
        if err.reason == "captioner_error":
            self.log.error(f"{what}_{err.reason}", line)
        else:
            self.log.warn(f"{what}_{err.reason}", line)

    def _publish(self, publisher, msg) -> None:
        """Publish unless the node is stopping; a publish that races the shutdown is dropped, not raised."""
        if not self._running:
            return
        try:
            publisher.publish(msg)
        except Exception as err:
            if self._running and self.context.ok():
                self.log.error("publish", f"cannot publish on {publisher.topic_name}: {err}")

    # ----------------------------------------------------------------------------------------------- inputs
    def _on_input(self, kind: str, msg: Image) -> None:
        t0 = time.perf_counter()
        self.stats.count("images_received" if kind == IMAGE else "masks_received")
        self.stats.tick("images" if kind == IMAGE else "masks")
        limit = self.pipeline.config.max_image_pixels
        try:
            (check_image if kind == IMAGE else check_mask)(msg, limit)
        except FrameError as err:
            self._reject(err, kind)
            return
        checked_s = time.perf_counter() - t0
        result = self.pairer.add(kind, stamp_ns(msg.header.stamp), (msg, checked_s), time.monotonic_ns())
        self._count_dropped(result.dropped)
        if result.pair is None:
            return
        (image, image_s), (mask, mask_s) = result.pair
        partner_s = mask_s if kind == IMAGE else image_s  # the executor time its partner's callback took
        if (image.width, image.height) != (mask.width, mask.height):
            self._reject(FrameError("size_mismatch", f"image is {image.width}x{image.height} but mask is "
                                                     f"{mask.width}x{mask.height} (stamp {_stamp_text(image)})"))
            return
        self.stats.count("frames_paired")
        self.stats.tick("paired")
        frame = _Frame(image, mask, result.stamp_ns, time.monotonic(), time.perf_counter() - t0 + partner_s)
        if self.slot.put(frame) is not None:
            self.stats.count("frames_dropped")

    def _on_lost(self, topic: str, info) -> None:
        """DDS reports messages that never reached the node (e.g. the subscription queue overflowed)."""
        n = int(info.total_count_change)
        self.stats.problem(f"lost_{topic}s", f"{n} {topic} message(s) lost before reaching the node", n)
        self.log.warn(f"lost_{topic}", f"{n} {topic} message(s) lost in DDS before reaching the node (publisher "
                                    f"faster than this subscription, or frames too large for its transport)")

    def _on_incompatible(self, topic: str, info) -> None:
        self.log.error(f"qos_{topic}", f"a publisher on {self.resolve_topic_name(topic)} has a QoS incompatible "
                                    f"with this subscription ({self.get_parameter('qos').value}); "
                                    "set the qos parameter to match it")

    def _expire(self) -> None:
        self._count_dropped(self.pairer.expire(time.monotonic_ns()))

    def _count_dropped(self, dropped) -> None:
        for item in dropped:
            counter = "unmatched_images" if item.kind == IMAGE else "unmatched_masks"
            line = item.describe(self.pairer)
            self.stats.problem(counter, line)
            self.log.warn(f"{counter}_{item.why}", line)

    # ----------------------------------------------------------------------------------------------- worker
    def _work(self) -> None:
        while self._running:
            work = self.slot.take_work(timeout=0.25)
            if work is None:
                continue
            kind, item = work
            if kind == REQUEST:
                self._answer(item)
                continue
            try:
                self._caption_frame(item)
            except Exception as err:  # never let the worker die
                self._reject(FrameError("captioner_error", f"captioning failed: {type(err).__name__}: {err}"))
                self.log.debug(traceback.format_exc())

    def _caption_frame(self, frame: _Frame) -> None:
        try:
            result = self.pipeline.process_messages(frame.image, frame.mask)
        except FrameError as err:
            self._reject(err)
            return
        for counter, line, n in result.problems:
            self.stats.problem(counter, line, n)
            self.log.warn(counter, line)
        t_publish = time.perf_counter()
        msg = captions_message(result, frame.image.header, self.model_id, self.backend)
        msg.processing_latency = time.monotonic() - frame.received
        self._publish(self.captions_pub, msg)
        publish_s = time.perf_counter() - t_publish
        if self.get_parameter("publish_annotated").value:
            self._publish_annotated(result, frame.image.header)
        with self.stats.lock:
            self.stats.counts["frames_captioned"] += 1
            self.stats.counts["regions_captioned"] += result.computed
            self.stats.counts["regions_reused"] += result.reused
            self.stats.rates["captioned"].tick()
            self.stats.latency_ms.add(msg.processing_latency * 1e3)
            self.stats.inference_ms.add(result.inference_s * 1e3)
            self.stats.overhead_ms.add((frame.pairing_s + result.decode_s + result.select_s + publish_s) * 1e3)

    def _publish_annotated(self, result, header) -> None:
        try:
            drawn = annotate(result.image, result.labels, result.captions)
            out = fill_image(Image(), encode(drawn, "rgb8"))
            out.header = header
        except Exception as err:
            if not self._annotated_failed:
                self.log.error("annotate", f"cannot draw the annotated image: {err}")
                self._annotated_failed = True
            return
        self._publish(self.annotated_pub, out)

    # ----------------------------------------------------------------------------------------------- service
    def _spin_service(self) -> None:
        while self._running:
            try:
                self._service_executor.spin_once(timeout_sec=0.25)
            except Exception as err:  # the context went down under it (shutdown): nothing left to serve
                if self._running and self.context.ok():
                    self.log.error("service_executor", f"service executor failed: {type(err).__name__}: {err}")
                return

    def _on_service(self, request, response):
        """On the service executor thread: hand the request to the worker and wait for its answer."""
        job = _Request(request, response, time.monotonic())
        if self.slot.put_request(job):
            while not job.done.wait(0.25):
                if not self._running:
                    break
            if job.done.is_set():
                return response
        response.success = False
        response.message = "finecaption_node is shutting down"
        return response

    def _answer(self, job: _Request) -> None:
        try:
            self._caption_request(job.request, job.response, job.received)
        except Exception as err:  # never let the worker die
            job.response.success = False
            job.response.message = bounded(f"captioning failed: {type(err).__name__}: {err}")
        finally:
            job.done.set()

    def _caption_request(self, request, response, t0: float) -> None:
        try:
            attributes = list(request.attributes) or None
            result = self.pipeline.process_messages(request.image, request.mask, task=request.task or None,
                                                    attributes=attributes, use_reuse=False)
        except FrameError as err:
            response.success = False
            response.message = bounded(str(err))
            self.stats.problem("service_errors", f"caption_regions refused: {response.message}")
            self.log.warn("service_refused", f"caption_regions request refused ({err.reason}): {err}")
            return
        except Exception as err:
            response.success = False
            response.message = bounded(f"captioning failed: {type(err).__name__}: {err}")
            self.stats.problem("service_errors", response.message)
            self.log.error("service_failed", response.message)
            return
        response.success = True
        response.result = captions_message(result, request.image.header, self.model_id, self.backend)
        response.result.processing_latency = time.monotonic() - t0
        self.stats.count("service_calls")
        with self.stats.lock:
            self.stats.service_ms.add(response.result.processing_latency * 1e3)

    # ----------------------------------------------------------------------------------------------- diagnostics
    def _publish_diagnostics(self) -> None:
        snap = self.stats.snapshot()
        counts, rates = snap["counts"], snap["rates"]
        p = self.param_values()
        values = {"model_id": self.model_id, "backend": self.backend, "task": p["task"],
                  "inference_threads": inference_threads(p["num_threads"]), **self.stats.diagnostic_values(snap),
                  "service_queue_depth": p["service_queue_depth"], "frame_waiting": int(self.slot.waiting),
                  "pending_images": self.pairer.pending(IMAGE), "pending_masks": self.pairer.pending(MASK),
                  "reuse_entries": len(self.pipeline.reuse), "rss_mb": f"{rss_mb():.1f}"}
        status = DiagnosticStatus()
        status.name = f"{self.get_fully_qualified_name().lstrip('/')}: region captioning"
        status.hardware_id = self.model_id
        if snap["problems_since_report"]:
            status.level = DiagnosticStatus.WARN
            status.message = snap["last_problem"]
        else:
            status.level = DiagnosticStatus.OK
            status.message = (f"captioning {rates['captioned']:.1f} Hz, latency "
                              f"{snap['latency_ms']['mean']:.0f} ms" if counts.get("frames_captioned")
                              else "waiting for paired image + mask frames")
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [status]
        self._publish(self.diagnostics_pub, array)

    def stop(self) -> None:
        """Stop the worker and the service thread (before the ROS context goes down: they publish and answer)."""
        self._running = False
        for job in self.slot.close():
            job.done.set()  # its caller answers "shutting down"
        for thread in (self.worker, self._service_thread):
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout=10.0)

    def destroy_node(self) -> None:
        if hasattr(self, "_service_node"):  # (a node interrupted during start-up has none)
            self._service_executor.shutdown(timeout_sec=1.0)
            self._service_node.destroy_node()
        super().destroy_node()


def _stamp_text(msg) -> str:
    return f"{msg.header.stamp.sec}.{msg.header.stamp.nanosec:09d}"


def _interrupt(signum, frame) -> None:
    """SIGINT / SIGTERM: leave the spin loop once; further signals are ignored while the node stops."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(args=None) -> int:
    use_large_frame_transport()
    # rclpy's own handlers would shut the context down at once, under a worker that is still publishing.
    rclpy.init(args=args if args is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    node = None
    try:
        node = FineCaptionNode()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while rclpy.ok():
            executor.spin_once(timeout_sec=0.25)  # returns to Python often enough to take a signal
    except StartupError as err:
        rclpy.logging.get_logger(NODE_NAME).fatal(str(err))
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if node is not None:
            node.stop()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
