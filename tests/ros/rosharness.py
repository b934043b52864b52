"""Test harness: the node under test runs in its own process (as a user runs it); the test process talks to it
over real DDS (loopback only, see conftest.py) through a small rclpy client node spun in a background thread."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from finecaption_ros.msg import RegionCaptionArray
from finecaption_ros.srv import CaptionRegions
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from finecaption_ros.ros.common import fill_image
from finecaption_ros.ros_support.image_codec import encode

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
NODE_CMD = [PYTHON, "-m", "finecaption_ros.ros.node"]


def node_command(params: dict | None = None, remaps: dict | None = None, name: str | None = None,
                 base: list[str] | None = None) -> list[str]:
    cmd = list(base or NODE_CMD) + ["--ros-args"]
    for key, value in (params or {}).items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, (list, tuple)):
            value = "[" + ",".join(str(v) for v in value) + "]"
        cmd += ["-p", f"{key}:={value}"]
    for src, dst in (remaps or {}).items():
        cmd += ["-r", f"{src}:={dst}"]
    if name:
        cmd += ["-r", f"__node:={name}"]
    return cmd


def process_tree(pid: int) -> list[int]:
    """`pid` and every living descendant of it."""
    pids, k = [pid], 0
    while k < len(pids):
        for children in Path(f"/proc/{pids[k]}/task").glob("*/children"):  # each thread's own children
            try:
                pids += [int(c) for c in children.read_text().split()]
            except OSError:
                pass
        k += 1
    return pids


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class NodeProcess:
    """The node under test in a subprocess; its output goes to a log file the tests read."""

    def __init__(self, cmd: list[str], log_path: Path, cwd: Path = ROOT):
        self.cmd = cmd
        self.log_path = log_path
        self._log = open(log_path, "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1", RCUTILS_COLORIZED_OUTPUT="0",
                   RCUTILS_CONSOLE_OUTPUT_FORMAT="[{severity}] [{name}]: {message}")
        self.proc = subprocess.Popen(cmd, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_mb(self) -> float:
        """Resident memory of the node process and its children (the captioner's process; the re-exec'd
        interpreter keeps the pid)."""
        return sum(_rss_mb(pid) for pid in process_tree(self.pid))

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 10.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


class Client:
    """Publishes images + masks, records captions and diagnostics, calls the service."""

    def __init__(self, node_name: str = "finecaption_node", name: str = "test_client", image_topic: str = "image",
                 mask_topic: str = "mask", captions_topic: str = "region_captions", reliable: bool = True):
        self.node = Node(name)
        qos = QoSProfile(depth=10)
        qos.reliability = ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT
        self.image_pub = self.node.create_publisher(Image, image_topic, qos)
        self.mask_pub = self.node.create_publisher(Image, mask_topic, qos)
        self.captions: deque[tuple[float, RegionCaptionArray]] = deque(maxlen=10000)
        self.annotated: deque[Image] = deque(maxlen=5)
        self.diagnostics: deque[tuple[float, DiagnosticArray]] = deque(maxlen=50)
        self.lock = threading.Lock()
        self.node.create_subscription(RegionCaptionArray, captions_topic, self._on_captions, 1000)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50)
        self.node.create_subscription(Image, f"/{node_name}/annotated_image", lambda m: self.annotated.append(m), 5)
        self.service = self.node.create_client(CaptionRegions, f"/{node_name}/caption_regions")
        self.node_name = node_name
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._running = True
        self._thread.start()

    def _spin(self):
        while self._running and rclpy.ok():
            self.executor.spin_once(timeout_sec=0.05)

    def close(self):
        self._running = False
        self._thread.join(2)
        self.executor.remove_node(self.node)
        self.node.destroy_node()

    def _on_captions(self, msg):
        with self.lock:
            self.captions.append((time.monotonic(), msg))

    def _on_diagnostics(self, msg):
        if any(s.name.startswith(f"{self.node_name}:") for s in msg.status):
            with self.lock:
                self.diagnostics.append((time.monotonic(), msg))

    # ---- publishing ------------------------------------------------------------------------------------------
    def stamp(self, seconds: float):
        from builtin_interfaces.msg import Time

        sec = int(seconds)
        return Time(sec=sec, nanosec=int(round((seconds - sec) * 1e9)))

    def make_image(self, rgb: np.ndarray, stamp: float, encoding: str = "rgb8") -> Image:
        msg = fill_image(Image(), encode(rgb, encoding))
        msg.header.stamp = self.stamp(stamp)
        msg.header.frame_id = "test_camera"
        return msg

    def make_mask(self, labels: np.ndarray, stamp: float, encoding: str = "mono8") -> Image:
        msg = fill_image(Image(), encode(labels, encoding))
        msg.header.stamp = self.stamp(stamp)
        msg.header.frame_id = "test_camera"
        return msg

    def publish(self, rgb, labels, stamp: float, encoding="rgb8", mask_encoding="mono8"):
        self.image_pub.publish(self.make_image(rgb, stamp, encoding))
        self.mask_pub.publish(self.make_mask(labels, stamp, mask_encoding))

    # ---- waiting ---------------------------------------------------------------------------------------------
    def wait_for_node(self, proc: NodeProcess, timeout: float = 120.0) -> None:
        """Until the node's service is up (it is created last) and both its subscriptions see our publishers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                raise AssertionError(f"node exited with {proc.proc.returncode}:\n{proc.log()}")
            if self.service.wait_for_service(timeout_sec=0.5):
                break
        else:
            raise AssertionError(f"node not ready after {timeout} s:\n{proc.log()}")
        while time.monotonic() < deadline:
            if self.image_pub.get_subscription_count() and self.mask_pub.get_subscription_count():
                return
            time.sleep(0.05)
        raise AssertionError("the node never subscribed to the image and mask topics")

    def captions_for(self, stamp: float, timeout: float = 60.0) -> RegionCaptionArray:
        want = self.stamp(stamp)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for _, msg in self.captions:
                    if msg.header.stamp.sec == want.sec and msg.header.stamp.nanosec == want.nanosec:
                        return msg
            time.sleep(0.02)
        raise AssertionError(f"no captions for stamp {stamp} within {timeout} s")

    def all_captions(self) -> list[RegionCaptionArray]:
        with self.lock:
            return [m for _, m in self.captions]

    def clear(self):
        with self.lock:
            self.captions.clear()
            self.diagnostics.clear()

    @staticmethod
    def _values(msg: DiagnosticArray, node_name: str) -> dict[str, str]:
        status = [s for s in msg.status if s.name.startswith(f"{node_name}:")][0]
        values = {kv.key: kv.value for kv in status.values}
        level = status.level
        values["_level"] = str(int.from_bytes(level, "little") if isinstance(level, bytes) else int(level))
        values["_message"] = status.message
        return values

    def latest_diagnostics(self, after: float | None = None, timeout: float = 10.0) -> dict[str, str]:
        """Key/values of the node's first diagnostics status received after `after` (time.monotonic(); now)."""
        after = time.monotonic() if after is None else after
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                fresh = [m for t, m in self.diagnostics if t > after]
            if fresh:
                return self._values(fresh[0], self.node_name)
            time.sleep(0.05)
        raise AssertionError("no diagnostics from the node")

    def wait_counter(self, key: str, minimum: int, timeout: float = 30.0) -> dict[str, str]:
        """Until the node's diagnostics report `key` >= minimum; returns those values."""
        deadline = time.monotonic() + timeout
        values: dict[str, str] = {}
        while time.monotonic() < deadline:
            with self.lock:
                latest = self.diagnostics[-1][1] if self.diagnostics else None
            if latest is not None:
                values = self._values(latest, self.node_name)
                if int(values.get(key, 0)) >= minimum:
                    return values
            time.sleep(0.1)
        raise AssertionError(f"diagnostics {key} never reached {minimum}: {values}")

    def call(self, request, timeout: float = 60.0):
        future = self.service.call_async(request)
        deadline = time.monotonic() + timeout
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not future.done():
            raise AssertionError(f"service call not answered within {timeout} s")
        return future.result()

    def set_parameters(self, params: dict, atomically: bool = False, timeout: float = 10.0):
        """Set parameters through the node's parameter services; values may be rclpy Parameter objects.
        Returns the list of SetParametersResult (one, for an atomic set)."""
        from rcl_interfaces.srv import SetParameters, SetParametersAtomically
        from rclpy.parameter import Parameter

        kind, suffix = (SetParametersAtomically, "set_parameters_atomically") if atomically else \
            (SetParameters, "set_parameters")
        client = self.node.create_client(kind, f"/{self.node_name}/{suffix}")
        try:
            assert client.wait_for_service(timeout_sec=timeout)
            msgs = [(v if isinstance(v, Parameter) else Parameter(k, value=v)).to_parameter_msg()
                    for k, v in params.items()]
            future = client.call_async(kind.Request(parameters=msgs))
            deadline = time.monotonic() + timeout
            while not future.done() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert future.done(), f"{suffix} not answered"
            result = future.result()
            return [result.result] if atomically else list(result.results)
        finally:
            self.node.destroy_client(client)

    def get_parameters(self, names: list[str], timeout: float = 10.0) -> list:
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python

        client = self.node.create_client(GetParameters, f"/{self.node_name}/get_parameters")
        try:
            assert client.wait_for_service(timeout_sec=timeout)
            future = client.call_async(GetParameters.Request(names=names))
            deadline = time.monotonic() + timeout
            while not future.done() and time.monotonic() < deadline:
                time.sleep(0.01)
            return [parameter_value_to_python(v) for v in future.result().values]
        finally:
            self.node.destroy_client(client)


def plain_caption_ms(plain, frames, seconds: float, at_least: int = 3) -> list[float]:
    """A captioner in a plain process (`CaptionerProcess`) captioning `frames` ((image, labels) pairs) in turn, back
    to back for `seconds` (and at least `at_least` calls): its own ms per call, so the hand-over is not counted."""
    times, t0 = [], time.monotonic()
    while time.monotonic() - t0 < seconds or len(times) < at_least:
        image, labels = frames[len(times) % len(frames)]
        times.append(plain.caption(image, labels, task="dense")[0].timings_ms["total"])
    return times


def region_ids(labels: np.ndarray) -> list[int]:
    return sorted(int(i) for i in np.unique(labels) if i)


def wait_until(predicate, timeout: float, interval: float = 0.05, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{message} not met within {timeout} s")
