"""Stopping the node as a terminal (Ctrl-C) or `ros2 launch` (SIGINT, then SIGTERM) does: exit 0 and no traceback,
also after a warning and while the worker is captioning (it used to publish after the ROS context went down)."""
from __future__ import annotations

import signal
import time

import numpy as np
import pytest
from rosharness import Client, NodeProcess, node_command, wait_until

from finecaption_ros.data.scenes import SceneGenerator


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_captioning_after_a_warning_exits_0(ros, tmp_path, signum):
    name = f"shutdown_node_{signum.name.lower()}"
    proc = NodeProcess(node_command({"qos": "reliable", "caption_reuse": False}, name=name), tmp_path / "node.log")
    client = Client(name, name=f"shutdown_client_{signum.name.lower()}")
    try:
        client.wait_for_node(proc)
        scene = SceneGenerator(seed=3).sample()
        bad = client.make_image(scene.image, 1.0)
        bad.encoding = "yuv422"  # a warning first
        client.image_pub.publish(bad)
        client.mask_pub.publish(client.make_mask(scene.labels, 1.0))
        wait_until(lambda: "yuv422" in proc.log(), 20, message="the warning")
        for k in range(30):  # then frames, so that the worker is busy when the signal comes
            client.publish(scene.image, scene.labels, 2.0 + k)
            time.sleep(1 / 30)
        client.captions_for(2.0, timeout=60)
        proc.proc.send_signal(signum)
        code = proc.wait(20)
    finally:
        client.close()
        proc.stop()
    log = proc.log()
    assert code == 0, log[-3000:]
    for text in ("Traceback", "context is invalid", "Logger severity", "RCLError"):
        assert text not in log, log[-3000:]
    assert np.any(scene.labels)
