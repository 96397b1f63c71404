"""Job statistics kept by the agent loop: processed / failed / running, durations per action."""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field

# Upper bounds (seconds) of the job duration histogram: a stop takes seconds, a create with workers many minutes.
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0)


@dataclass
class ActionStats:
    count: int = 0
    failed: int = 0
    total_s: float = 0.0
    max_s: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * len(DURATION_BUCKETS))  # cumulative, le each bound


@dataclass
class JobStats:
    processed: int = 0
    failed: int = 0
    running: int = 0
    per_action: dict[str, ActionStats] = field(default_factory=lambda: defaultdict(ActionStats))
    events: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # takeovers, dropped results
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def started(self) -> None:
        with self._lock:
            self.running += 1

    def finished(self, action: str, ok: bool, duration_s: float) -> None:
        with self._lock:
            self.running -= 1
            self.processed += 1
            a = self.per_action[action]
            a.count += 1
            a.total_s += duration_s
            a.max_s = max(a.max_s, duration_s)
            for i, bound in enumerate(DURATION_BUCKETS):
                if duration_s <= bound:
                    a.buckets[i] += 1
            if not ok:
                self.failed += 1
                a.failed += 1

    def count(self, event: str) -> None:
        with self._lock:
            self.events[event] += 1

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "processed": self.processed, "failed": self.failed, "running": self.running,
                "actions": {k: {**vars(v), "buckets": list(v.buckets)} for k, v in self.per_action.items()},
                "events": dict(self.events),
            }
