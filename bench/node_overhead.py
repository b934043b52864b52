"""Benchmark (not a test): the ROS node's own overhead against the frame time, and end-to-end frames/s.

    .venv/bin/python bench/node_overhead.py [--seconds 8] [--rate 30] [--model PATH] [--reuse]

Two parts, each for frames with 1, 4 and 8 regions (256x256 demo-camera scenes):

1. In process, per stage, with real rclpy messages: deserialising the image + mask messages (what rclpy does
   before a callback), header checks + stamp pairing, image/mask conversion to numpy, region selection, building
   and serialising the RegionCaptionArray (what publish costs), against one captioner call on the same frame.
2. The node as a user runs it (its own process, real DDS on loopback): frames published at --rate Hz; end-to-end
   captioned frames/s, and the overhead and inference times the node itself measures (from /diagnostics).

Overhead share = node overhead per frame / frame time (1 / captioned frames per second). Target: <= 5 %.
Caption reuse is off unless --reuse (with it, unchanged regions skip the model and frames/s rises).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_DOMAIN_ID"] = os.environ.get("FINECAPTION_BENCH_DOMAIN_ID") or str(1 + os.getpid() % 230)

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "ros"), str(ROOT / "bench")]

import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from sensor_msgs.msg import Image, RegionOfInterest  # noqa: E402

from finecaption_ros.msg import RegionCaption, RegionCaptionArray  # noqa: E402
from finecaption_ros.ros.common import fill_image  # noqa: E402
from finecaption_ros.ros_support.image_codec import check_image, check_mask, encode  # noqa: E402
from finecaption_ros.ros_support.pairing import IMAGE, MASK, StampPairer  # noqa: E402
from finecaption_ros.ros_support.pipeline import CaptionPipeline, PipelineConfig  # noqa: E402
from node_frames import frame_with_regions  # noqa: E402

REGION_COUNTS = (1, 4, 8)


def timed(fn, repeat: int) -> float:
    """Median seconds of fn() over `repeat` runs."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def stage_costs(captioner, count: int, repeat: int) -> dict[str, float]:
    image, labels = frame_with_regions(count)
    image_msg = fill_image(Image(), encode(image, "rgb8"))
    mask_msg = fill_image(Image(), encode(labels, "mono8"))
    raw_image, raw_mask = serialize_message(image_msg), serialize_message(mask_msg)
    pipe = CaptionPipeline(captioner, PipelineConfig(caption_reuse=False))
    result = pipe.process_messages(image_msg, mask_msg)

    def receive():
        deserialize_message(raw_image, Image)
        deserialize_message(raw_mask, Image)

    def pair():
        pairer = StampPairer()
        check_image(image_msg)
        pairer.add(IMAGE, 1, image_msg, 0)
        check_mask(mask_msg)
        pairer.add(MASK, 1, mask_msg, 0)

    def convert():
        pipe.decode(image_msg, mask_msg, "dense")

    def select():
        from finecaption_ros.ros_support.regions import select_regions

        sel = select_regions(labels, 16, 16)
        for i in sel.ids:
            _ = labels == i

    def publish():
        msg = RegionCaptionArray()
        msg.header = image_msg.header
        for c in result.captions:
            x, y, w, h = c.bbox
            msg.captions.append(RegionCaption(region_id=c.region_id, task=c.task, caption=c.caption,
                                              confidence=c.confidence, mask_area=c.mask_area,
                                              bbox=RegionOfInterest(x_offset=x, y_offset=y, width=w, height=h)))
        serialize_message(msg)

    def infer():
        captioner.caption(image, labels, task="dense")

    costs = {name: timed(fn, repeat) for name, fn in
             (("receive", receive), ("pair", pair), ("convert", convert), ("select", select),
              ("publish", publish))}
    infer()  # warm up
    costs["inference"] = timed(infer, max(5, repeat // 20))
    return costs


def end_to_end(count: int, seconds: float, rate: float, model: str, reuse: bool) -> dict[str, float]:
    from rosharness import Client, NodeProcess, node_command

    name = f"bench_node_{count}"
    params = {"qos": "reliable", "caption_reuse": reuse, "diagnostics_period": 0.5}
    if model:
        params["model_path"] = model
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"finecaption_bench_{os.getpid()}_{count}.log"
    proc = NodeProcess(node_command(params, name=name), log)
    client = Client(name, name=f"bench_client_{count}")
    try:
        client.wait_for_node(proc)
        image, labels = frame_with_regions(count)
        image_msg, mask_msg = client.make_image(image, 0), client.make_mask(labels, 0)
        for stamp in (1.0, 2.0):  # warm up
            image_msg.header.stamp = mask_msg.header.stamp = client.stamp(stamp)
            client.image_pub.publish(image_msg)
            client.mask_pub.publish(mask_msg)
            client.captions_for(stamp, 120)
        client.clear()
        start_values = client.latest_diagnostics()
        t0 = time.monotonic()
        k = 0
        while time.monotonic() - t0 < seconds:
            k += 1
            image_msg.header.stamp = mask_msg.header.stamp = client.stamp(10.0 + k / 1000)
            client.image_pub.publish(image_msg)
            client.mask_pub.publish(mask_msg)
            time.sleep(max(0.0, t0 + k / rate - time.monotonic()))
        last = client.captions_for(10.0 + k / 1000, 120)
        elapsed = time.monotonic() - t0
        got = client.all_captions()
        values = client.latest_diagnostics()
        captioned = int(values["frames_captioned"]) - int(start_values["frames_captioned"])
        assert last and captioned == len(got)
        return {"fps": len(got) / elapsed, "published": k, "captioned": len(got),
                "overhead_ms": float(values["overhead_mean_ms"]),
                "inference_ms": float(values["inference_mean_ms"]),
                "latency_ms": float(values["latency_mean_ms"])}
    finally:
        client.close()
        proc.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="publishing time per region count")
    parser.add_argument("--rate", type=float, default=30.0, help="published frames per second")
    parser.add_argument("--repeat", type=int, default=200, help="repetitions of each in-process stage")
    parser.add_argument("--model", default="", help="model folder (default: the embedded default model)")
    parser.add_argument("--reuse", action="store_true", help="leave caption reuse on")
    parser.add_argument("--skip-process", action="store_true", help="only the in-process stage costs")
    args = parser.parse_args()

    from finecaption_ros.captioner import Captioner

    captioner = Captioner.from_pretrained(args.model or None)
    print(f"model {captioner.model_id} ({captioner.backend}), torch threads {__import__('torch').get_num_threads()}")
    print("\n1. in process, median per frame (256x256 rgb8 + mono8 mask):")
    print(f"{'regions':>7} {'receive':>8} {'pair':>7} {'convert':>8} {'select':>7} {'publish':>8} "
          f"{'overhead':>9} {'inference':>10} {'share':>6}")
    for count in REGION_COUNTS:
        c = stage_costs(captioner, count, args.repeat)
        overhead = c["receive"] + c["pair"] + c["convert"] + c["select"] + c["publish"]
        share = overhead / (overhead + c["inference"])
        print(f"{count:>7} {c['receive'] * 1e3:>6.2f}ms {c['pair'] * 1e3:>5.2f}ms {c['convert'] * 1e3:>6.2f}ms "
              f"{c['select'] * 1e3:>5.2f}ms {c['publish'] * 1e3:>6.2f}ms {overhead * 1e3:>7.2f}ms "
              f"{c['inference'] * 1e3:>8.1f}ms {share * 100:>5.1f}%")
    del captioner
    if args.skip_process:
        return 0

    rclpy.init()
    try:
        print(f"\n2. the node process, frames published at {args.rate:g} Hz for {args.seconds:g} s "
              f"(caption reuse {'on' if args.reuse else 'off'}):")
        print(f"{'regions':>7} {'frames/s':>9} {'captioned':>10} {'published':>10} {'inference':>10} "
              f"{'overhead':>9} {'latency':>9} {'share':>6}")
        for count in REGION_COUNTS:
            r = end_to_end(count, args.seconds, args.rate, args.model, args.reuse)
            share = r["overhead_ms"] / (1e3 / r["fps"]) if r["fps"] else float("nan")
            print(f"{count:>7} {r['fps']:>9.2f} {r['captioned']:>10d} {r['published']:>10d} "
                  f"{r['inference_ms']:>8.1f}ms {r['overhead_ms']:>7.2f}ms {r['latency_ms']:>7.0f}ms "
                  f"{share * 100:>5.1f}%")
    finally:
        rclpy.try_shutdown()
    print("\nshare = node overhead (receive/pair/convert/select/publish) / frame time; target <= 5 %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
