"""Recorded data through the live node: a bag of generated frames + masks is captioned offline, then replayed by
`finecaption_source --bag` into the node process over real DDS; the same captions must arrive on /region_captions
with the recorded stamps, at the recorded pace."""
from __future__ import annotations

import pytest
from bagfiles import IMAGE_TOPIC, MASK_TOPIC, scenes, write_bag
from rosharness import PYTHON, Client, NodeProcess, node_command, wait_until

from finecaption_ros.ros.common import stamp_ns
from finecaption_ros.ros_support.bags import caption_bag, read_captions


SOURCE_CMD = [PYTHON, "-m", "finecaption_ros.ros.source"]
PERIOD_S = 0.4
# Replayed at a fifth of the speed: 2 s a frame, so the node (latest-frame policy: a frame that arrives while the
# one before is still captioned replaces any waiting one) captions every frame even on a 2-core machine at load 10.
RATE = 0.2


def test_replayed_bag_gives_the_offline_captions_and_stamps(ros, tmp_path, default_captioner):
    frames = scenes(5, seed=11)
    bag = tmp_path / "recording"
    stamps = write_bag(bag, frames, "mcap", period_s=PERIOD_S)
    summary = caption_bag(bag, tmp_path / "offline", default_captioner, IMAGE_TOPIC, MASK_TOPIC)
    assert summary.frames == 5
    offline = {stamp_ns(m.header.stamp): m for m in read_captions(tmp_path / "offline")}
    assert sorted(offline) == stamps

    # Best-effort delivery of large frames can lose some (issue 10), so the node subscribes reliably here.
    node = NodeProcess(node_command({"qos": "reliable", "caption_reuse": False},
                                    {"image": IMAGE_TOPIC, "mask": MASK_TOPIC}), tmp_path / "node.log")
    client = Client(image_topic=IMAGE_TOPIC, mask_topic=MASK_TOPIC)
    source = None
    try:
        client.wait_for_node(node)
        source = NodeProcess(SOURCE_CMD + ["--bag", str(bag), "--rate", str(RATE), "--topics",
                                           f"{IMAGE_TOPIC},{MASK_TOPIC}", "--wait-for-subscribers", "30"],
                             tmp_path / "source.log")
        assert source.wait(120) == 0, source.log()
        assert "bag replay finished: 10 messages" in source.log()
        def received():
            got = {stamp_ns(m.header.stamp): m for m in client.all_captions()}
            return got if set(stamps) <= set(got) else None

        live = wait_until(received, 120, message="captions for every replayed stamp")
        # The pace, from when each frame's captions arrived: a subscription of this test's own could still be
        # unmatched when the source (which waits for the node's) sends the first frames.
        with client.lock:
            arrivals = sorted(min(t for t, m in client.captions if stamp_ns(m.header.stamp) == s) for s in stamps)
        span = arrivals[-1] - arrivals[0]
    finally:
        if source is not None:
            source.stop()
        client.close()
        node.stop()

    for stamp in stamps:
        got, want = live[stamp], offline[stamp]
        assert got.header.frame_id == want.header.frame_id == "camera"
        assert [(c.region_id, c.task, c.caption, c.mask_area, c.bbox.x_offset, c.bbox.y_offset, c.bbox.width,
                 c.bbox.height) for c in got.captions] == \
            [(c.region_id, c.task, c.caption, c.mask_area, c.bbox.x_offset, c.bbox.y_offset, c.bbox.width,
              c.bbox.height) for c in want.captions]
        assert [c.confidence for c in got.captions] == pytest.approx([c.confidence for c in want.captions],
                                                                    abs=1e-4)
        assert got.model_id == want.model_id
    # At the recorded pace times RATE: never early (the source waits for each message's time), and late by no
    # more than scheduling noise.
    expected = (stamps[-1] - stamps[0]) / 1e9 / RATE
    assert expected * 0.9 <= span <= expected + 2.0, (span, expected)


def test_replay_of_a_bad_bag_stops_with_one_line(ros, tmp_path):
    write_bag(tmp_path / "bag", scenes(1))
    for args, expect in (([str(tmp_path / "nothing")], "does not exist"),
                         ([str(tmp_path / "bag"), "--topics", "/camera/depth"], "no topic(s) /camera/depth")):
        proc = NodeProcess(SOURCE_CMD + ["--bag"] + args, tmp_path / "source.log")
        assert proc.wait(60) == 2
        log = proc.log()
        proc.stop()
        assert expect in log and "Traceback" not in log, log
        assert len([line for line in log.splitlines() if line.startswith("[FATAL]")]) == 1, log
