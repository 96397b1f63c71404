"""The agent's health endpoint: a small stdlib HTTP server (loopback by default) on its own thread.

    /healthz   200 when the agent loop ran recently and the last heartbeat is recent, else 503
    /readyz    200 when Fulcrum answered recently (FulcrumClient.last_success), else 503
    /metrics   Prometheus text format (0.0.4, prometheus_client): job statistics and duration histograms,
               leadership, takeovers and dropped results, VM state counts, heartbeat age, metric posts and
               drops, metrics collection cycles and failures
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from agentkube.agent.job_stats import DURATION_BUCKETS
from agentkube.core.metrics import VM_STATES, job_stats

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes


class Probes(Protocol):
    def healthz(self) -> tuple[bool, str]: ...
    def readyz(self) -> tuple[bool, str]: ...
    def metrics_text(self) -> str: ...


# ------------------------------------------------------------------------------- Prometheus exposition
def _value(value: float | int | None) -> float:
    return math.nan if value is None else float(value)


class _Snapshot:
    """A prometheus_client collector over the snapshots the agent keeps (JobStats, MetricsLoop, heartbeat):
    the page is built from them at each scrape, so nothing is counted twice."""

    def __init__(self, **parts: Any):
        self.parts = parts

    def collect(self) -> Iterator[Metric]:
        p = self.parts
        js, events, m = job_stats(p["jobs"]), p["jobs"].get("events") or {}, p["metrics"] or {}
        yield CounterMetricFamily("agentkube_jobs_processed", "Jobs finished (completed or failed).",
                                  value=js["processed"])
        yield CounterMetricFamily("agentkube_jobs_failed", "Jobs that failed.", value=js["failed"])
        yield GaugeMetricFamily("agentkube_jobs_running", "Jobs running now.", value=js["running"])
        durations = HistogramMetricFamily("agentkube_job_duration_seconds", "Job durations per action.",
                                          labels=["action"])
        longest = GaugeMetricFamily("agentkube_job_duration_max_seconds", "Longest job per action.", labels=["action"])
        failed = CounterMetricFamily("agentkube_jobs_failed_by_action", "Failed jobs per action.", labels=["action"])
        for action, a in js["actions"].items():
            raw = p["jobs"]["actions"][action]
            buckets = [(repr(le), n) for le, n in zip(DURATION_BUCKETS, raw.get("buckets") or [], strict=False)]
            durations.add_metric([action], buckets=[*buckets, ("+Inf", a["count"])], sum_value=a["total_s"])
            longest.add_metric([action], a["max_s"])
            failed.add_metric([action], a["failed"])
        yield from (durations, longest, failed)
        yield GaugeMetricFamily("agentkube_leader", "1 on the active instance, 0 on a standby.", value=int(p["leader"]))
        yield CounterMetricFamily("agentkube_jobs_taken_over",
                                  "Jobs Fulcrum held in Processing for this agent that no run here knew, run again.",
                                  value=events.get("jobs_taken_over", 0))
        dropped = CounterMetricFamily(
            "agentkube_results_dropped",
            "Job results never delivered: the job was gone (forbidden) or Fulcrum kept refusing it (refused).",
            labels=["reason"])
        for reason in ("forbidden", "refused"):
            dropped.add_metric([reason], events.get(f"results_dropped_{reason}", 0))
        yield dropped
        yield GaugeMetricFamily("agentkube_heartbeat_age_seconds",
                                "Seconds since the last accepted heartbeat (NaN: none).",
                                value=_value(p["heartbeat_age_s"]))
        yield CounterMetricFamily("agentkube_heartbeat_failures", "Heartbeats Fulcrum did not accept.",
                                  value=p["heartbeat_failures"])
        yield GaugeMetricFamily("agentkube_fulcrum_last_success_age_seconds",
                                "Seconds since Fulcrum last answered (NaN: never).", value=_value(p["fulcrum_age_s"]))
        vm_states = m.get("vm_states") or {}
        total = vm_states.get("total") or {}
        vms = GaugeMetricFamily("agentkube_vms", "Tenant VMs by state, all services (last collection).",
                                labels=["state"])
        for state in VM_STATES if total else ():
            vms.add_metric([state], total.get(state, 0))
        per_service = GaugeMetricFamily("agentkube_service_vms", "Tenant VMs by state per service (agentInstanceId).",
                                        labels=["service", "state"])
        for svc, counts in sorted((vm_states.get("services") or {}).items()):
            for state in VM_STATES:
                per_service.add_metric([svc, state], counts.get(state, 0))
        yield from (vms, per_service)
        for name, help_text, key in (
            ("agentkube_metric_posts", "Metric entries Fulcrum accepted.", "posts"),
            ("agentkube_metric_drops", "Metric entries dropped after their attempts.", "drops"),
            ("agentkube_metric_cycles", "Metrics collections run.", "cycles"),
            ("agentkube_metric_cycles_failed", "Metrics collections whose playbook failed.", "cycles_failed"),
            ("agentkube_metric_cycles_overrun", "Metrics collections that outlasted the interval.", "cycles_overrun"),
        ):
            yield CounterMetricFamily(name, help_text, value=m.get(key, 0))
        parts = CounterMetricFamily("agentkube_metric_collection_failures",
                                    "Collections where a part failed (proxmox, kamaji) or a tenant was unreachable.",
                                    labels=["part"])
        for part in ("proxmox", "kamaji", "tenant"):
            parts.add_metric([part], m.get(f"{part}_failures", 0))
        yield parts
        cycle = GaugeMetricFamily("agentkube_metric_cycle_duration_seconds", "Duration of the last metrics collection.",
                                  labels=[])
        if p["metrics"] is not None:
            cycle.add_metric([], _value(m.get("last_duration_s")))
        yield cycle


def render_metrics(*, jobs: dict[str, Any], heartbeat_age_s: float | None, heartbeat_failures: int,
                   fulcrum_age_s: float | None, metrics: dict[str, Any] | None, leader: bool = True) -> str:
    """The /metrics page (Prometheus text 0.0.4, through prometheus_client). `jobs` is JobStats.snapshot();
    `metrics` is MetricsLoop.snapshot() (None: the metrics loop is not running)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(jobs=jobs, heartbeat_age_s=heartbeat_age_s, heartbeat_failures=heartbeat_failures,
                                fulcrum_age_s=fulcrum_age_s, metrics=metrics, leader=leader))
    return generate_latest(registry).decode("utf-8")


# ------------------------------------------------------------------------------- the agent's probes
class AgentProbes:
    """Health answers from a running Agent (duck-typed: state, heartbeat, client, stats, metrics)."""

    def __init__(self, agent: Any, loop_max_age_s: float, heartbeat_max_age_s: float, fulcrum_max_age_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.agent = agent
        self.loop_max_age_s = loop_max_age_s
        self.heartbeat_max_age_s = heartbeat_max_age_s
        self.fulcrum_max_age_s = fulcrum_max_age_s
        self.clock = clock

    def _standby(self) -> str:
        """'' when this instance is the active one, else what /healthz and /readyz say about the leader."""
        status = self.agent.leadership.status()
        return "" if status.is_leader else f"standby ({status.kind}; active: {status.holder or 'unknown'})"

    def healthz(self) -> tuple[bool, str]:
        loop_age = self.clock() - self.agent.state.last_loop
        if self.agent.state.stopping:
            return False, "agent is stopping"
        if loop_age > self.loop_max_age_s:
            return False, f"agent loop last ran {loop_age:.0f}s ago (limit {self.loop_max_age_s:.0f}s)"
        if standby := self._standby():  # a standby sends no heartbeat: its loop waiting is its health
            return True, f"ok: {standby}, loop {loop_age:.1f}s ago"
        hb_age = self.agent.heartbeat.age_s()
        if hb_age is None:
            return False, "no heartbeat accepted yet"
        if hb_age > self.heartbeat_max_age_s:
            return False, f"last heartbeat {hb_age:.0f}s ago (limit {self.heartbeat_max_age_s:.0f}s)"
        return True, f"ok: loop {loop_age:.1f}s ago, heartbeat {hb_age:.1f}s ago"

    def readyz(self) -> tuple[bool, str]:
        if standby := self._standby():  # ready to take over: a rolling update must not wait for it to lead
            return True, f"ok: {standby}"
        last = self.agent.client.last_success
        if last is None:
            return False, "Fulcrum not reached yet"
        age = self.clock() - last
        if age > self.fulcrum_max_age_s:
            return False, f"Fulcrum last answered {age:.0f}s ago (limit {self.fulcrum_max_age_s:.0f}s)"
        return True, f"ok: Fulcrum answered {age:.1f}s ago"

    def metrics_text(self) -> str:
        last = self.agent.client.last_success
        metrics = getattr(self.agent, "metrics", None)
        return render_metrics(
            jobs=self.agent.stats.snapshot(), heartbeat_age_s=self.agent.heartbeat.age_s(),
            heartbeat_failures=self.agent.heartbeat.failures,
            fulcrum_age_s=None if last is None else self.clock() - last,
            metrics=metrics.snapshot() if metrics is not None else None,
            leader=self.agent.leadership.status().is_leader,
        )


# ------------------------------------------------------------------------------- the server
class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path == "/healthz":
                ok, text = self.server.probes.healthz()
                self._send(200 if ok else 503, text + "\n")
            elif path == "/readyz":
                ok, text = self.server.probes.readyz()
                self._send(200 if ok else 503, text + "\n")
            elif path == "/metrics":
                self._send(200, self.server.probes.metrics_text(), CONTENT_TYPE)
            else:
                self._send(404, "not found: /healthz, /readyz, /metrics\n")
        except Exception as e:  # a broken probe is an unhealthy answer, never a dead server
            log.exception("health endpoint %s failed", path)
            self._send(500, f"{type(e).__name__}\n")

    def _send(self, status: int, body: str, content_type: str = "text/plain; charset=utf-8") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("health %s", format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], probes: Probes):
        self.probes = probes
        super().__init__(address, _Handler)


class HealthServer:
    def __init__(self, probes: Probes, host: str = "127.0.0.1", port: int = 0):
        self.probes = probes
        self.host = host
        self.port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> HealthServer:
        self._server = _Server((self.host, self.port), self.probes)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="health", daemon=True)
        self._thread.start()
        log.info("health endpoint on http://%s:%d (/healthz /readyz /metrics)", self.host, self.port)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"
