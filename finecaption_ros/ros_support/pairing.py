"""Pair images with masks by header stamp (message_filters is not available): exact, or nearest within a slop.

Streams are assumed in order per topic. When a pair forms, older unpaired messages of both topics can no longer
pair and are dropped at once; messages that wait longer than `timeout_ns` are dropped by `expire`. At most
`max_pending` messages wait per topic, so memory stays bounded whatever the inputs do.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

IMAGE, MASK = "image", "mask"


@dataclass
class Dropped:
    kind: str  # IMAGE or MASK
    stamp_ns: int
    why: str  # "timeout", "superseded" (a newer pair formed), "overflow" (too many waiting), "duplicate"

    def describe(self, pairer: "StampPairer") -> str:
        """The one log line for this drop."""
        partner, stamp = (MASK if self.kind == IMAGE else IMAGE), f"{self.stamp_ns / 1e9:.6f}"
        if self.why == "timeout":
            return (f"{self.kind} stamped {stamp} found no {partner} within sync_timeout = "
                    f"{pairer.timeout_ns / 1e9:g} s; dropped")
        if self.why == "superseded":
            return f"{self.kind} stamped {stamp} never got its {partner} before a newer pair formed; dropped"
        if self.why == "overflow":
            return (f"more than sync_queue_size = {pairer.max_pending} {self.kind}s wait for their {partner}; "
                    f"the oldest ({stamp}) dropped")
        return f"two {self.kind}s with the same stamp {stamp}; the older dropped"


@dataclass
class PairResult:
    pair: tuple[Any, Any] | None = None  # (image item, mask item)
    stamp_ns: int = 0  # the image's stamp
    dropped: list[Dropped] = field(default_factory=list)


class StampPairer:
    def __init__(self, slop_ns: int = 0, timeout_ns: int = 2_000_000_000, max_pending: int = 8):
        self.slop_ns = int(slop_ns)
        self.timeout_ns = int(timeout_ns)
        self.max_pending = int(max_pending)
        self._pending: dict[str, OrderedDict[int, tuple[Any, int]]] = {IMAGE: OrderedDict(), MASK: OrderedDict()}
        self._lock = threading.Lock()

    def pending(self, kind: str) -> int:
        return len(self._pending[kind])

    def add(self, kind: str, stamp_ns: int, item: Any, now_ns: int) -> PairResult:
        """Add an image or a mask; return the pair it completes, if any, and what had to be dropped."""
        other = MASK if kind == IMAGE else IMAGE
        result = PairResult()
        with self._lock:
            result.dropped.extend(self._expire(now_ns))
            waiting = self._pending[other]
            best = None
            for stamp in waiting:
                gap = abs(stamp - stamp_ns)
                if gap <= self.slop_ns and (best is None or gap <= abs(best - stamp_ns)):
                    best = stamp
            if best is not None:
                partner, _ = waiting.pop(best)
                image_stamp = stamp_ns if kind == IMAGE else best
                result.pair = (item, partner) if kind == IMAGE else (partner, item)
                result.stamp_ns = image_stamp
                for side, limit in ((kind, stamp_ns), (other, best)):
                    for stamp in [s for s in self._pending[side] if s < limit]:
                        del self._pending[side][stamp]
                        result.dropped.append(Dropped(side, stamp, "superseded"))
                return result
            mine = self._pending[kind]
            if stamp_ns in mine:
                del mine[stamp_ns]
                result.dropped.append(Dropped(kind, stamp_ns, "duplicate"))
            mine[stamp_ns] = (item, now_ns)
            while len(mine) > self.max_pending:
                stamp, _ = mine.popitem(last=False)
                result.dropped.append(Dropped(kind, stamp, "overflow"))
        return result

    def expire(self, now_ns: int) -> list[Dropped]:
        with self._lock:
            return self._expire(now_ns)

    def _expire(self, now_ns: int) -> list[Dropped]:
        dropped = []
        for kind, waiting in self._pending.items():
            for stamp, (_, arrived) in list(waiting.items()):
                if now_ns - arrived > self.timeout_ns:
                    del waiting[stamp]
                    dropped.append(Dropped(kind, stamp, "timeout"))
        return dropped

    def clear(self) -> None:
        with self._lock:
            for waiting in self._pending.values():
                waiting.clear()
