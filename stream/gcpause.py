"""``recall_gc_pause_seconds{generation}``: how long each collection of Python's cyclic
GC held the thread that ran it.

Why: the GC runs in whichever thread allocates, mostly the event loop's, and a full
collection walks every tracked object the worker holds (at 1M items and 20,000 users,
traced at 500 requests/s + 5,000 clicks/s: 40-80 ms every 10-15 s, the younger ones 2-7
ms about every second). Every request waiting meanwhile waits that long. The loop-lag
histogram sees such a pause only when its timer is due within it, and cannot tell it
from a saturated core; this names it.

The GC callback only appends to a deque: it can run inside any allocation, also one
made while a metric's (non-reentrant) lock is held, so it takes no lock itself. The
event loop moves the durations into the histogram (:meth:`GCPauses.publish`).
"""

from __future__ import annotations

import gc
import time
from collections import deque
from typing import Any

#: durations kept between two publishes (a backlog beyond it drops the oldest)
BACKLOG = 10_000


class GCPauses:
    """Times the cyclic GC's collections into ``histogram`` (labelled by generation)."""

    def __init__(self, histogram: Any) -> None:
        self.histogram = histogram
        self._t0 = 0.0
        self._done: deque[tuple[int, float]] = deque(maxlen=BACKLOG)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        # one collection at a time (the GC does not nest), so one start time
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self._done.append((info["generation"], time.perf_counter() - self._t0))

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def remove(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def publish(self) -> int:
        """Observe the collections timed since the last call; returns how many."""
        n = 0
        while self._done:
            generation, seconds = self._done.popleft()
            self.histogram.labels(str(generation)).observe(seconds)
            n += 1
        return n
