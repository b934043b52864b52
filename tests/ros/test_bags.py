"""Bags without a ROS graph (finecaption_ros/ros_support/bags.py, `finecaption caption --bag`): captions of every
recorded pair, the output bag and JSON lines, the node's pairing rules, one clear error per bad bag; and the mono8
conversion convention."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bagfiles import IMAGE_TOPIC, MASK_TOPIC, scenes, storage_file, write_bag

from finecaption_ros.ros_support import image_codec
from finecaption_ros.ros_support.bags import (
    CAPTIONS_TOPIC,
    JSONL_NAME,
    BagError,
    bag_topics,
    caption_bag,
    image_message,
    read_captions,
    read_messages,
    typestore,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def frames():
    return scenes(3)


def _caption(captioner, bag, out, **kwargs):
    return caption_bag(bag, out, captioner, IMAGE_TOPIC, MASK_TOPIC, **kwargs)


# ------------------------------------------------------------------------------------------------- offline captions
@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_offline_captions_every_pair_like_the_in_process_captioner(tmp_path, default_captioner, frames, storage):
    bag, out = tmp_path / "in", tmp_path / "out"
    stamps = write_bag(bag, frames, storage)
    summary = _caption(default_captioner, bag, out, annotated=True)
    assert summary.frames == 3 and summary.storage == storage
    assert storage_file(out).suffix == (".mcap" if storage == "mcap" else ".db3")

    topics = bag_topics(out)
    assert topics == {IMAGE_TOPIC: "sensor_msgs/msg/Image", MASK_TOPIC: "sensor_msgs/msg/Image",
                      CAPTIONS_TOPIC: "finecaption_ros/msg/RegionCaptionArray",
                      "/finecaption_node/annotated_image": "sensor_msgs/msg/Image"}
    # The input topics are copied byte for byte, at their recorded times.
    original = [(m.topic, m.log_time_ns, m.raw) for m in read_messages(bag)]
    copied = [(m.topic, m.log_time_ns, m.raw) for m in read_messages(out, [IMAGE_TOPIC, MASK_TOPIC])]
    assert copied == original

    messages = read_captions(out)
    lines = [json.loads(line) for line in (out / JSONL_NAME).read_text().splitlines()]
    assert len(messages) == len(lines) == 3
    for scene, stamp, msg, line in zip(frames, stamps, messages, lines):
        assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == stamp == line["stamp_ns"]
        assert msg.header.frame_id == "camera" == line["frame_id"]
        assert msg.model_id == default_captioner.model_id and msg.backend == "torch"
        want = default_captioner.caption(scene.image, scene.labels, task="dense")
        got = [(c.region_id, c.task, c.caption, c.mask_area,
                (c.bbox.x_offset, c.bbox.y_offset, c.bbox.width, c.bbox.height)) for c in msg.captions]
        assert got == [(r.region_id, "dense", r.caption, r.mask_area, tuple(r.bbox)) for r in want]
        assert [c.confidence for c in msg.captions] == pytest.approx([r.confidence for r in want], abs=1e-5)
        assert [(c["region_id"], c["caption"], c["bbox"]) for c in line["captions"]] == \
            [(c.region_id, c.caption, [c.bbox.x_offset, c.bbox.y_offset, c.bbox.width, c.bbox.height])
             for c in msg.captions]
        assert not any(c.reused for c in msg.captions)

    annotated = [m for m in read_messages(out, ["/finecaption_node/annotated_image"])]
    assert len(annotated) == 3
    first = typestore().deserialize_cdr(annotated[0].raw, "sensor_msgs/msg/Image")
    assert first.encoding == "rgb8" and first.header.stamp.sec * 10**9 + first.header.stamp.nanosec == stamps[0]


def test_attribute_task_and_the_pairing_rules_of_the_node(tmp_path, default_captioner, frames):
    """Exact stamps pair; a mask 5 ms off pairs only within sync_slop; an image without a mask is counted, not
    captioned; a frame the node would reject (unsupported encoding) is counted and the rest go on."""
    bag = tmp_path / "in"
    four = frames + scenes(1, seed=9)
    write_bag(bag, four, mask_offsets_ns=[0, 5_000_000, 0, 0], skip_masks=(2,))
    exact = _caption(default_captioner, bag, tmp_path / "exact", task="attribute", attributes=["color"])
    assert exact.frames == 2
    assert exact.read.dropped["unmatched_images"] == 2 and exact.read.dropped["unmatched_masks"] == 1
    assert any("unmatched_images" in line for line in exact.lines())
    messages = read_captions(tmp_path / "exact")
    assert [m.header.stamp.nanosec for m in messages] == [0, int(1.2e9) % 10**9]
    assert {(c.task, c.attribute) for m in messages for c in m.captions} == {("attribute", "color")}

    slop = _caption(default_captioner, bag, tmp_path / "slop", task="attribute", attributes=["color"],
                    sync_slop=0.01)
    assert slop.frames == 3 and slop.read.dropped["unmatched_images"] == 1

    bad = tmp_path / "bad"
    write_bag(bad, frames, image_encoding="rgba8")
    # yuv422 is not an encoding the node reads: rewrite the second image's encoding.
    rewritten = tmp_path / "rewritten"
    store = typestore()
    from rosbags.rosbag2 import Writer

    with Writer(rewritten, version=9) as writer:
        conns = {}
        for i, m in enumerate(read_messages(bad)):
            if m.topic not in conns:
                conns[m.topic] = writer.add_connection(m.topic, m.msgtype, typestore=store)
            raw = m.raw
            if m.topic == IMAGE_TOPIC and i == 2:
                msg = store.deserialize_cdr(raw, m.msgtype)
                msg.encoding = "yuv422"
                raw = store.serialize_cdr(msg, m.msgtype)
            writer.write(conns[m.topic], m.log_time_ns, raw)
    survived = _caption(default_captioner, rewritten, tmp_path / "survived")
    assert survived.frames == 2 and survived.read.rejected["unsupported_encoding"] == 1
    assert "yuv422" in survived.read.first_problem["unsupported_encoding"]


# ------------------------------------------------------------------------------------------------- bad bags
def _string_message(text: str):
    return typestore().types["std_msgs/msg/String"](data=text)


@pytest.mark.parametrize("case", ["missing", "no_metadata", "truncated_sqlite3", "truncated_mcap", "corrupt_sqlite3",
                                  "missing_topic", "wrong_type", "output_exists", "same_topic"])
def test_bad_bags_give_one_clear_error(tmp_path, frames, case):
    bag = tmp_path / "bag"
    image_topic, out = IMAGE_TOPIC, tmp_path / "out"
    if case == "missing":
        expect = "does not exist"
    elif case == "no_metadata":
        bag.mkdir()
        expect = "without metadata.yaml"
    elif case.startswith(("truncated", "corrupt")):
        write_bag(bag, frames, "mcap" if case.endswith("mcap") else "sqlite3")
        data = storage_file(bag)
        size = data.stat().st_size
        if case.startswith("truncated"):
            os.truncate(data, size // 2)
        else:
            with open(data, "r+b") as f:  # the sqlite3 page headers of the middle of the file
                f.seek(size // 3)
                f.write(np.random.default_rng(0).integers(0, 256, 8192, dtype=np.uint8).tobytes())
        expect = "truncated or corrupt"
    elif case == "missing_topic":
        write_bag(bag, frames[:1])
        image_topic = "/camera/color/image_raw"
        expect = f"no topic '{image_topic}'; its topics: {IMAGE_TOPIC} (sensor_msgs/msg/Image)"
    elif case == "wrong_type":
        write_bag(bag, frames[:1], extra=("/chatter", "std_msgs/msg/String", _string_message("hi")))
        image_topic = "/chatter"
        expect = "'/chatter' in bag"
    elif case == "same_topic":
        write_bag(bag, frames[:1])
        image_topic = MASK_TOPIC
        expect = "both /segmenter/instances"
    else:
        write_bag(bag, frames[:1])
        out.mkdir()
        expect = "exists already"
    with pytest.raises(BagError) as info:
        caption_bag(bag, out, object(), image_topic, MASK_TOPIC)  # fails before any captioner call
    message = str(info.value)
    assert expect in message and "\n" not in message
    if case == "wrong_type":
        assert "std_msgs/msg/String, not sensor_msgs/msg/Image" in message and "--image-topic" in message


def test_cli_captions_a_bag_with_progress_and_errors_in_one_line(tmp_path, frames):
    bag, out = tmp_path / "in", tmp_path / "out"
    write_bag(bag, frames[:2], "mcap")
    cli = [sys.executable, "-m", "finecaption_ros.cli", "caption", "--bag", str(bag), "--image-topic", IMAGE_TOPIC]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(cli + ["--mask-topic", MASK_TOPIC, "--out", str(out), "--storage", "sqlite3"],
                         capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert "captioned 2 frame(s)" in run.stdout and "frames/s" in run.stdout
    assert "2/2" in run.stderr  # the progress bar
    assert storage_file(out).suffix == ".db3" and len((out / JSONL_NAME).read_text().splitlines()) == 2
    run = subprocess.run(cli + ["--mask-topic", "/nope", "--out", str(tmp_path / "out2")],
                         capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert run.returncode == 2
    errors = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "no topic '/nope'" in errors[0] and "--mask-topic" in errors[0], run.stderr
    assert errors[0].startswith("finecaption: error: "), errors  # the CLI's one error path


# ------------------------------------------------------------------------------------------------- mono8
def test_mono8_uses_the_opencv_luma_weights():
    # cv2.cvtColor(..., COLOR_RGB2GRAY) of opencv-python-headless 4.6 and 5.0 gives these: pure red, green, blue,
    # white, black, a grey, then four colours where OpenCV's old 14-bit weights would give one more or one less.
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0], [128, 128, 128],
                     [138, 167, 72], [48, 17, 212], [230, 156, 247], [21, 13, 242]]], dtype=np.uint8)
    opencv = [76, 150, 29, 255, 0, 128, 148, 48, 188, 41]
    assert image_codec.rgb_to_mono8(rgb).tolist() == [opencv]
    assert np.asarray(image_codec.encode(rgb, "mono8")["data"]).tolist() == opencv
    # Within rounding of the float weights everywhere, and not the channel mean (red would be 85).
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    exact = pixels.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    assert np.abs(image_codec.rgb_to_mono8(pixels) - exact).max() <= 0.51


def test_bgr_and_rgba_frames_become_the_same_mono8(frames):
    rgb = frames[0].image
    want = image_codec.rgb_to_mono8(rgb)
    for encoding in ("rgb8", "bgr8", "rgba8", "bgra8"):
        msg = image_message(image_codec.encode(rgb, encoding))
        grey = image_codec.encode(image_codec.decode_image(msg), "mono8")
        assert np.array_equal(np.frombuffer(grey["data"], np.uint8).reshape(want.shape), want), encoding
    decoded = image_codec.decode_image(image_message(image_codec.encode(rgb, "rgb8")))
    assert decoded.flags.writeable and decoded.flags.c_contiguous  # a copy, even of a read-only buffer


def test_cli_bag_errors_and_attributes_take_the_one_error_path(tmp_path, frames, capsys):
    from finecaption_ros.cli import main

    bag = tmp_path / "in"
    write_bag(bag, frames[:1], "mcap")
    assert main(["caption", "--bag", str(bag), "--image-topic", IMAGE_TOPIC]) == 2
    err = capsys.readouterr().err
    assert err == "finecaption: error: --bag needs --image-topic, --mask-topic and --out\n"
    assert main(["caption", "--bag", str(bag), "--image-topic", IMAGE_TOPIC, "--mask-topic", MASK_TOPIC,
                 "--out", str(tmp_path / "out"), "--task", "attribute", "--attributes", "color,category"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out" / JSONL_NAME).read_text().splitlines()]
    assert rows and {c["attribute"] for c in rows[0]["captions"]} == {"color", "category"}
