"""finecaption_source: publishes frames on `image` and instance masks on `mask` with identical header stamps.

`source:=synthetic` (default) is the demo camera: procedural scenes from the scene generator, with their instance
masks and (on `~/ground_truth`, as RegionCaptionArray) their true dense captions. A video file, an image folder
(with an optional `mask_dir` of label images) or a camera device publish images for real use; they publish masks
only when masks are known (a segmenter normally provides them).

`finecaption_source --bag PATH [--rate R]` replays a rosbag2 (sqlite3 or MCAP, read with rosbags) instead: every
topic (or `--topics A,B`) under its recorded name, each message exactly as recorded (so with its original header
stamps), at the recorded pace times R, once - what `ros2 bag play PATH --rate R` does on a full ROS 2 install.
"""
from __future__ import annotations

import argparse
import importlib
import itertools
import sys
import time

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from sensor_msgs.msg import Image, RegionOfInterest

from finecaption_ros.msg import RegionCaption, RegionCaptionArray

from ..ros_support.bags import BagError, bag_topics, read_messages
from ..ros_support.dds import use_large_frame_transport
from ..ros_support.image_codec import encode
from ..ros_support.params import SOURCE_PARAMS, validate_source
from ..ros_support.sources import SourceError, open_source
from .common import descriptor, fill_image, qos_profile

NODE_NAME = "finecaption_source"


class SourceNode(Node):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        self.add_on_set_parameters_callback(self._validate)
        self.declare_parameters("", [(s.name, s.default, descriptor(s)) for s in SOURCE_PARAMS])
        p = {s.name: self.get_parameter(s.name).value for s in SOURCE_PARAMS}
        self.p = p
        self.published = 0
        self.done = False
        self.bag = None
        if p["bag"]:
            self._open_bag(p)
            return
        scenes = None
        if p["source"] == "synthetic":  # the demo camera draws the scenes the default model was trained on
            from ..data.scenes import SceneGenerator

            scenes = SceneGenerator(height=p["height"], width=p["width"], seed=p["seed"], split=p["split"])
        frames = open_source(p["source"], p["scale"], p["mask_dir"], p["loop"], scenes=scenes)
        first = next(frames, None)  # open the source now: a missing file or OpenCV fails at start-up
        if first is None:
            raise SourceError(f"source {p['source']!r} has no frames")
        self.frames = itertools.chain([first], frames)
        qos = qos_profile(p["qos"], 5)
        self.image_pub = self.create_publisher(Image, "image", qos)
        self.mask_pub = self.create_publisher(Image, "mask", qos)
        self.truth_pub = self.create_publisher(RegionCaptionArray, "~/ground_truth", 10)
        self.timer = self.create_timer(1.0 / p["rate"], self._tick)
        self.get_logger().info(f"publishing {p['source']} frames at {p['rate']:g} Hz on "
                               f"{self.resolve_topic_name('image')} + {self.resolve_topic_name('mask')}")

    # --------------------------------------------------------------------------------------------- bag replay
    def _open_bag(self, p) -> None:
        types = bag_topics(p["bag"])  # a missing or corrupt bag fails here, at start-up
        topics = [t.strip() for t in p["bag_topics"].split(",") if t.strip()] or sorted(types)
        unknown = [t for t in topics if t not in types]
        if unknown:
            raise BagError(f"bag {p['bag']} has no topic(s) {', '.join(unknown)}; its topics: "
                           f"{', '.join(sorted(types))}")
        qos = qos_profile(p["qos"], 10)
        self.bag_pubs = {t: self.create_publisher(_message_class(t, types[t]), t, qos) for t in topics}
        self.bag = read_messages(p["bag"], topics)
        self.next_msg = next(self.bag, None)
        self.first_log_ns = self.next_msg.log_time_ns if self.next_msg else 0
        self.opened = time.monotonic()
        self.started = None
        self.get_logger().info(f"replaying {p['bag']} at {p['bag_rate']:g}x: {', '.join(topics)}")

    def replay(self) -> float:
        """Publish every bag message that is due; return the seconds until the next one."""
        if self.next_msg is None:
            self._finish_bag()
            return 0.0
        if self.started is None:
            wait = self.p["bag_wait_subscribers"]
            missing = [t for t, pub in self.bag_pubs.items() if pub.get_subscription_count() == 0]
            if missing and time.monotonic() - self.opened < wait:
                return 0.05
            if missing and wait:
                self.get_logger().warning(f"no subscriber on {', '.join(missing)} after {wait:g} s; replaying anyway")
            self.started = time.monotonic()
        rate = self.p["bag_rate"]
        while self.next_msg is not None:
            due = self.started + (self.next_msg.log_time_ns - self.first_log_ns) / 1e9 / rate
            now = time.monotonic()
            if due > now:
                return due - now
            self.bag_pubs[self.next_msg.topic].publish(self.next_msg.raw)
            self.published += 1
            self.next_msg = next(self.bag, None)
        self._finish_bag()
        return 0.0

    def _finish_bag(self) -> None:
        if not self.done:
            took = time.monotonic() - (self.started or self.opened)
            self.get_logger().info(f"bag replay finished: {self.published} messages in {took:.2f} s")
            self.done = True
            self.bag.close()

    def _validate(self, params):
        from rcl_interfaces.msg import SetParametersResult

        for param in params:
            reason = validate_source(param.name, param.value)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _tick(self) -> None:
        if self.done:
            return
        limit = self.p["max_frames"]
        try:
            frame = next(self.frames)
        except StopIteration:
            frame = None
        if frame is None or (limit and self.published >= limit):
            self.get_logger().info(f"source finished after {self.published} frames")
            self.done = True
            return
        stamp = self.get_clock().now().to_msg()
        image = fill_image(Image(), encode(frame.image, self.p["encoding"]))
        image.header.stamp = stamp
        image.header.frame_id = self.p["frame_id"]
        self.image_pub.publish(image)
        if frame.labels is not None:
            mask = fill_image(Image(), encode(frame.labels, self.p["mask_encoding"]))
            mask.header = image.header
            self.mask_pub.publish(mask)
        if frame.truth and self.p["publish_ground_truth"]:
            truth = RegionCaptionArray()
            truth.header = image.header
            truth.model_id = "ground_truth"
            for region_id, caption in frame.truth:
                truth.captions.append(RegionCaption(region_id=region_id, task="dense", caption=caption,
                                                    confidence=1.0, bbox=RegionOfInterest(),
                                                    mask_area=int((frame.labels == region_id).sum())))
            self.truth_pub.publish(truth)
        self.published += 1


def _message_class(topic: str, msgtype: str):
    """'pkg/msg/Name' -> the rclpy message class, for publishing a bag's recorded bytes."""
    package, _, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{package}.msg"), name)
    except (ImportError, AttributeError) as err:
        raise BagError(f"cannot replay {topic}: its type {msgtype} is not installed here; leave the topic out "
                       "with --topics") from err


def _parse_args(argv: list[str]) -> tuple[list[str], list]:
    """`--bag PATH [--rate R] [--topics A,B] [--wait-for-subscribers S]` -> parameter overrides; ROS args pass."""
    from rclpy.parameter import Parameter
    from rclpy.utilities import remove_ros_args

    parser = argparse.ArgumentParser(prog=NODE_NAME, description="Demo camera, image folder, video, camera or "
                                     "bag replay; other settings are ROS parameters (--ros-args -p name:=value)")
    parser.add_argument("--bag", help="replay this rosbag2 (folder, .db3 or .mcap)")
    parser.add_argument("--rate", type=float, help="--bag: speed factor (1 = as recorded)")
    parser.add_argument("--topics", help="--bag: comma-separated topics to publish (default: all)")
    parser.add_argument("--wait-for-subscribers", type=float, metavar="SECONDS",
                        help="--bag: wait up to SECONDS for a subscriber on every topic before starting")
    own = parser.parse_args(remove_ros_args(argv)[1:])
    if not own.bag and (own.rate is not None or own.topics or own.wait_for_subscribers is not None):
        parser.error("--rate, --topics and --wait-for-subscribers go with --bag (other sources: -p rate:=HZ)")
    overrides = []
    for name, value in (("bag", own.bag), ("bag_rate", own.rate), ("bag_topics", own.topics),
                        ("bag_wait_subscribers", own.wait_for_subscribers)):
        if value is not None:
            overrides.append(Parameter(name, value=value))
    return argv, overrides


def main(args=None) -> int:
    argv = list(args if args is not None else sys.argv)
    argv, overrides = _parse_args(argv)
    use_large_frame_transport()  # this process publishes the frames: the side that needs the profile most
    rclpy.init(args=argv)
    try:
        node = SourceNode(parameter_overrides=overrides)
    except (SourceError, BagError, ValueError) as err:
        rclpy.logging.get_logger(NODE_NAME).fatal(str(err))
        rclpy.try_shutdown()
        return 2
    except Exception as err:  # rclpy parameter exceptions
        rclpy.logging.get_logger(NODE_NAME).fatal(f"cannot start: {err}")
        rclpy.try_shutdown()
        return 2
    try:
        while rclpy.ok() and not node.done:
            rclpy.spin_once(node, timeout_sec=min(node.replay(), 0.1) if node.bag is not None else 0.1)
        # Let the last messages leave before exiting.
        for _ in range(5):
            rclpy.spin_once(node, timeout_sec=0.05)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
