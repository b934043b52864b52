"""caption_listener: prints the captions on `region_captions` (and, from the demo camera, the true captions next to
them); optionally saves annotated frames. Stops by itself after `count` caption messages or `timeout` seconds.

Exit status: 0 when at least one caption message arrived, 1 otherwise.
"""
from __future__ import annotations

import os
import sys
import time

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from sensor_msgs.msg import Image

from finecaption_ros.msg import RegionCaptionArray

from ..ros_support.image_codec import decode_image
from ..ros_support.params import LISTENER_PARAMS
from .common import descriptor, stamp_ns

NODE_NAME = "caption_listener"


class CaptionListener(Node):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        self.declare_parameters("", [(s.name, s.default, descriptor(s)) for s in LISTENER_PARAMS])
        p = {s.name: self.get_parameter(s.name).value for s in LISTENER_PARAMS}
        self.count, self.timeout, self.save_dir = p["count"], p["timeout"], p["save_dir"]
        self.save_count, self.show_truth = p["save_count"], p["ground_truth"]
        self.received = 0
        self.saved = 0
        self.truth: dict[int, RegionCaptionArray] = {}
        self.started = time.monotonic()
        self.create_subscription(RegionCaptionArray, "region_captions", self._on_captions, 10)
        if self.show_truth:
            self.create_subscription(RegionCaptionArray, "ground_truth", self._on_truth, 10)
        if self.save_dir:
            os.makedirs(self.save_dir, exist_ok=True)
            self.create_subscription(Image, "annotated_image", self._on_annotated, 2)

    @property
    def finished(self) -> bool:
        if self.timeout and time.monotonic() - self.started > self.timeout:
            return True
        if not self.count or self.received < self.count:
            return False
        return not self.save_dir or self.saved >= min(self.save_count, self.count)

    def _on_truth(self, msg: RegionCaptionArray) -> None:
        self.truth[stamp_ns(msg.header.stamp)] = msg
        while len(self.truth) > 100:
            self.truth.pop(next(iter(self.truth)))

    def _on_captions(self, msg: RegionCaptionArray) -> None:
        if self.count and self.received >= self.count:
            return
        self.received += 1
        stamp = stamp_ns(msg.header.stamp)
        truth = {c.region_id: c.caption for c in self.truth[stamp].captions} if stamp in self.truth else {}
        lines = [f"[{stamp / 1e9:.3f}] {len(msg.captions)} caption(s), {msg.processing_latency * 1e3:.0f} ms "
                 f"({msg.model_id}, {msg.backend})"]
        for c in msg.captions:
            what = f"{c.attribute}: " if c.attribute else ""
            mark = " [reused]" if c.reused else ""
            line = f"  #{c.region_id:<3d} {what}{c.caption}  (conf {c.confidence:.2f}){mark}"
            if c.region_id in truth:
                line += f"   | truth: {truth[c.region_id]}"
            lines.append(line)
        print("\n".join(lines), flush=True)

    def _on_annotated(self, msg: Image) -> None:
        if self.saved >= self.save_count:
            return
        from PIL import Image as PILImage

        path = os.path.join(self.save_dir, f"annotated_{self.saved:03d}.png")
        PILImage.fromarray(decode_image(msg)).save(path)
        self.saved += 1
        print(f"saved {path}", flush=True)


def main(args=None) -> int:
    rclpy.init(args=args if args is not None else sys.argv)
    node = CaptionListener()
    try:
        while rclpy.ok() and not node.finished:
            rclpy.spin_once(node, timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        received = node.received
        node.destroy_node()
        rclpy.try_shutdown()
    if not received:
        print("caption_listener: no captions arrived on region_captions", file=sys.stderr)
    return 0 if received else 1


if __name__ == "__main__":
    sys.exit(main())
