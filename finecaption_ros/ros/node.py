"""finecaption_node: captions the masked regions of paired image + instance-mask frames, from one or more cameras.

Subscribes: `image` (sensor_msgs/Image: rgb8, bgr8, rgba8, bgra8, mono8) and `mask` (instance label image: mono8,
mono16, 32SC1; 0 = background), paired by header stamp (exact, or within `sync_slop`); with `cameras:=[front, left]`,
`front/image` + `front/mask`, `left/image` + `left/mask`, each camera paired on its own.
Publishes: `region_captions` (finecaption_ros/RegionCaptionArray, header copied from the image; per camera
`<ns>/region_captions`), `~/annotated_image` (`~/<ns>/annotated_image`) when `publish_annotated`, `/diagnostics`.
Service: `~/caption_regions` (finecaption_ros/CaptionRegions).

Threads: one SingleThreadedExecutor thread receives images, masks, parameter calls and timers; `inference_workers`
worker threads (one with one camera) run every caption, stream frames and service requests alike (service.py: the
service waits on its own thread); with `inference_process` (the default) each hands its batch to the child process
running the model (ros_support/captioner_process.py) and waits without the GIL. A MultiThreadedExecutor's
Python threads would hold the GIL in turns with the inference thread, whose hundreds of small torch ops each need
it back. At most one paired frame waits per camera (a
newer one replaces it: dropped); a worker captions the waiting frame of every camera in one batch, dropping (and
counting) any that waited longer than `latency_budget`, and the next worker the frames that arrive meanwhile. A
lifecycle node: `lifecycle:=true` waits for a manager (configure loads the model and opens the topics, activate
takes frames, deactivate counts arriving frames as frames_inactive, cleanup releases the model); otherwise it
configures and activates itself. Bad input is logged in one line, counted in diagnostics and never stops the node;
Ctrl-C stops the workers before the ROS context goes down.
"""
from __future__ import annotations

import signal
import sys
import time
import traceback

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image

from finecaption_ros.msg import RegionCaptionArray

from ..ros_support.annotate import annotate
from ..ros_support.dds import use_large_frame_transport
from ..ros_support.errors import FrameError
from ..ros_support.image_codec import check_image, check_mask, encode
from ..ros_support.latest import InferenceWorkers, InFlight, LatestSlot, PairedFrame, ServiceJob
from ..ros_support.pairing import IMAGE, MASK, StampPairer
from ..ros_support.params import NODE_PARAMS, validate
from ..ros_support.pipeline import CaptionPipeline, PipelineConfig
from ..ros_support.startup import StartupError, inference_threads, inference_workers, load_captioner, warm_up
from ..ros_support.stats import NodeStats, rss_mb
from ..tasks import ATTRIBUTES
from .service import CaptionService
from .common import BatchParameterService, ProblemLog, bounded, captions_message, declaration, fill_image, qos_profile, stamp_ns

NODE_NAME = "finecaption_node"
SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE


def _topic(camera: str, name: str) -> str:
    return f"{camera}/{name}" if camera else name


class FineCaptionNode(LifecycleNode):
    def __init__(self, captioner=None, node_name: str = NODE_NAME, **kwargs):
        super().__init__(node_name, start_parameter_services=False, **kwargs)
        self._parameter_service = BatchParameterService(self)
        self._given_captioner, self._known_attributes = captioner, tuple(ATTRIBUTES)
        self.log = ProblemLog(self.get_logger())
        self._running = self._active = self._annotated_failed = False
        self._startup_error: StartupError | None = None
        self._subs, self._pubs, self._tims = [], [], []  # made in configure, gone in cleanup (rclpy owns _timers)
        self.captioner = self.pipeline = self.workers = self.service = None
        self.pairers: dict[str, StampPairer] = {}

        self.add_on_set_parameters_callback(self._validate_parameters)
        try:
            self.declare_parameters("", [declaration(s) for s in NODE_PARAMS])
        except Exception as err:  # rclpy's InvalidParameterValueException / InvalidParameterTypeException
            raise StartupError(f"invalid parameter: {err}") from err
        self.cameras = tuple(self.get_parameter("cameras").value or ()) or ("",)
        self.stats = NodeStats([c for c in self.cameras if c])
        self.add_post_set_parameters_callback(self._apply_parameters)
        if not self.get_parameter("lifecycle").value:  # unmanaged: straight to active, or a start-up error
            if self.trigger_configure() != SUCCESS:
                raise self._startup_error or StartupError("configure failed")
            self.trigger_activate()

    # ----------------------------------------------------------------------------------------------- lifecycle
    def on_configure(self, state) -> TransitionCallbackReturn:
        try:
            self._configure()
        except StartupError as err:
            self._startup_error = err
            self._close()
            if self.get_parameter("lifecycle").value:  # a manager may fix a parameter and configure again
                self.log.error("configure", f"configure failed: {err}")
            return FAILURE
        return SUCCESS

    def on_activate(self, state) -> TransitionCallbackReturn:
        self._active = True
        return super().on_activate(state)

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        self._active = False
        for frame in self.slot.clear():
            self.stats.count("frames_inactive", camera=frame.camera)
        return super().on_deactivate(state)

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self._close()
        return SUCCESS

    on_shutdown = on_cleanup

    def _configure(self) -> None:
        p = self.param_values()
        self.n_workers = inference_workers(p["inference_workers"], len(self.cameras), p["backend"])
        self.captioner = self._given_captioner or load_captioner(
            p["model_path"], p["backend"], p["engine_dir"], inference_threads(p["num_threads"], self.n_workers),
            child_process=p["inference_process"], workers=self.n_workers, precision=p["engine_precision"],
            on_mismatch=p["engine_on_mismatch"], grounded_relations=p["grounded_relations"])
        self.model_id = str(getattr(self.captioner, "model_id", "unknown"))
        self.backend = str(getattr(self.captioner, "backend", p["backend"]))
        self._known_attributes = tuple(getattr(self.captioner, "supported_attributes", ATTRIBUTES))
        reason = validate({"attributes": p["attributes"]}, p, self._known_attributes)
        if reason:
            raise StartupError(f"invalid parameter: {reason}")
        self.pipeline = CaptionPipeline(self.captioner, PipelineConfig.from_params(p), self.n_workers)
        self.get_logger().debug(f"warm-up took {warm_up(self.captioner):.2f} s")
        self.pairers = {c: StampPairer(int(p["sync_slop"] * 1e9), int(p["sync_timeout"] * 1e9),
                                       p["sync_queue_size"]) for c in self.cameras}
        self.slot = LatestSlot(max_requests=1)  # the service executor hands over one request at a time

        qos = qos_profile(p["qos"], p["qos_depth"])
        self.captions_pubs, self.annotated_pubs = {}, {}
        for camera in self.cameras:
            for name, kind in (("image", IMAGE), ("mask", MASK)):
                topic = _topic(camera, name)
                events = SubscriptionEventCallbacks(
                    message_lost=lambda info, topic=topic: self._on_lost(topic, info),
                    incompatible_qos=lambda info, topic=topic: self._on_incompatible(topic, info))
                self._subs.append(self.create_subscription(
                    Image, topic, lambda msg, kind=kind, camera=camera: self._on_input(camera, kind, msg), qos,
                    event_callbacks=events))
            self.captions_pubs[camera] = self.create_publisher(RegionCaptionArray, _topic(camera, "region_captions"),
                                                               50)
            self.annotated_pubs[camera] = self.create_publisher(Image, _topic(f"~/{camera}".rstrip("/"),
                                                                              "annotated_image"), 2)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._pubs += [*self.captions_pubs.values(), *self.annotated_pubs.values(), self.diagnostics_pub]
        self._tims += [self.create_timer(p["diagnostics_period"], self._publish_diagnostics),
                         self.create_timer(0.1, self._expire)]
        self._running = True
        self.workers = InferenceWorkers(self.slot, self.n_workers, self._caption_frames, self._answer,
                                        self._worker_failed)
        # Created last: once the service is there, the node is ready.
        self.service = CaptionService(self, p["service_queue_depth"], self._hand_over, self.log)
        inputs = ", ".join(" + ".join(self.resolve_topic_name(_topic(c, n)) for n in ("image", "mask")) +
                           f" -> {self.resolve_topic_name(_topic(c, 'region_captions'))}" for c in self.cameras)
        self.get_logger().info(f"ready: model {self.model_id} ({self.backend}), task {p['task']}; {inputs} "
                               f"(QoS {p['qos']})")

    def _close(self) -> None:
        """Stop the worker and the service thread, destroy what configure made and release the model."""
        self.stop()
        for destroy, entities in ((self.destroy_subscription, self._subs), (self.destroy_timer, self._tims),
                                  (self.destroy_publisher, self._pubs)):
            for entity in entities:
                destroy(entity)
            entities.clear()
        if self.captioner is not self._given_captioner:
            getattr(self.captioner, "close", lambda: None)()  # the child process
        self.captioner = self.pipeline = None

    # ----------------------------------------------------------------------------------------------- parameters
    def param_values(self) -> dict:
        return {s.name: self.get_parameter(s.name).value for s in NODE_PARAMS if self.has_parameter(s.name)}

    def _validate_parameters(self, params) -> SetParametersResult:
        changes = {p.name: p.value for p in params}
        for name in ("attributes", "cameras"):
            if name in changes and changes[name] is not None:
                changes[name] = list(changes[name])
        reason = validate(changes, self.param_values(), self._known_attributes)
        return SetParametersResult(successful=not reason, reason=reason or "")

    def _apply_parameters(self, params) -> None:
        values = self.param_values()
        if self.pipeline is not None:
            self.pipeline.configure(PipelineConfig.from_params(values))
        for pairer in self.pairers.values():
            pairer.slop_ns = int(values["sync_slop"] * 1e9)
            pairer.timeout_ns = int(values["sync_timeout"] * 1e9)
            pairer.max_pending = int(values["sync_queue_size"])

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
    def _on_input(self, camera: str, kind: str, msg: Image) -> None:
        t0 = time.perf_counter()
        self.stats.count("images_received" if kind == IMAGE else "masks_received", camera=camera)
        self.stats.tick("images" if kind == IMAGE else "masks", camera)
        if not self._active:
            if kind == IMAGE:
                self.stats.count("frames_inactive", camera=camera)
            return
        try:
            (check_image if kind == IMAGE else check_mask)(msg, self.pipeline.config.max_image_pixels)
        except FrameError as err:
            self._reject(err, kind)
            return
        checked_s = time.perf_counter() - t0
        pairer = self.pairers[camera]
        result = pairer.add(kind, stamp_ns(msg.header.stamp), (msg, checked_s), time.monotonic_ns())
        self._count_dropped(camera, result.dropped)
        if result.pair is None:
            return
        (image, image_s), (mask, mask_s) = result.pair
        partner_s = mask_s if kind == IMAGE else image_s  # the executor time its partner's callback took
        if (image.width, image.height) != (mask.width, mask.height):
            self._reject(FrameError("size_mismatch", f"image is {image.width}x{image.height} but mask is "
                                                     f"{mask.width}x{mask.height} (stamp {_stamp_text(image)})"))
            return
        self.stats.count("frames_paired", camera=camera)
        self.stats.tick("paired", camera)
        frame = PairedFrame(camera, image, mask, result.stamp_ns, time.monotonic(),
                            time.perf_counter() - t0 + partner_s)
        if self.slot.put(frame, camera) is not None:
            self.stats.count("frames_dropped", camera=camera)

    def _on_lost(self, topic: str, info) -> None:
        """DDS reports messages that never reached the node (e.g. the subscription queue overflowed)."""
        n, kind = int(info.total_count_change), topic.rsplit("/", 1)[-1]
        self.stats.problem(f"lost_{kind}s", f"{n} {topic} message(s) lost before reaching the node", n)
        self.log.warn(f"lost_{topic}", f"{n} {topic} message(s) lost in DDS before reaching the node (publisher "
                                    f"faster than this subscription, or frames too large for its transport)")

    def _on_incompatible(self, topic: str, info) -> None:
        self.log.error(f"qos_{topic}", f"a publisher on {self.resolve_topic_name(topic)} has a QoS incompatible "
                                    f"with this subscription ({self.get_parameter('qos').value}); "
                                    "set the qos parameter to match it")

    def _expire(self) -> None:
        for camera, pairer in self.pairers.items():
            self._count_dropped(camera, pairer.expire(time.monotonic_ns()))

    def _count_dropped(self, camera: str, dropped) -> None:
        for item in dropped:
            counter = "unmatched_images" if item.kind == IMAGE else "unmatched_masks"
            line = item.describe(self.pairers[camera])
            self.stats.problem(counter, f"{camera}: {line}" if camera else line)
            self.log.warn(f"{counter}_{item.why}_{camera}", f"{camera}: {line}" if camera else line)

    # ----------------------------------------------------------------------------------------------- worker
    def _worker_failed(self, err: Exception) -> None:
        self._reject(FrameError("captioner_error", f"captioning failed: {type(err).__name__}: {err}"))
        self.log.debug(traceback.format_exc())

    def _caption_frames(self, frames: list[PairedFrame]) -> InFlight | None:
        """The latest frame of every camera that has one, in one batch, handed to the captioner; frames over the
        latency budget dropped. The workers wait for the answer and publish it (`_publish_captions`)."""
        budget, now = self.get_parameter("latency_budget").value, time.monotonic()
        stale = [f for f in frames if budget and now - f.received > budget]
        for frame in stale:
            self.stats.count("frames_stale", camera=frame.camera)
            self.log.warn(f"stale_{frame.camera}", f"{frame.camera or 'frame'} stamped {_stamp_text(frame.image)} "
                          f"waited {now - frame.received:.3f} s, more than latency_budget = {budget:g} s; dropped")
        frames = [f for f in frames if f not in stale]
        if not frames:
            return None
        batch = self.pipeline.begin_messages([(f.image, f.mask) for f in frames], sources=[f.camera for f in frames])
        return InFlight(lambda: self.pipeline.wait(batch),
                        lambda: self._publish_captions(frames, self.pipeline.finish(batch)))

    def _publish_captions(self, frames: list[PairedFrame], results) -> None:
        for frame, result in zip(frames, results):
            if isinstance(result, FrameError):
                self._reject(result)
                continue
            for counter, line, n in result.problems:
                self.stats.problem(counter, line, n)
                self.log.warn(counter, line)
            if not self.slot.claim(frame):  # a later frame's captions went out first
                self.stats.count("frames_dropped", camera=frame.camera)
                continue
            t_publish = time.perf_counter()
            msg = captions_message(result, frame.image.header, self.model_id, self.backend)
            msg.processing_latency = time.monotonic() - frame.received
            self._publish(self.captions_pubs[frame.camera], msg)
            publish_s = time.perf_counter() - t_publish
            if self.get_parameter("publish_annotated").value:
                self._publish_annotated(result, frame)
            self.stats.captioned(frame.camera, msg.processing_latency * 1e3, result.inference_s * 1e3,
                                 (frame.pairing_s + result.decode_s + result.select_s + publish_s) * 1e3,
                                 result.computed, result.reused)

    def _publish_annotated(self, result, frame: PairedFrame) -> None:
        try:
            drawn = annotate(result.image, result.labels, result.captions)
            out = fill_image(Image(), encode(drawn, "rgb8"))
            out.header = frame.image.header
        except Exception as err:
            if not self._annotated_failed:
                self.log.error("annotate", f"cannot draw the annotated image: {err}")
                self._annotated_failed = True
            return
        self._publish(self.annotated_pubs[frame.camera], out)

    # ----------------------------------------------------------------------------------------------- service
    def _hand_over(self, job: ServiceJob) -> str | None:
        """On the service thread: queue a request for the worker; the refusal to answer instead, or None."""
        if not self._active:
            return "finecaption_node is inactive"
        return None if self.slot.put_request(job) else "finecaption_node is shutting down"

    def _answer(self, job: ServiceJob) -> None:
        """On the worker: caption a service request (never with caption reuse) and wake its caller."""
        request, response = job.request, job.response
        try:
            result = self.pipeline.process_messages(request.image, request.mask, task=request.task or None,
                                                    attributes=list(request.attributes) or None, use_reuse=False)
            response.success = True
            response.result = captions_message(result, request.image.header, self.model_id, self.backend)
            response.result.processing_latency = time.monotonic() - job.received
            self.stats.count("service_calls")
            with self.stats.lock:
                self.stats.service_ms.add(response.result.processing_latency * 1e3)
        except FrameError as err:
            response.success, response.message = False, bounded(str(err))
            self.stats.problem("service_errors", f"caption_regions refused: {response.message}")
            self.log.warn("service_refused", f"caption_regions request refused ({err.reason}): {err}")
        except Exception as err:  # never let the worker die
            response.success = False
            response.message = bounded(f"captioning failed: {type(err).__name__}: {err}")
            self.stats.problem("service_errors", response.message)
            self.log.error("service_failed", response.message)
        finally:
            job.done.set()

    # ----------------------------------------------------------------------------------------------- diagnostics
    def _publish_diagnostics(self) -> None:
        snap, p = self.stats.snapshot(), self.param_values()
        values = {"model_id": self.model_id, "backend": self.backend, "task": p["task"],
                  "inference_workers": self.n_workers, "active": self._active,
                  "inference_threads": inference_threads(p["num_threads"], self.n_workers),
                  **self.stats.diagnostic_values(snap), "service_queue_depth": p["service_queue_depth"],
                  "frame_waiting": self.slot.waiting,
                  "pending_images": sum(q.pending(IMAGE) for q in self.pairers.values()),
                  "pending_masks": sum(q.pending(MASK) for q in self.pairers.values()),
                  "reuse_entries": len(self.pipeline.reuse),
                  "rss_mb": f"{rss_mb() + getattr(self.captioner, 'rss_mb', float)():.1f}"}  # with its child's
        warn, message = NodeStats.summary(snap, self._active)
        status = DiagnosticStatus(name=f"{self.get_fully_qualified_name().lstrip('/')}: region captioning",
                                  hardware_id=self.model_id, message=message,
                                  level=DiagnosticStatus.WARN if warn else DiagnosticStatus.OK)
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._publish(self.diagnostics_pub, array)

    def stop(self) -> None:
        """Stop the worker and the service thread (before the ROS context goes down: they publish and answer)."""
        self._running = self._active = False
        if self.workers is None:
            return
        for job in self.slot.close():
            job.done.set()  # its caller answers "shutting down"
        self.workers.join(timeout=10.0)
        self.service.stop()
        self.workers = self.service = None

    def destroy_node(self) -> None:
        self._close()
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
