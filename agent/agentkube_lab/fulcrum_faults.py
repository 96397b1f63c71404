"""Fault injection for the Fulcrum emulator: error answers, latency and dropped connections on calls
whose path matches a regular expression, for a bounded number of times, plus a switch that takes the
whole emulator "down" for agents (every agent call is dropped).

`drop` drops the connection instead of handling the call; `drop_after` handles the call (a claim or a
report takes effect) and then drops the connection without answering: the answer is lost on the way."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass


@dataclass
class Fault:
    pattern: re.Pattern[str]
    status: int | None = None  # answer this status (an ErrorRes body) instead of handling the call
    delay: float = 0.0  # seconds to wait before answering (or before the fault's status/drop)
    drop: bool = False  # close the connection without answering (the call is not handled)
    times: int | None = 1  # how many matching calls it affects; None = until cleared
    method: str | None = None  # only calls with this HTTP method
    include_admin: bool = False  # also affect calls made with the admin token
    hits: int = 0
    drop_after: bool = False  # handle the call, then close the connection without answering

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.hits >= self.times


class FaultInjector:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self.down = False

    def inject(
        self,
        path_regex: str,
        status: int | None = None,
        delay: float = 0.0,
        drop: bool = False,
        times: int | None = 1,
        method: str | None = None,
        include_admin: bool = False,
        drop_after: bool = False,
    ) -> Fault:
        """Add a fault for calls whose path (with the /api/v1 prefix and query) matches `path_regex`
        (re.search). Without status, delay, drop or drop_after it defaults to a 503 answer."""
        if drop_after and (status is not None or drop):
            raise ValueError("drop_after handles the call: it excludes status and drop")
        if status is None and not drop and not delay and not drop_after:
            status = 503
        if status is not None and not 400 <= status <= 599:
            raise ValueError(f"status must be an HTTP error status (400-599), got {status}")
        if delay < 0:
            raise ValueError("delay must be >= 0")
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 or None")
        fault = Fault(
            re.compile(path_regex),
            status,
            delay,
            drop,
            times,
            method.upper() if method else None,
            include_admin,
            drop_after=drop_after,
        )
        with self._lock:
            self._faults.append(fault)
        return fault

    def set_down(self, down: bool) -> None:
        self.down = bool(down)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
        self.down = False

    def take(self, method: str, path: str, is_admin: bool) -> Fault | None:
        """The first live fault matching this call, counted as used."""
        with self._lock:
            for fault in self._faults:
                if fault.exhausted or (is_admin and not fault.include_admin):
                    continue
                if fault.method and fault.method != method:
                    continue
                if fault.pattern.search(path):
                    fault.hits += 1
                    return fault
        return None

    @property
    def faults(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)
