"""Offline bag captioning (`finecaption caption --bag`) against the in-process captioner on the same frames.

Writes a bag of generated 256x256 frames + instance masks (the demo camera's size), then alternately (a) calls
Captioner.caption on each frame's decoded arrays and (b) runs caption_bag over the bag: read, deserialise, pair,
check, decode, caption through the node's pipeline, serialise and write the output bag and JSON lines. Prints
frames/s of each and their ratio; medians of --repeats rounds, in one process so machine noise hits both.

    python bench/bag_offline.py [--frames 30] [--repeats 3] [--storage sqlite3|mcap] [--task dense] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rosbags.rosbag2 import StoragePlugin, Writer

from finecaption_ros.captioner import Captioner
from finecaption_ros.data.scenes import SceneGenerator
from finecaption_ros.ros_support.bags import IMAGE_TYPE, caption_bag, image_message, typestore
from finecaption_ros.ros_support.image_codec import encode


def write_bag(path: Path, scenes, storage: str) -> None:
    store = typestore()
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        image_conn = writer.add_connection("/camera/image_raw", IMAGE_TYPE, typestore=store)
        mask_conn = writer.add_connection("/segmenter/instances", IMAGE_TYPE, typestore=store)
        for i, scene in enumerate(scenes):
            stamp = 1_700_000_000_000_000_000 + i * 33_333_333
            for conn, fields in ((image_conn, encode(scene.image, "rgb8")), (mask_conn, encode(scene.labels, "mono8"))):
                msg = image_message(fields, stamp_ns=stamp, frame_id="camera")
                writer.write(conn, stamp, store.serialize_cdr(msg, IMAGE_TYPE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--storage", default="sqlite3", choices=("sqlite3", "mcap"))
    parser.add_argument("--task", default="dense")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    captioner = Captioner.from_pretrained(args.model)
    generator = SceneGenerator(256, 256, seed=args.seed, split="eval")
    scenes = [generator.sample() for _ in range(args.frames)]
    regions = sum(len(s.objects) for s in scenes)

    with tempfile.TemporaryDirectory() as tmp:
        bag = Path(tmp) / "in"
        write_bag(bag, scenes, args.storage)
        captioner.caption(scenes[0].image, scenes[0].labels, task=args.task)  # warm-up

        def timed(run) -> tuple[float, float]:
            """frames per wall second and per CPU second of this process (the second one is what a shared,
            busy machine distorts least)."""
            t0, c0 = time.perf_counter(), time.process_time()
            run()
            return args.frames / (time.perf_counter() - t0), args.frames / (time.process_time() - c0)

        def in_process() -> None:
            for scene in scenes:
                captioner.caption(scene.image, scene.labels, task=args.task)

        def offline(round_: int) -> None:
            summary = caption_bag(bag, Path(tmp) / f"out{round_}", captioner, "/camera/image_raw",
                                  "/segmenter/instances", task=args.task)
            assert summary.frames == args.frames

        direct, bags = [], []
        for r in range(args.repeats):
            order = [("bag", lambda: offline(r)), ("direct", in_process)]
            for name, run in order if r % 2 else order[::-1]:
                (bags if name == "bag" else direct).append(timed(run))
            print(f"round {r + 1}: in-process {direct[-1][0]:.1f} frames/s ({direct[-1][1]:.1f} per CPU s), "
                  f"bag offline {bags[-1][0]:.1f} frames/s ({bags[-1][1]:.1f} per CPU s)")
    print(f"\n{args.frames} frames of 256x256, {regions} regions, task {args.task}, {args.storage} bag, "
          f"{args.threads} threads; medians of {args.repeats} rounds")
    for i, what in enumerate(("frames/s (wall)", "frames per CPU second")):
        d, b = statistics.median(x[i] for x in direct), statistics.median(x[i] for x in bags)
        print(f"{what}: in-process captioner {d:.1f}, offline bag path {b:.1f} = {b / d:.2f}x")


if __name__ == "__main__":
    main()
