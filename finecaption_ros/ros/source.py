"""finecaption_source: publishes frames on `image` and instance masks on `mask` with identical header stamps.

`source:=synthetic` (default) is the demo camera: procedural scenes from the scene generator, with their instance
masks and (on `~/ground_truth`, as RegionCaptionArray) their true dense captions. A video file, an image folder
(with an optional `mask_dir` of label images) or a camera device publish images for real use; they publish masks
only when masks are known (a segmenter normally provides them).
"""
from __future__ import annotations

import itertools
import sys

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from sensor_msgs.msg import Image, RegionOfInterest

from finecaption_ros.msg import RegionCaption, RegionCaptionArray

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
        frames = open_source(p["source"], p["width"], p["height"], p["seed"], p["scale"], p["split"],
                             p["mask_dir"], p["loop"])
        first = next(frames, None)  # open the source now: a missing file or OpenCV fails at start-up
        if first is None:
            raise SourceError(f"source {p['source']!r} has no frames")
        self.frames = itertools.chain([first], frames)
        qos = qos_profile(p["qos"], 5)
        self.image_pub = self.create_publisher(Image, "image", qos)
        self.mask_pub = self.create_publisher(Image, "mask", qos)
        self.truth_pub = self.create_publisher(RegionCaptionArray, "~/ground_truth", 10)
        self.published = 0
        self.done = False
        self.timer = self.create_timer(1.0 / p["rate"], self._tick)
        self.get_logger().info(f"publishing {p['source']} frames at {p['rate']:g} Hz on "
                               f"{self.resolve_topic_name('image')} + {self.resolve_topic_name('mask')}")

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


def main(args=None) -> int:
    rclpy.init(args=args if args is not None else sys.argv)
    try:
        node = SourceNode()
    except (SourceError, ValueError) as err:
        rclpy.logging.get_logger(NODE_NAME).fatal(str(err))
        rclpy.try_shutdown()
        return 2
    except Exception as err:  # rclpy parameter exceptions
        rclpy.logging.get_logger(NODE_NAME).fatal(f"cannot start: {err}")
        rclpy.try_shutdown()
        return 2
    try:
        while rclpy.ok() and not node.done:
            rclpy.spin_once(node, timeout_sec=0.1)
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
