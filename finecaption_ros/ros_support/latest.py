"""The hand-over between the executor thread and the inference worker: the latest-frame slot of each camera (at
most one frame waits per camera; a newer frame replaces it and the replaced one is counted as dropped) and a
bounded queue of service requests, which the worker takes in turn with the frames so that neither starves the
other. A worker takes the waiting frames of every camera at once, to caption them in one batch; with several
workers, the next worker takes the frames that arrive meanwhile, so two batches may hold frames of one camera (the
node publishes a camera's captions in the order its frames arrived: `claim`)."""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

FRAME, REQUEST = "frame", "request"
_FAILED = object()


@dataclass
class PairedFrame:
    camera: str  # "" for the node's own image + mask topics
    image: Any  # sensor_msgs/Image
    mask: Any
    stamp_ns: int
    received: float  # time.monotonic() when the pair formed
    pairing_s: float  # executor-thread time of both callbacks (header checks + pairing)


@dataclass
class ServiceJob:
    request: Any
    response: Any
    received: float
    done: threading.Event = field(default_factory=threading.Event)


class LatestSlot:
    def __init__(self, max_requests: int = 0):
        self._cond = threading.Condition()
        self._items: dict[Any, Any] = {}  # camera -> its latest frame
        self._requests: deque = deque()
        self.max_requests = max_requests
        self._last = REQUEST
        self._closed = False
        self._claimed: dict[Any, float] = {}  # camera -> arrival time of its newest frame whose captions went out
        self.dropped = 0

    def put(self, item: Any, key: Any = "") -> Any:
        """Store `item` as camera `key`'s latest frame; return the frame it replaced (now dropped), or None."""
        with self._cond:
            replaced = self._items.pop(key, None)
            if replaced is not None:
                self.dropped += 1
            self._items[key] = item
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
        """Wait for a frame of camera "" and remove it; None on timeout or once closed. (See take_work.)"""
        with self._cond:
            if not self._cond.wait_for(lambda: "" in self._items or self._closed, timeout):
                return None
            return self._items.pop("", None)

    def take_work(self, timeout: float | None = None) -> tuple[str, Any] | None:
        """Wait for frames or a request: (FRAME, [the latest frame of every camera that has one]) or
        (REQUEST, request), alternating when both wait; None on timeout or once closed."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._requests or self._closed, timeout):
                return None
            if self._closed:
                return None
            if self._requests and (not self._items or self._last == FRAME):
                self._last = REQUEST
                return REQUEST, self._requests.popleft()
            self._last = FRAME
            return FRAME, self.clear()

    def claim(self, frame: PairedFrame) -> bool:
        """May a worker publish this frame's captions? Only if no frame of its camera that arrived later was
        published first (by another worker, whose batch finished sooner); False means drop it. By arrival, not by
        stamp: a bag that loops or a clock reset sends stamps backwards."""
        with self._cond:
            if frame.received <= self._claimed.get(frame.camera, float("-inf")):
                return False
            self._claimed[frame.camera] = frame.received
            return True

    def clear(self) -> list:
        """Remove the waiting frames (the node stopped taking frames); returns them."""
        with self._cond:
            frames, self._items = list(self._items.values()), {}
            return frames

    def close(self) -> list:
        """Wake the worker for good; returns the requests still queued (their callers are told)."""
        with self._cond:
            self._closed = True
            left, self._requests = list(self._requests), deque()
            self._cond.notify_all()
            return left

    @property
    def waiting(self) -> int:
        """Frames waiting (at most one per camera)."""
        with self._cond:
            return len(self._items)

    @property
    def requests_waiting(self) -> int:
        with self._cond:
            return len(self._requests)

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed


@dataclass
class InFlight:
    """Frames the captioner is working on: `wait()` blocks until its answer is back, `finish()` publishes it."""
    wait: Callable[[], Any]
    finish: Callable[[], Any]


class InferenceWorkers:
    """`count` daemon threads that take work from `slot` until it closes: frames go to `on_frames(frames)`, which
    hands them to the captioner and returns their InFlight (or None when it is done with them), requests to
    `on_request(request)`. An exception from any of them goes to `on_error(err)`: a worker never dies.

    A worker hands the captioner its next frames as soon as the answer for the last ones is back, and publishes
    that answer while the model works on the next: the model (in its own process) is never idle for the time it
    takes to build and publish messages. A service request waits for the batch in flight to be published."""

    def __init__(self, slot: LatestSlot, count: int, on_frames, on_request, on_error):
        self.slot = slot
        self.on_frames, self.on_request, self.on_error = on_frames, on_request, on_error
        self.threads = [threading.Thread(target=self._run, name=f"finecaption-inference-{k}", daemon=True)
                        for k in range(count)]
        for thread in self.threads:
            thread.start()

    def _run(self) -> None:
        flight: InFlight | None = None
        while flight is not None or not self.slot.closed:
            if flight is None:
                work = self.slot.take_work(timeout=0.25)
                if work is not None:
                    flight = self._start(*work)
                continue
            answered = self._guarded(flight.wait) is not _FAILED
            work = self.slot.take_work(timeout=0)  # whatever waits now, without waiting
            following = self._start(*work) if work is not None and work[0] == FRAME else None
            if answered:
                self._guarded(flight.finish)
            flight = following
            if work is not None and work[0] == REQUEST:
                self._guarded(self.on_request, work[1])

    def _start(self, kind: str, item: Any) -> InFlight | None:
        if kind == REQUEST:
            self._guarded(self.on_request, item)
            return None
        flight = self._guarded(self.on_frames, item)
        return None if flight is _FAILED else flight

    def _guarded(self, call, *args):
        try:
            return call(*args)
        except Exception as err:  # noqa: BLE001
            self.on_error(err)
            return _FAILED

    def join(self, timeout: float) -> None:
        """Wait for the workers (after `slot.close()`), but never for the calling thread itself."""
        for thread in self.threads:
            if thread is not threading.current_thread():
                thread.join(timeout)
