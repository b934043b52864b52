"""Latest-frame slot between the executor thread and the inference worker: at most one frame waits; a newer frame
replaces it and the replaced one is counted as dropped."""
from __future__ import annotations

import threading
from typing import Any


class LatestSlot:
    def __init__(self):
        self._cond = threading.Condition()
        self._item: Any = None
        self._has_item = False
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

    def take(self, timeout: float | None = None) -> Any:
        """Wait for a frame and remove it; None on timeout or once closed."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._has_item or self._closed, timeout):
                return None
            if not self._has_item:
                return None
            item, self._item, self._has_item = self._item, None, False
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def waiting(self) -> bool:
        with self._cond:
            return self._has_item
