"""Benchmark (not a test): several cameras captioned by one node in one batch against one node process per camera.

    .venv/bin/python bench/multi_camera.py [--cameras 2,4] [--regions 4] [--rate 15] [--seconds 20] [--model PATH]

For each camera count N, side by side in one run: (a) one finecaption_node with `cameras:=[cam0, ..., camN-1]`,
one model in memory, whose inference workers (by default one per camera up to the core count) each caption the
latest frames of their share of the cameras in one batch; (b) N finecaption_node processes, one per camera
(`__ns:=/camK`), as one would run them without the `cameras` parameter. The same publisher feeds both the same
topics (/camK/image + /camK/mask, 256x256, `--regions` regions, a different scene per camera) at `--rate` Hz per
camera, reliable QoS. Printed per case: captioned frames/s per camera (mean over cameras; frames captioned while
publishing / publishing time), the batched/separate ratio (target >= 1.5x at 4 cameras), end-to-end latency p95
(publish -> caption received, over all cameras), the total resident memory of the node processes (target: less for
the batched node), the median inference ms per caption message (for the batched node: of the whole batch) and the
CPU time of the node processes per captioned frame. Caption reuse is off: every frame goes through the model. Every
node keeps its default num_threads and workers (`--batched-threads N` / `--batched-workers N` change the batched
node's). Results: README, "Several cameras in one node".
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
from node_frames import frame_with_regions  # noqa: E402
from rosharness import Client, NodeProcess, node_command, process_tree  # noqa: E402

from finecaption_ros.ros_support.startup import inference_workers  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def cpu_seconds(procs: list[NodeProcess]) -> float:
    """User + system CPU time of the node processes and their children (the captioner's process) so far
    (/proc/PID/stat fields 14 and 15)."""
    total = 0
    for pid in (pid for proc in procs for pid in process_tree(proc.pid)):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def start_nodes(cameras: list[str], batched: bool, params: dict, tag: str, args) -> list[NodeProcess]:
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    if batched:
        cmd = node_command({**params, "cameras": cameras, "num_threads": args.batched_threads,
                            "inference_workers": args.batched_workers}, name=f"bench_multi_{tag}")
        return [NodeProcess(cmd, logs / f"finecaption_bench_multi_{os.getpid()}_{tag}.log")]
    return [NodeProcess(node_command(params, name=f"bench_multi_{tag}_{c}") + ["-r", f"__ns:=/{c}"],
                        logs / f"finecaption_bench_multi_{os.getpid()}_{tag}_{c}.log") for c in cameras]


def run_case(cameras: list[str], batched: bool, frames: dict, args, params: dict) -> dict:
    tag = f"{len(cameras)}{'b' if batched else 's'}"
    procs = start_nodes(cameras, batched, params, tag, args)
    clients = {c: Client(f"bench_multi_{tag}_{c}", name=f"bench_multi_client_{tag}_{c}", image_topic=f"/{c}/image",
                         mask_topic=f"/{c}/mask", captions_topic=f"/{c}/region_captions") for c in cameras}
    try:
        deadline = time.monotonic() + 300
        for c, client in clients.items():  # every node up and subscribed (the service check needs no name here)
            while not (client.image_pub.get_subscription_count() and client.mask_pub.get_subscription_count()):
                assert all(p.alive() for p in procs), f"a node exited:\n{procs[0].log()[-2000:]}"
                assert time.monotonic() < deadline, "the nodes never subscribed"
                time.sleep(0.1)
        messages = {c: (clients[c].make_image(frames[c][0], 0), clients[c].make_mask(frames[c][1], 0))
                    for c in cameras}

        def publish(c: str) -> None:
            image_msg, mask_msg = messages[c]
            image_msg.header.stamp = mask_msg.header.stamp = clients[c].stamp(time.time())
            clients[c].image_pub.publish(image_msg)
            clients[c].mask_pub.publish(mask_msg)

        for c in cameras:  # warm-up: one caption per camera
            while not clients[c].all_captions():
                publish(c)
                time.sleep(0.3)
                assert time.monotonic() < deadline, f"{c} never captioned a frame"
        time.sleep(1.0)
        for client in clients.values():
            client.clear()
        t0, cpu0 = time.monotonic(), cpu_seconds(procs)
        published = 0
        while time.monotonic() - t0 < args.seconds:  # every camera at the same rate, in step
            for c in cameras:
                publish(c)
            published += 1
            time.sleep(max(0.0, t0 + published / args.rate - time.monotonic()))
        t_end, cpu = time.monotonic(), cpu_seconds(procs) - cpu0
        time.sleep(2.0)
        wall_offset = time.time() - time.monotonic()
        fps, latency, inference = [], [], []
        for client in clients.values():
            with client.lock:
                arrivals = list(client.captions)
            fps.append(sum(1 for t, _ in arrivals if t <= t_end) / (t_end - t0))
            inference += [m.inference_time * 1e3 for _, m in arrivals]
            latency += [(t + wall_offset - (m.header.stamp.sec + m.header.stamp.nanosec * 1e-9)) * 1e3
                        for t, m in arrivals]
        rss = sum(p.rss_mb() for p in procs)
        captioned = sum(fps) * (t_end - t0)
        return {"fps": statistics.mean(fps), "fps_min": min(fps), "p95": percentile(latency, 0.95),
                "p50": percentile(latency, 0.5), "rss": rss,
                "cpu_ms": cpu * 1e3 / captioned if captioned else float("nan"),
                "inference_ms": statistics.median(inference) if inference else float("nan"), "published": published,
                "processes": len(procs),
                "workers": inference_workers(args.batched_workers, len(cameras), "torch") if batched else len(procs)}
    finally:
        for client in clients.values():
            client.close()
        for proc in procs:
            proc.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cameras", default="2,4", help="camera counts, comma-separated")
    parser.add_argument("--regions", type=int, default=4, help="regions per frame")
    parser.add_argument("--rate", type=float, default=15.0, help="frames per second per camera")
    parser.add_argument("--seconds", type=float, default=20.0, help="publishing time per case")
    parser.add_argument("--model", default="", help="model folder (default: the embedded default model)")
    parser.add_argument("--batched-threads", type=int, default=0,
                        help="num_threads of the batched node (0 = its default, as every separate node has)")
    parser.add_argument("--batched-workers", type=int, default=0,
                        help="inference_workers of the batched node (0 = its default: one per camera up to the cores)")
    args = parser.parse_args()
    params = {"qos": "reliable", "caption_reuse": False, "diagnostics_period": 1.0}
    if args.model:
        params["model_path"] = args.model

    rclpy.init()
    print(f"{'cams':>4} {'mode':>9} {'procs':>5} {'workers':>7} | {'fps/cam':>7} {'min':>5} | {'p50 ms':>6} {'p95 ms':>6} | "
          f"{'RSS MB':>7} | {'infer ms':>8} {'CPU ms/frame':>12} | load average", flush=True)
    try:
        for count in (int(n) for n in args.cameras.split(",")):
            cameras = [f"cam{k}" for k in range(count)]
            frames = {c: frame_with_regions(args.regions, seed=5 + k) for k, c in enumerate(cameras)}
            results = {}
            for batched in (True, False):
                r = results[batched] = run_case(cameras, batched, frames, args, params)
                print(f"{count:>4} {'batched' if batched else 'separate':>9} {r['processes']:>5} {r['workers']:>7} | "
                      f"{r['fps']:>7.2f} "
                      f"{r['fps_min']:>5.2f} | {r['p50']:>6.0f} {r['p95']:>6.0f} | {r['rss']:>7.0f} | "
                      f"{r['inference_ms']:>8.0f} {r['cpu_ms']:>12.0f} | "
                      f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
            b, s = results[True], results[False]
            print(f"{count:>4} batched/separate: frames/s per camera {b['fps'] / s['fps']:.2f}x, latency p95 "
                  f"{b['p95'] / s['p95']:.2f}x, memory {b['rss'] / s['rss']:.2f}x, CPU per captioned frame "
                  f"{b['cpu_ms'] / s['cpu_ms']:.2f}x", flush=True)
    finally:
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
