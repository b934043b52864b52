"""The node's ~/caption_regions service, on a hidden helper node with its own single-threaded executor thread: that
thread waits (without the GIL) while the inference worker captions a request, so parameter calls and frames on the
node's own executor stay answered meanwhile."""
from __future__ import annotations

import threading
import time

from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile

from finecaption_ros.srv import CaptionRegions

from ..ros_support.latest import ServiceJob


class CaptionService:
    def __init__(self, node, depth: int, hand_over, log):
        """`hand_over(job)` gives the worker a ServiceJob (False: refused); the worker sets job.done."""
        self._hand_over, self.log, self.context = hand_over, log, node.context
        self.running = True
        self.node = Node(f"_{node.get_name()}_service", namespace=node.get_namespace(), context=node.context,
                         use_global_arguments=False, enable_rosout=False, start_parameter_services=False)
        self.node.create_service(CaptionRegions, f"{node.get_fully_qualified_name()}/caption_regions",
                                 self._on_request, qos_profile=QoSProfile(depth=depth))
        self.executor = SingleThreadedExecutor(context=node.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, name="finecaption-service", daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        while self.running:
            try:
                self.executor.spin_once(timeout_sec=0.25)
            except Exception as err:  # the context went down under it (shutdown): nothing left to serve
                if self.running and self.context.ok():
                    self.log.error("service_executor", f"service executor failed: {type(err).__name__}: {err}")
                return

    def _on_request(self, request, response):
        job = ServiceJob(request, response, time.monotonic())
        refusal = self._hand_over(job)
        if refusal is None:
            while not job.done.wait(0.25):
                if not self.running:
                    break
            if job.done.is_set():
                return response
            refusal = "finecaption_node is shutting down"
        response.success, response.message = False, refusal
        return response

    def stop(self) -> None:
        """Stop answering (requests still waiting are told the node is shutting down) and destroy the helper node."""
        self.running = False
        if self.thread is not threading.current_thread():
            self.thread.join(timeout=10.0)
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
