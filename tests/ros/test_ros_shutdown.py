"""Stopping the node as a terminal (Ctrl-C: SIGINT to the whole process group) or `ros2 launch` (SIGINT, then
SIGTERM) does: exit 0 and no traceback, also after a warning and while the worker is captioning (it used to publish
after the ROS context went down), and no process left behind (the captioner's child process)."""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
from rosharness import Client, NodeProcess, node_command, process_tree, wait_until

from finecaption_ros.data.scenes import SceneGenerator


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("signum,group", [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=["SIGINT", "SIGTERM", "Ctrl-C to the process group"])
def test_a_signal_while_captioning_after_a_warning_exits_0(ros, tmp_path, signum, group):
    name = f"shutdown_node_{signum.name.lower()}{'_group' if group else ''}"
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
        children = process_tree(proc.pid)[1:]
        if group:
            os.killpg(proc.pid, signum)  # the node started its own session: its pid is the group's
        else:
            proc.proc.send_signal(signum)
        code = proc.wait(20)
        wait_until(lambda: not any(_alive(pid) for pid in children), 15, message="the node's children to exit")
    finally:
        client.close()
        proc.stop()
    log = proc.log()
    assert code == 0, log[-3000:]
    for text in ("Traceback", "context is invalid", "Logger severity", "RCLError"):
        assert text not in log, log[-3000:]
    assert np.any(scene.labels)
    assert children, "the captioner runs in a child process by default"
