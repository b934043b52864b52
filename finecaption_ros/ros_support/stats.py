"""Counters, rates and latency statistics for /diagnostics (thread-safe)."""
from __future__ import annotations

import os
import threading
import time
from collections import Counter, deque

from .errors import REJECT_REASONS

# Counted input problems that do not reject a frame, in the order diagnostics lists them.
PROBLEM_COUNTERS = ("empty_masks", "regions_below_min_area", "regions_over_limit", "unmatched_images",
                    "unmatched_masks", "lost_images", "lost_masks")


class RateMeter:
    """Events per second over a sliding window."""

    def __init__(self, window_s: float = 5.0):
        self.window_s = window_s
        self._times: deque[float] = deque()

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._times.append(now)
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        self._trim(now)
        if len(self._times) < 2:
            return 0.0
        span = max(now - self._times[0], 1e-9)
        return (len(self._times) - 1) / span if span < self.window_s else len(self._times) / self.window_s


class Samples:
    """The last `size` values: mean, max and a percentile."""

    def __init__(self, size: int = 200):
        self._values: deque[float] = deque(maxlen=size)

    def add(self, value: float) -> None:
        self._values.append(value)

    def summary(self) -> dict[str, float]:
        if not self._values:
            return {"mean": 0.0, "p95": 0.0, "max": 0.0}
        ordered = sorted(self._values)
        return {"mean": sum(ordered) / len(ordered), "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
                "max": ordered[-1]}


# Per-camera values in /diagnostics (with the `cameras` parameter), each key prefixed with the camera's name.
CAMERA_COUNTERS = ("images_received", "frames_paired", "frames_captioned", "frames_dropped", "frames_stale",
                   "frames_inactive")


class CameraStats:
    def __init__(self):
        self.counts: Counter[str] = Counter()
        self.rates = {name: RateMeter() for name in ("images", "paired", "captioned")}
        self.latency_ms = Samples()


class NodeStats:
    def __init__(self, cameras=()):
        self.cameras = {name: CameraStats() for name in cameras}
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.rates = {name: RateMeter() for name in ("images", "masks", "paired", "captioned")}
        self.latency_ms = Samples()
        self.inference_ms = Samples()
        self.overhead_ms = Samples()
        self.service_ms = Samples()
        self.last_problem = ""
        self.problems_since_report = 0

    def count(self, name: str, n: int = 1, camera: str | None = None) -> None:
        with self.lock:
            self.counts[name] += n
            if camera in self.cameras:
                self.cameras[camera].counts[name] += n

    def tick(self, name: str, camera: str | None = None) -> None:
        with self.lock:
            self.rates[name].tick()
            if camera in self.cameras and name in self.cameras[camera].rates:
                self.cameras[camera].rates[name].tick()

    def captioned(self, camera: str | None, latency_ms: float, inference_ms: float, overhead_ms: float,
                  computed: int, reused: int) -> None:
        """One frame captioned and published."""
        with self.lock:
            self.counts["frames_captioned"] += 1
            self.counts["regions_captioned"] += computed
            self.counts["regions_reused"] += reused
            self.rates["captioned"].tick()
            self.latency_ms.add(latency_ms)
            self.inference_ms.add(inference_ms)
            self.overhead_ms.add(overhead_ms)
            if camera in self.cameras:
                cam = self.cameras[camera]
                cam.counts["frames_captioned"] += 1
                cam.rates["captioned"].tick()
                cam.latency_ms.add(latency_ms)

    def reject(self, reason: str, message: str) -> None:
        with self.lock:
            self.rejected[reason] += 1
            self.counts["frames_rejected"] += 1
            self.last_problem = message
            self.problems_since_report += 1

    def problem(self, name: str, message: str, n: int = 1) -> None:
        """A counted input problem that does not reject a frame (skipped regions, unmatched messages, ...)."""
        with self.lock:
            self.counts[name] += n
            self.last_problem = message
            self.problems_since_report += 1

    def snapshot(self) -> dict:
        with self.lock:
            now = time.monotonic()
            snap = {
                "counts": dict(self.counts),
                "rejected": dict(self.rejected),
                "rates": {k: m.rate(now) for k, m in self.rates.items()},
                "latency_ms": self.latency_ms.summary(),
                "inference_ms": self.inference_ms.summary(),
                "overhead_ms": self.overhead_ms.summary(),
                "service_ms": self.service_ms.summary(),
                "last_problem": self.last_problem,
                "problems_since_report": self.problems_since_report,
                "cameras": {name: {"counts": dict(c.counts), "rates": {k: m.rate(now) for k, m in c.rates.items()},
                                   "latency_ms": c.latency_ms.summary()} for name, c in self.cameras.items()},
            }
            self.problems_since_report = 0
            return snap

    @staticmethod
    def summary(snap: dict, active: bool = True) -> tuple[bool, str]:
        """(warn, the /diagnostics status message) of a snapshot: the last problem, or how captioning goes."""
        if snap["problems_since_report"]:
            return True, snap["last_problem"]
        if snap["counts"].get("frames_captioned"):
            return False, f"captioning {snap['rates']['captioned']:.1f} Hz, latency {snap['latency_ms']['mean']:.0f} ms"
        return False, "waiting for paired image + mask frames" if active else "inactive"

    @staticmethod
    def diagnostic_values(snap: dict) -> dict:
        """The /diagnostics key-values of a snapshot: counts, rejections by reason, rates and latencies."""
        counts, rates = snap["counts"], snap["rates"]
        values = {name: counts.get(name, 0) for name in ("images_received", "masks_received", "frames_paired",
                                                          "frames_captioned", "frames_dropped", "frames_stale",
                                                          "frames_inactive", "frames_rejected")}
        values.update({f"rejected_{reason}": snap["rejected"].get(reason, 0) for reason in REJECT_REASONS})
        values.update({name: counts.get(name, 0) for name in
                       PROBLEM_COUNTERS + ("regions_captioned", "regions_reused", "service_calls", "service_errors")})
        values.update({f"{name}_rate_hz": f"{rates[key]:.2f}" for name, key in
                       (("image", "images"), ("mask", "masks"), ("paired", "paired"), ("caption", "captioned"))})
        for stat in ("mean", "p95", "max"):
            values[f"latency_{stat}_ms"] = f"{snap['latency_ms'][stat]:.1f}"
        values.update({"inference_mean_ms": f"{snap['inference_ms']['mean']:.1f}",
                       "overhead_mean_ms": f"{snap['overhead_ms']['mean']:.2f}",
                       "service_latency_p95_ms": f"{snap['service_ms']['p95']:.1f}",
                       "last_problem": snap["last_problem"]})
        for name, cam in snap["cameras"].items():
            values.update({f"{name}.{key}": cam["counts"].get(key, 0) for key in CAMERA_COUNTERS})
            values.update({f"{name}.{key}_rate_hz": f"{cam['rates'][key]:.2f}" for key in cam["rates"]})
            values.update({f"{name}.latency_{stat}_ms": f"{cam['latency_ms'][stat]:.1f}" for stat in ("mean", "p95")})
        return values


def rss_mb(pid: int | str = "self") -> float:
    """Resident memory of process `pid` (this one by default), 0 when it cannot be read."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0
