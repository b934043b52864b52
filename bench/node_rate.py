"""Benchmark (not a test): the node process against the same captioner in a plain process, side by side in one run.

    .venv/bin/python bench/node_rate.py [--seconds 4] [--windows 5] [--rates 30,60] [--regions 1,8]
                                        [--sizes 256x256,640x480] [--threads 0] [--inference-process true]
                                        [--qos sensor_data] [--model PATH]

The plain process is the same captioner (the node's inference thread count) with no ROS in it, kept loaded for the
whole run (ros_support/captioner_process.py, timed by its own clock, so the hand-over is not counted against it).
For each frame size, region count and rate, windows of `--seconds` alternate: the plain process captions that frame
back to back, then the node (its own process, the given QoS, real DDS on loopback) is fed it at the rate by a
best-effort publisher, as a camera driver publishes, then the plain process again, `--windows` node windows in all.
Each node window is compared with the mean of the plain windows on either side of it, and a case's ratio is the
median of its windows': this shared machine's speed moves by 30-50 % within a minute, and short alternating windows
see the same machine. Printed: captioned frames/s in the node and its ratio to in process (target >= 0.9x), the
node's median inference ms and its ratio to in process (target <= 1.15x), end-to-end latency p50/p95 (publish ->
caption received), the node's counts over its windows: images published / received / lost in DDS, frames paired /
captioned / dropped (latest-frame policy), `drift` (the last plain window's ms / the first's: how far the machine
moved meanwhile), the node's mean inference ms (tails included) and `busy` (the share of the node windows its worker
spent in the captioner). Caption reuse is off: every frame goes through the model. `--threads 1,2` runs the node once
per thread count, `--inference-process true,false` once per mode (the captioner in the node's child process, or in
the node's own process).
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

from finecaption_ros.ros_support.captioner_process import CaptionerProcess  # noqa: E402
from finecaption_ros.ros_support.dds import use_large_frame_transport  # noqa: E402

use_large_frame_transport()  # this process publishes the frames, as a camera driver would

import rclpy  # noqa: E402
from node_frames import frame_with_regions  # noqa: E402
from rosharness import Client, NodeProcess, node_command, plain_caption_ms  # noqa: E402

COUNTS = ("images_received", "lost_images", "frames_paired", "frames_captioned", "frames_dropped")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run_node_window(client: Client, image, labels, rate: float, seconds: float) -> dict:
    image_msg, mask_msg = client.make_image(image, 0), client.make_mask(labels, 0)

    def publish(stamp: float) -> None:
        image_msg.header.stamp = mask_msg.header.stamp = client.stamp(stamp)
        client.image_pub.publish(image_msg)
        client.mask_pub.publish(mask_msg)

    client.clear()
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
            "inference": [m.inference_time * 1e3 for _, m in arrivals], "latency": latency,
            # the share of the window the worker spent inside the captioner (1.0: never idle, never elsewhere)
            "busy": sum(m.inference_time for _, m in in_window) / (t_end - t0)}


def run_case(client: Client, plain: CaptionerProcess, image, labels, rate: float, args) -> tuple[dict, dict]:
    """Alternating plain and node windows; (the plain process's summary, the node's)."""
    plain_ms = [plain_caption_ms(plain, [(image, labels)], args.seconds)]
    nodes, ratios = [], []
    for _ in range(args.windows):
        nodes.append(run_node_window(client, image, labels, rate, args.seconds))
        plain_ms.append(plain_caption_ms(plain, [(image, labels)], args.seconds))
        around = [len(w) / sum(w) * 1e3 for w in plain_ms[-2:]]
        ratios.append(nodes[-1]["fps"] / statistics.fmean(around))
    base = {"fps": statistics.median(len(w) / sum(w) * 1e3 for w in plain_ms),
            "ms": statistics.median(t for w in plain_ms for t in w),
            "drift": statistics.median(plain_ms[-1]) / statistics.median(plain_ms[0])}
    inference = [t for n in nodes for t in n["inference"]]
    latency = [t for n in nodes for t in n["latency"]]
    node = {"fps": statistics.median(n["fps"] for n in nodes), "ratio": statistics.median(ratios),
            **{k: sum(n[k] for n in nodes) for k in ("published", *COUNTS)},
            "inference_ms": statistics.median(inference) if inference else 0.0,
            "inference_mean_ms": statistics.fmean(inference) if inference else 0.0,
            "busy": statistics.fmean(n["busy"] for n in nodes),
            "p50": percentile(latency, 0.5), "p95": percentile(latency, 0.95)}
    return base, node


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each node and plain window")
    parser.add_argument("--windows", type=int, default=5, help="node windows per case (each between plain ones)")
    parser.add_argument("--rates", default="30,60", help="published frames per second, comma-separated")
    parser.add_argument("--regions", default="1,8", help="regions per frame, comma-separated")
    parser.add_argument("--sizes", default="256x256,640x480", help="frame sizes WxH, comma-separated")
    parser.add_argument("--threads", default="0", help="the node's num_threads values (0 = its default)")
    parser.add_argument("--inference-process", default="true",
                        help="the node's inference_process values, comma-separated (true,false: both, in turn)")
    parser.add_argument("--qos", default="sensor_data", help="the node's qos parameter")
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
            plain = None
            try:
                client.wait_for_node(proc)
                node_threads = int(client.latest_diagnostics()["inference_threads"])
                plain = CaptionerProcess(args.model, "torch", "", node_threads)
                for size in sizes:
                    for count in regions:
                        image, labels = frame_with_regions(count, size=size)
                        for rate in rates:
                            base, r = run_case(client, plain, image, labels, rate, args)
                            rows.append(("child" if in_child else "own", node_threads, size, count, rate, base, r))
                            print_row(*rows[-1], header=len(rows) == 1)
            finally:
                client.close()
                if plain is not None:
                    plain.close()
                code = proc.stop()
                if code not in (0, -2):
                    print(f"node exited with {code}; log {log}")
    finally:
        rclpy.try_shutdown()
    print("\nnode/in = the median over the node windows of captioned frames/s in the node / in process, each against "
          "the plain windows just before and after it (target >= 0.9x); inference node/in = median inference ms in "
          "the node / in process (target <= 1.15x); in fps = the median plain window; drift = the last plain window's "
          "ms / the first's (how much the machine's speed moved meanwhile); "
          "latency = publish -> caption received; mean ms = the node's mean inference ms (tails included); busy = "
          "the share of the window its worker spent in the captioner; proc = where the node captions (child: "
          "inference_process true, own: false)")
    return 0


def print_row(where, threads, size, count, rate, base, r, header=False) -> None:
    if header:
        print(f"{'proc':>5} {'thr':>3} {'frame':>8} {'reg':>3} {'Hz':>3} | {'in fps':>6} {'node':>6} {'ratio':>5} | "
              f"{'in ms':>6} {'node ms':>7} {'ratio':>5} | {'p50 ms':>6} {'p95 ms':>6} | {'pub':>4} {'recv':>4} "
              f"{'lost':>4} {'pair':>4} {'capt':>4} {'drop':>4} | {'drift':>5} | {'mean ms':>7} {'busy':>4}")
    print(f"{where:>5} {threads:>3} {size[0]:>4}x{size[1]:<3} {count:>3} {rate:>3.0f} | "
          f"{base['fps']:>6.1f} {r['fps']:>6.1f} "
          f"{r['ratio']:>4.2f}x | {base['ms']:>6.1f} {r['inference_ms']:>7.1f} "
          f"{r['inference_ms'] / base['ms']:>4.2f}x | {r['p50']:>6.0f} {r['p95']:>6.0f} | {r['published']:>4} "
          f"{r['images_received']:>4} {r['lost_images']:>4} {r['frames_paired']:>4} {r['frames_captioned']:>4} "
          f"{r['frames_dropped']:>4} | {base['drift']:>4.2f}x | {r['inference_mean_ms']:>7.1f} {r['busy']:>4.2f}",
          flush=True)


if __name__ == "__main__":
    sys.exit(main())
