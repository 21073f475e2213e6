"""Back-pressure: refuse new instances before the disk or the queue overflows.

Asked once per C-STORE, so it must cost next to nothing: free space comes from
``statvfs`` at most once per :data:`DISK_CHECK_SECONDS`, and the queue depth is
a counter the SCP raises and the dispatcher lowers (and resets from the
database every few seconds, so that it cannot drift). When a limit is passed,
the SCP answers 0xA700 "out of resources" with a comment naming the limit; the
sender retries later, and reception resumes by itself once the condition clears.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from deid_node.logs import get_logger
from deid_node.security_config import Limits

log = get_logger("deid_node.backpressure")

DISK_CHECK_SECONDS = 1.0
DISK_FULL = "out of resources: free disk below floor"
QUEUE_FULL = "queue depth limit reached"
SHUTTING_DOWN = "out of resources: node shutting down"


class Backpressure:
    def __init__(self, limits: Limits, data_dir: Path, queue_depth: int = 0) -> None:
        self.limits = limits
        self.data_dir = data_dir
        self._lock = threading.Lock()
        self._depth = queue_depth
        self._free_mb = float("inf")
        self._checked_at = float("-inf")
        self._refusing: str | None = None  # logged on change only, not per C-STORE
        self._stopping = False
        self.refused = 0

    @property
    def queue_depth(self) -> int:
        return self._depth

    def added(self, n: int = 1) -> None:
        with self._lock:
            self._depth += n

    def removed(self, n: int = 1) -> None:
        with self._lock:
            self._depth = max(0, self._depth - n)

    def reset_depth(self, depth: int) -> None:
        with self._lock:
            self._depth = depth

    def stop_accepting(self) -> None:
        """From now on every C-STORE is refused (the node is stopping)."""
        self._stopping = True

    def free_disk_mb(self) -> float:
        now = time.monotonic()
        if now - self._checked_at >= DISK_CHECK_SECONDS:
            try:
                st = os.statvfs(self.data_dir)
                self._free_mb = st.f_bavail * st.f_frsize / 1_048_576
            except OSError:
                self._free_mb = float("inf")  # cannot tell: let the write itself fail
            self._checked_at = now
        return self._free_mb

    def refusal(self) -> str | None:
        """The ErrorComment for a C-STORE that must be refused now, or None."""
        reason = None
        floor = self.limits.min_free_disk_mb
        if self._stopping:
            reason = SHUTTING_DOWN
        elif floor and self.free_disk_mb() < floor:
            reason = DISK_FULL
        elif self.limits.max_queue_depth and self._depth >= self.limits.max_queue_depth:
            reason = QUEUE_FULL
        if reason is not None:
            with self._lock:
                self.refused += 1
        if reason != self._refusing:
            self._refusing = reason
            if reason is None:
                log.info("reception_resumed")
            else:
                log.warning(
                    "reception_refused",
                    reason=reason,
                    free_disk_mb=round(self._free_mb) if self._free_mb != float("inf") else None,
                    queue_depth=self._depth,
                )
        return reason
