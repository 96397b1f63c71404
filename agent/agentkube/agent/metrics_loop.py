"""The metrics loop: on its own thread, once per interval, runs playbooks/metrics.yml through the job runner
(its own ident, so it never shares a private directory with a job), turns the structured result into
metric entries (agentkube.core.metrics) and posts them by agentInstanceId, a bounded number at a time, on
long-lived worker threads (the Fulcrum client keeps one keep-alive session per thread).

It never overlaps itself (one thread, and a lock around a cycle) and never blocks job processing: jobs,
the heartbeat and the poller share nothing with it but the client and the runner's event log queue. A
post that fails after its attempts is counted as dropped (never silently lost); collection failures
(Proxmox down, a tenant unreachable) are counted and kept in the last cycle's report.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from agentkube.adapters.fulcrum_client import FulcrumClient, FulcrumError
from agentkube.adapters.job_runner import JobRunner, PlaybookRun
from agentkube.core.metrics import (
    MetricEntry,
    ThroughputTracker,
    collection_problems,
    entries_from_result,
    vm_state_counts,
)
from agentkube.core.settings import MetricsSettings

log = logging.getLogger(__name__)

RUN_IDENT = "metrics"


@dataclass
class CycleReport:
    """What one collection did."""

    started_at: float                      # monotonic
    duration_s: float = 0.0
    collect_s: float = 0.0                 # the playbook's share of duration_s
    post_s: float = 0.0                    # posting's share
    ok: bool = False                       # the playbook ran and returned a result
    error: str = ""                        # why not
    problems: list[str] = field(default_factory=list)  # parts that failed (proxmox, kamaji, tenants)
    proxmox_ok: bool = False
    kamaji_ok: bool = False
    entries: int = 0
    posted: int = 0
    dropped: int = 0
    vm_states: dict[str, Any] = field(default_factory=dict)


@dataclass
class MetricsCounters:
    cycles: int = 0
    cycles_failed: int = 0
    cycles_overrun: int = 0                # a cycle outlasted the interval (the next one started late)
    posts: int = 0
    drops: int = 0
    drop_reasons: Counter[str] = field(default_factory=Counter)
    proxmox_failures: int = 0
    kamaji_failures: int = 0
    tenant_failures: int = 0


class MetricsLoop:
    def __init__(
        self,
        client: FulcrumClient,
        runner: JobRunner,
        settings: MetricsSettings,
        *,
        inventory: str | None,
        operator_vars: Callable[[], dict[str, Any]] = dict,
        first_delay_s: float | None = None,
    ):
        self.client = client
        self.runner = runner
        self.settings = settings
        self.inventory = inventory
        self._operator_vars = operator_vars
        self.first_delay_s = settings.interval_s if first_delay_s is None else first_delay_s
        self.tracker = ThroughputTracker()
        self.counters = MetricsCounters()
        self.last: CycleReport | None = None
        self._lock = threading.Lock()          # counters and last
        self._cycle_lock = threading.Lock()    # one cycle at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._posters = ThreadPoolExecutor(settings.post_concurrency, thread_name_prefix="metrics-post")

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="metrics", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop: a running collection is canceled (the runner's cancel event), pending posts are dropped."""
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=timeout_s)
        self._posters.shutdown(wait=True, cancel_futures=True)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        next_at = time.monotonic() + self.first_delay_s
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            try:
                self.run_cycle()
            except Exception:  # never let one bad cycle end the loop
                log.exception("metrics: cycle failed unexpectedly")
            next_at += self.settings.interval_s
            now = time.monotonic()
            if next_at < now:  # the cycle outlasted the interval: start the next one now, never two at once
                with self._lock:
                    self.counters.cycles_overrun += 1
                log.warning("metrics: a collection outlasted the %.0fs interval", self.settings.interval_s)
                next_at = now

    # -- one cycle --------------------------------------------------------------------------------
    def run_cycle(self) -> CycleReport | None:
        """Collect and post once. None when a cycle is already running (never two at once)."""
        if not self._cycle_lock.acquire(blocking=False):
            return None
        try:
            report = self._cycle()
        finally:
            self._cycle_lock.release()
        with self._lock:
            self.last = report
            c = self.counters
            c.cycles += 1
            c.cycles_failed += 0 if report.ok else 1
            if report.ok:
                c.proxmox_failures += sum(1 for p in report.problems if p.startswith("proxmox:"))
                c.kamaji_failures += sum(1 for p in report.problems if p.startswith("kamaji:"))
                c.tenant_failures += sum(1 for p in report.problems if p.startswith("tenant "))
        return report

    def _cycle(self) -> CycleReport:
        report = CycleReport(started_at=time.monotonic())
        try:
            operator_vars = self._operator_vars()
        except (FulcrumError, ValueError) as e:  # ValueError: a configuration key the agent refuses
            report.error = f"operator settings could not be resolved: {e}"
            return self._finish(report)
        run = PlaybookRun(
            ident=RUN_IDENT, playbook=self.settings.playbook, variables={"agentkube_metrics": {"interval_s":
                                                                         self.settings.interval_s}},
            operator_vars=operator_vars, inventory=self.inventory, timeout_s=self.settings.timeout_s,
            idle_timeout_s=self.settings.timeout_s,
        )
        outcome = self.runner.run(run, cancel=self._stop)
        report.collect_s = time.monotonic() - report.started_at
        if not outcome.ok or not isinstance(outcome.result, dict):
            report.error = outcome.error or "the metrics playbook returned no result"
            return self._finish(report)
        result = outcome.result
        report.ok = True
        report.proxmox_ok = bool((result.get("proxmox") or {}).get("ok"))
        report.kamaji_ok = bool((result.get("kamaji") or {}).get("ok"))
        report.problems = collection_problems(result)
        report.vm_states = vm_state_counts(result.get("proxmox") or {}, str(result.get("namespace") or ""))
        entries = entries_from_result(result, self.tracker)
        report.entries = len(entries)
        post_started = time.monotonic()
        report.posted, report.dropped = self.post(entries)
        report.post_s = time.monotonic() - post_started
        return self._finish(report)

    def _finish(self, report: CycleReport) -> CycleReport:
        report.duration_s = time.monotonic() - report.started_at
        if not report.ok:
            log.warning("metrics: collection failed: %s", report.error)
        else:
            log.info("metrics: %d entries, %d posted, %d dropped in %.1fs%s", report.entries, report.posted,
                     report.dropped, report.duration_s,
                     f"; problems: {'; '.join(report.problems[:5])}" if report.problems else "")
        return report

    # -- posting ----------------------------------------------------------------------------------
    def post(self, entries: list[MetricEntry]) -> tuple[int, int]:
        """Post every entry, post_concurrency at a time; returns (posted, dropped)."""
        if not entries:
            return 0, 0
        results = list(self._posters.map(self._post_one, entries))
        posted = sum(1 for r in results if r is None)
        with self._lock:
            self.counters.posts += posted
            self.counters.drops += len(results) - posted
            self.counters.drop_reasons.update(r for r in results if r is not None)
        return posted, len(results) - posted

    def _post_one(self, entry: MetricEntry) -> str | None:
        """None when delivered, else the drop reason (HTTP status or 'unavailable')."""
        if self._stop.is_set():
            return "stopped"
        try:
            # the client retries connection errors and 5xx (with backoff) up to post_attempts times
            self.client.request("POST", "/metric-entries", json=entry.to_api(), ok=(200, 201),
                                attempts=self.settings.post_attempts)
        except FulcrumError as e:
            log.debug("metrics: dropped %s/%s %s: %s", entry.agent_instance_id, entry.resource_id,
                      entry.type_name, e)
            return str(e.status) if e.status else "unavailable"
        return None

    # -- health -----------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            c, last = self.counters, self.last
            return {
                "alive": self.alive,
                "cycles": c.cycles, "cycles_failed": c.cycles_failed, "cycles_overrun": c.cycles_overrun,
                "posts": c.posts, "drops": c.drops, "drop_reasons": dict(c.drop_reasons),
                "proxmox_failures": c.proxmox_failures, "kamaji_failures": c.kamaji_failures,
                "tenant_failures": c.tenant_failures,
                "last_duration_s": last.duration_s if last else None,
                "last_age_s": time.monotonic() - last.started_at if last else None,
                "last_ok": last.ok if last else None,
                "vm_states": dict(last.vm_states) if last and last.ok else {},
            }
