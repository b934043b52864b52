"""Several cameras in one node process (`cameras:=[front, left]`, one batch per worker turn) and the managed
(lifecycle) node driven over its real lifecycle services, over real DDS on loopback."""
from __future__ import annotations

import itertools
import os
import time

import pytest
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rosharness import Client, NodeProcess, node_command, region_ids, wait_until

from finecaption_ros.data.scenes import SceneGenerator

CAMERAS = ("front", "left")
_stamps = itertools.count(5000)


def next_stamp() -> float:
    return float(next(_stamps)) + 0.5


@pytest.fixture(scope="module")
def scenes():
    generator = SceneGenerator(seed=11, split="train")
    return [generator.sample() for _ in range(6)]


def camera_client(node_name: str, camera: str) -> Client:
    return Client(node_name, name=f"test_client_{camera}", image_topic=f"{camera}/image",
                  mask_topic=f"{camera}/mask", captions_topic=f"{camera}/region_captions")


def publish(client: Client, scene, stamp: float, frame_id: str) -> None:
    image, mask = client.make_image(scene.image, stamp), client.make_mask(scene.labels, stamp)
    image.header.frame_id = mask.header.frame_id = frame_id
    client.image_pub.publish(image)
    client.mask_pub.publish(mask)


@pytest.fixture(scope="module")
def cameras_node(ros, tmp_path_factory):
    name = "finecaption_cameras_under_test"
    log = tmp_path_factory.mktemp("cameras") / "node.log"
    proc = NodeProcess(node_command({"cameras": list(CAMERAS), "qos": "reliable", "diagnostics_period": 0.3,
                                     "caption_reuse": False}, name=name), log)
    clients = {c: camera_client(name, c) for c in CAMERAS}
    try:
        for client in clients.values():
            client.wait_for_node(proc)
        yield proc, clients
    finally:
        for client in clients.values():
            client.close()
        code = proc.stop()
        assert code in (0, -2), f"the node did not shut down cleanly ({code}):\n{proc.log()[-3000:]}"


def test_two_cameras_get_their_own_captions_with_their_own_stamps(cameras_node, scenes):
    proc, clients = cameras_node
    front, left = clients["front"], clients["left"]
    for a, b in ((scenes[0], scenes[1]), (scenes[2], scenes[3])):
        s_front, s_left = next_stamp(), next_stamp()
        publish(front, a, s_front, "front_optical")
        publish(left, b, s_left, "left_optical")
        got_front, got_left = front.captions_for(s_front), left.captions_for(s_left)
        assert got_front.header.frame_id == "front_optical" and got_left.header.frame_id == "left_optical"
        assert [c.region_id for c in got_front.captions] == region_ids(a.labels)
        assert [c.region_id for c in got_left.captions] == region_ids(b.labels)
        for msg, scene in ((got_front, a), (got_left, b)):  # each box and area from that camera's own mask
            for c in msg.captions:
                assert c.mask_area == int((scene.labels == c.region_id).sum())
    # No caption crossed over to the other camera's topic.
    stamps = {cam: {(m.header.stamp.sec, m.header.stamp.nanosec) for m in c.all_captions()}
              for cam, c in clients.items()}
    assert not stamps["front"] & stamps["left"]
    assert {m.header.frame_id for m in front.all_captions()} == {"front_optical"}
    values = front.latest_diagnostics()
    # By default one inference worker per camera, up to the cores: here each camera can have a batch of its own.
    assert int(values["inference_workers"]) == min(len(CAMERAS), len(os.sched_getaffinity(0)))
    for camera in CAMERAS:
        assert int(values[f"{camera}.frames_captioned"]) >= 2
        for key in ("images_received", "frames_dropped", "frames_stale", "captioned_rate_hz", "latency_p95_ms"):
            assert f"{camera}.{key}" in values, key


def test_a_camera_that_stops_does_not_stall_the_others(cameras_node, scenes):
    proc, clients = cameras_node
    front, left = clients["front"], clients["left"]
    publish(left, scenes[4], next_stamp(), "left_optical")
    last_left = next_stamp()
    publish(left, scenes[4], last_left, "left_optical")
    left.captions_for(last_left)
    before = front.latest_diagnostics()
    # The left camera goes silent; the front camera goes on at 10 Hz and keeps being captioned.
    stamps = []
    for i in range(20):
        stamps.append(next_stamp())
        publish(front, scenes[i % 4], stamps[-1], "front_optical")
        time.sleep(0.1)
    front.captions_for(stamps[-1], timeout=60)  # the newest front frame is always captioned
    after = wait_until(lambda: (v := front.latest_diagnostics()) and
                       int(v["front.frames_captioned"]) + int(v["front.frames_dropped"]) -
                       int(before["front.frames_captioned"]) - int(before["front.frames_dropped"]) >= 20 and v,
                       30, message="every front frame captioned or counted as dropped")
    assert int(after["front.frames_captioned"]) - int(before["front.frames_captioned"]) >= 2
    assert after["left.frames_captioned"] == before["left.frames_captioned"]
    assert proc.alive()


def test_latency_budget_drops_and_counts_old_frames(cameras_node, scenes):
    proc, clients = cameras_node
    front = clients["front"]
    [result] = front.set_parameters({"latency_budget": 1e-6})  # shorter than any hand-over: every frame is late
    assert result.successful, result.reason
    try:
        before = front.latest_diagnostics()
        stamp = next_stamp()
        publish(front, scenes[0], stamp, "front_optical")
        values = front.wait_counter("front.frames_stale", int(before["front.frames_stale"]) + 1)
        assert int(values["frames_stale"]) >= int(before["frames_stale"]) + 1
        assert stamp not in {m.header.stamp.sec + m.header.stamp.nanosec / 1e9 for m in front.all_captions()}
        wait_until(lambda: "more than latency_budget" in proc.log(), 10, message="the stale-frame log line")
    finally:
        [result] = front.set_parameters({"latency_budget": 0.0})
        assert result.successful
    stamp = next_stamp()
    publish(front, scenes[1], stamp, "front_optical")
    front.captions_for(stamp)


# ------------------------------------------------------------------------------------------------- lifecycle
def lifecycle_call(client: Client, node_name: str, kind, request, timeout: float = 120.0):
    service = client.node.create_client(kind, f"/{node_name}/{'change_state' if kind is ChangeState else 'get_state'}")
    try:
        assert service.wait_for_service(timeout_sec=60), f"no lifecycle service on {node_name}"
        # A request sent just after discovery can go unanswered (its reply path not matched yet: seen once in a
        # clean-clone run); get_state is idempotent, so it is asked again. change_state is sent once.
        tries = 4 if kind is GetState else 1
        for _ in range(tries):
            future = service.call_async(request)
            deadline = time.monotonic() + timeout / tries
            while not future.done() and time.monotonic() < deadline:
                time.sleep(0.02)
            if future.done():
                return future.result()
        raise AssertionError(f"lifecycle service answered not met within {timeout} s")
    finally:
        client.node.destroy_client(service)


def state_of(client, node_name) -> int:
    return lifecycle_call(client, node_name, GetState, GetState.Request()).current_state.id


def transition(client, node_name, transition_id) -> bool:
    return lifecycle_call(client, node_name, ChangeState,
                          ChangeState.Request(transition=Transition(id=transition_id))).success


def test_lifecycle_transitions_and_frames_refused_while_inactive(ros, tmp_path, scenes):
    name = "finecaption_lifecycle_under_test"
    proc = NodeProcess(node_command({"lifecycle": True, "qos": "reliable", "diagnostics_period": 0.3},
                                    name=name), tmp_path / "node.log")
    client = Client(name, name="test_client_lifecycle")
    try:
        assert state_of(client, name) == State.PRIMARY_STATE_UNCONFIGURED
        assert not client.service.wait_for_service(timeout_sec=0.5)  # nothing is loaded before configure
        assert transition(client, name, Transition.TRANSITION_CONFIGURE)
        assert state_of(client, name) == State.PRIMARY_STATE_INACTIVE
        client.wait_for_node(proc)  # configured: the service and both subscriptions exist

        def refused(count_before: int) -> int:
            stamp = next_stamp()
            client.publish(scenes[0].image, scenes[0].labels, stamp)
            values = client.wait_counter("frames_inactive", count_before + 1)
            assert values["active"] == "False"
            time.sleep(0.5)
            assert not [m for m in client.all_captions() if m.header.stamp == client.stamp(stamp)]
            return int(values["frames_inactive"])

        inactive = refused(0)
        assert transition(client, name, Transition.TRANSITION_ACTIVATE)
        assert state_of(client, name) == State.PRIMARY_STATE_ACTIVE
        stamp = next_stamp()
        client.publish(scenes[1].image, scenes[1].labels, stamp)
        assert [c.region_id for c in client.captions_for(stamp).captions] == region_ids(scenes[1].labels)
        assert transition(client, name, Transition.TRANSITION_DEACTIVATE)
        assert state_of(client, name) == State.PRIMARY_STATE_INACTIVE
        captioned = int(client.latest_diagnostics()["frames_captioned"])
        refused(inactive)
        assert int(client.latest_diagnostics()["frames_captioned"]) == captioned
        assert transition(client, name, Transition.TRANSITION_CLEANUP)
        assert state_of(client, name) == State.PRIMARY_STATE_UNCONFIGURED
        wait_until(lambda: not client.service.wait_for_service(timeout_sec=0.2), 10, message="service gone")
        # Configured again from scratch, the node captions again.
        assert transition(client, name, Transition.TRANSITION_CONFIGURE)
        assert transition(client, name, Transition.TRANSITION_ACTIVATE)
        client.wait_for_node(proc)
        stamp = next_stamp()
        client.publish(scenes[2].image, scenes[2].labels, stamp)
        client.captions_for(stamp)
        assert proc.alive()
    finally:
        client.close()
        code = proc.stop()
        assert code in (0, -2), f"the node did not shut down cleanly ({code}):\n{proc.log()[-3000:]}"
