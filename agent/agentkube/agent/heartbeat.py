"""The heartbeat: `PUT /agents/me/status Connected` on its own thread, at a fixed interval, never delayed
by jobs (it shares nothing with them but the client, whose HTTP sessions are per thread)."""

from __future__ import annotations

import logging
import threading
import time

from agentkube.adapters.fulcrum_client import FulcrumClient, FulcrumError, TokenRejected

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, client: FulcrumClient, interval_s: float, on_token_rejected=None):
        self.client = client
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._on_token_rejected = on_token_rejected
        self.last_ok: float | None = None      # monotonic time of the last accepted heartbeat
        self.sent: list[float] = []            # monotonic send times (bounded), for health and tests
        self.failures = 0

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval_s + 5)

    def age_s(self) -> float | None:
        return None if self.last_ok is None else time.monotonic() - self.last_ok

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.sent.append(time.monotonic())
            del self.sent[:-1000]
            try:
                # one attempt: the next beat is the retry, so a slow Fulcrum never stretches the interval
                self.client.set_status("Connected", attempts=1)
                self.last_ok = time.monotonic()
            except TokenRejected as e:
                log.error("heartbeat: %s", e)
                if self._on_token_rejected:
                    self._on_token_rejected(e)
                return
            except FulcrumError as e:
                self.failures += 1
                log.warning("heartbeat failed: %s", e)
            next_at += self.interval_s
            self._stop.wait(max(0.0, next_at - time.monotonic()))
