"""The hand-over between the executor thread and the inference worker: the latest-frame slot (at most one frame
waits; a newer frame replaces it and the replaced one is counted as dropped) and a bounded queue of service
requests, which the worker takes in turn with the frames so that neither starves the other."""
from __future__ import annotations

import threading
from collections import deque
from typing import Any

FRAME, REQUEST = "frame", "request"


class LatestSlot:
    def __init__(self, max_requests: int = 0):
        self._cond = threading.Condition()
        self._item: Any = None
        self._has_item = False
        self._requests: deque = deque()
        self.max_requests = max_requests
        self._last = REQUEST
        self._closed = False
        self.dropped = 0

    def put(self, item: Any) -> Any:
        """Store `item`; return the frame it replaced (now dropped), or None."""
        with self._cond:
            replaced = self._item if self._has_item else None
            if self._has_item:
                self.dropped += 1
            self._item, self._has_item = item, True
            self._cond.notify()
            return replaced

    def put_request(self, request: Any) -> bool:
        """Queue a service request; False when the queue is full or closed (the caller answers 'busy')."""
        with self._cond:
            if self._closed or len(self._requests) >= self.max_requests:
                return False
            self._requests.append(request)
            self._cond.notify()
            return True

    def take(self, timeout: float | None = None) -> Any:
        """Wait for a frame and remove it; None on timeout or once closed. (Frames only; see take_work.)"""
        with self._cond:
            if not self._cond.wait_for(lambda: self._has_item or self._closed, timeout):
                return None
            return self._take_frame() if self._has_item else None

    def take_work(self, timeout: float | None = None) -> tuple[str, Any] | None:
        """Wait for a frame or a request: (FRAME, frame) or (REQUEST, request), alternating when both wait;
        None on timeout or once closed."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._has_item or self._requests or self._closed, timeout):
                return None
            if self._closed:
                return None
            if self._requests and (not self._has_item or self._last == FRAME):
                self._last = REQUEST
                return REQUEST, self._requests.popleft()
            self._last = FRAME
            return FRAME, self._take_frame()

    def _take_frame(self) -> Any:
        item, self._item, self._has_item = self._item, None, False
        return item

    def close(self) -> list:
        """Wake the worker for good; returns the requests still queued (their callers are told)."""
        with self._cond:
            self._closed = True
            left, self._requests = list(self._requests), deque()
            self._cond.notify_all()
            return left

    @property
    def waiting(self) -> bool:
        with self._cond:
            return self._has_item

    @property
    def requests_waiting(self) -> int:
        with self._cond:
            return len(self._requests)
