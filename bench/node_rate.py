"""Benchmark (not a test): the node process against the same captioner in a plain process, side by side in one run.

    .venv/bin/python bench/node_rate.py [--seconds 8] [--rates 30,60] [--regions 1,8] [--sizes 256x256,640x480]
                                        [--threads 0] [--qos sensor_data] [--model PATH]

For each frame size and region count: the captioner's frames/s and median ms on that frame in its own process with
no ROS (tests/ros/inprocess_rate.py, with the node's inference thread count), then the node (its own process, the
given QoS, real DDS on loopback) fed that frame at each rate by a best-effort publisher, as a camera driver publishes,
then the plain process again: each node case is compared with the mean of the plain runs on either side of it.
Printed: captioned frames/s in the node and its ratio to in process (target >= 0.9x), the node's median inference
ms and its ratio to in process (target <= 1.15x), end-to-end latency p50/p95 (publish -> caption received), and the
node's counts: images published / received / lost in DDS, frames paired / captioned / dropped (latest-frame policy).
Caption reuse is off: every frame goes through the model. `--threads 1,2` runs the node once per thread count,
`--inference-process true,false` once per mode (the captioner in a child process, or in the node's own).
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

from finecaption_ros.ros_support.dds import use_large_frame_transport  # noqa: E402

use_large_frame_transport()  # this process publishes the frames, as a camera driver would

import rclpy  # noqa: E402
from inprocess_rate import frames_per_second  # noqa: E402
from node_frames import frame_with_regions  # noqa: E402
from rosharness import Client, NodeProcess, node_command  # noqa: E402

COUNTS = ("images_received", "lost_images", "frames_paired", "frames_captioned", "frames_dropped")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run_node_case(client: Client, image, labels, rate: float, seconds: float) -> dict:
    image_msg, mask_msg = client.make_image(image, 0), client.make_mask(labels, 0)

    def publish(stamp: float) -> None:
        image_msg.header.stamp = mask_msg.header.stamp = client.stamp(stamp)
        client.image_pub.publish(image_msg)
        client.mask_pub.publish(mask_msg)

    deadline = time.monotonic() + 120
    while not client.all_captions():  # warm up (best effort: publish until one frame gets through)
        publish(time.time())
        time.sleep(0.5)
        assert time.monotonic() < deadline, "the node never captioned a frame"
    time.sleep(1.0)
    client.clear()
    start = client.latest_diagnostics()
    t0 = time.monotonic()
    published = 0
    while time.monotonic() - t0 < seconds:
        publish(time.time())  # the stamp is the publish time: arrival - stamp is the end-to-end latency
        published += 1
        time.sleep(max(0.0, t0 + published / rate - time.monotonic()))
    t_end = time.monotonic()
    time.sleep(2.0)  # the last frame's caption, and one diagnostics period
    values = client.latest_diagnostics()
    with client.lock:
        arrivals = list(client.captions)
    wall_offset = time.time() - time.monotonic()
    in_window = [(t, m) for t, m in arrivals if t <= t_end]
    latency = [(t + wall_offset - (m.header.stamp.sec + m.header.stamp.nanosec * 1e-9)) * 1e3 for t, m in arrivals]
    counts = {k: int(values[k]) - int(start[k]) for k in COUNTS}
    return {"fps": len(in_window) / (t_end - t0), "published": published, **counts,
            "inference_ms": statistics.median(m.inference_time * 1e3 for _, m in arrivals) if arrivals else 0.0,
            "inference_mean_ms": statistics.fmean(m.inference_time * 1e3 for _, m in arrivals) if arrivals else 0.0,
            # the share of the window the worker spent inside the captioner (1.0: never idle, never elsewhere)
            "busy": sum(m.inference_time for _, m in in_window) / (t_end - t0),
            "p50": percentile(latency, 0.5), "p95": percentile(latency, 0.95)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="publishing time per case")
    parser.add_argument("--rates", default="30,60", help="published frames per second, comma-separated")
    parser.add_argument("--regions", default="1,8", help="regions per frame, comma-separated")
    parser.add_argument("--sizes", default="256x256,640x480", help="frame sizes WxH, comma-separated")
    parser.add_argument("--threads", default="0", help="the node's num_threads values (0 = its default)")
    parser.add_argument("--inference-process", default="true",
                        help="the node's inference_process values, comma-separated (true,false: both, in turn)")
    parser.add_argument("--qos", default="sensor_data", help="the node's qos parameter")
    parser.add_argument("--rounds", type=int, default=30, help="in-process captions per frame")
    parser.add_argument("--model", default="", help="model folder (default: the embedded default model)")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    regions = [int(r) for r in args.regions.split(",")]
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]

    rclpy.init()
    rows = []
    try:
        for threads, in_child in ((int(t), m == "true") for t in args.threads.split(",")
                                  for m in args.inference_process.split(",")):
            name = f"bench_rate_node_{threads}_{'child' if in_child else 'own'}"
            params = {"qos": args.qos, "caption_reuse": False, "diagnostics_period": 0.5, "num_threads": threads,
                      "max_image_pixels": 1 << 24, "inference_process": in_child}
            if args.model:
                params["model_path"] = args.model
            log = Path(os.environ.get("TMPDIR", "/tmp")) / f"finecaption_{name}_{os.getpid()}.log"
            proc = NodeProcess(node_command(params, name=name), log)
            client = Client(name, name=f"{name}_client", reliable=False)
            try:
                client.wait_for_node(proc)
                node_threads = int(client.latest_diagnostics()["inference_threads"])
                for size in sizes:
                    for count in regions:
                        image, labels = frame_with_regions(count, size=size)

                        def in_process() -> dict:
                            return frames_per_second(frames="bench", size=size, regions=count, rounds=args.rounds,
                                                     threads=node_threads, model=args.model)

                        before = in_process()
                        for rate in rates:
                            r = run_node_case(client, image, labels, rate, args.seconds)
                            # The baseline again right after: this shared machine's speed drifts by 30-50 %
                            # between minutes, so each node case is compared with the mean of the runs around it.
                            after = in_process()
                            base = {k: (before[k] + after[k]) / 2 for k in ("fps", "ms")}
                            base["drift"] = after["ms"] / before["ms"]
                            rows.append(("child" if in_child else "own", node_threads, size, count, rate, base, r))
                            print_row(*rows[-1], header=len(rows) == 1)
                            before = after
            finally:
                client.close()
                code = proc.stop()
                if code not in (0, -2):
                    print(f"node exited with {code}; log {log}")
    finally:
        rclpy.try_shutdown()
    print("\nnode/in = captioned frames/s in the node / in process (target >= 0.9x); inference node/in = median "
          "inference ms in the node / in process (target <= 1.15x); in process = the mean of runs just before and just "
          "after the node case; drift = after / before in-process ms (how much the machine's speed moved meanwhile); "
          "latency = publish -> caption received; mean ms = the node's mean inference ms (tails included); busy = "
          "the share of the window its worker spent in the captioner; proc = where the node captions (child: "
          "inference_process true, own: false)")
    return 0


def print_row(where, threads, size, count, rate, base, r, header=False) -> None:
    if header:
        print(f"{'proc':>5} {'thr':>3} {'frame':>8} {'reg':>3} {'Hz':>3} | {'in fps':>6} {'node':>6} {'ratio':>5} | "
              f"{'in ms':>6} {'node ms':>7} {'ratio':>5} | {'p50 ms':>6} {'p95 ms':>6} | {'pub':>4} {'recv':>4} "
              f"{'lost':>4} {'pair':>4} {'capt':>4} {'drop':>4} | {'drift':>5} | {'mean ms':>7} {'busy':>4}")
    print(f"{where:>5} {threads:>3} {size[0]:>4}x{size[1]:<3} {count:>3} {rate:>3.0f} | {base['fps']:>6.1f} {r['fps']:>6.1f} "
          f"{r['fps'] / base['fps']:>4.2f}x | {base['ms']:>6.1f} {r['inference_ms']:>7.1f} "
          f"{r['inference_ms'] / base['ms']:>4.2f}x | {r['p50']:>6.0f} {r['p95']:>6.0f} | {r['published']:>4} "
          f"{r['images_received']:>4} {r['lost_images']:>4} {r['frames_paired']:>4} {r['frames_captioned']:>4} "
          f"{r['frames_dropped']:>4} | {base['drift']:>4.2f}x | {r['inference_mean_ms']:>7.1f} {r['busy']:>4.2f}",
          flush=True)


if __name__ == "__main__":
    sys.exit(main())
