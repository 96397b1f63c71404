"""The agent's health endpoint: a small stdlib HTTP server (loopback by default) on its own thread.

    /healthz   200 when the agent loop ran recently and the last heartbeat is recent, else 503
    /readyz    200 when Fulcrum answered recently (FulcrumClient.last_success), else 503
    /metrics   Prometheus text format (0.0.4): job statistics, VM state counts, heartbeat age,
               metric posts and drops, metrics collection cycles and failures
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from agentkube.core.metrics import VM_STATES, job_stats

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Probes(Protocol):
    def healthz(self) -> tuple[bool, str]: ...
    def readyz(self) -> tuple[bool, str]: ...
    def metrics_text(self) -> str: ...


# ------------------------------------------------------------------------------- Prometheus text
def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float | int | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "NaN"
    if isinstance(value, float) and math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if isinstance(value, float) else str(int(value))


class PromText:
    """Builds the exposition text: one HELP/TYPE block per family, samples with escaped labels."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple[str, dict[str, str], float | int | None]]) -> None:
        """samples: (suffix, labels, value); suffix '' or e.g. '_sum' / '_count' for summaries."""
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for suffix, labels, value in samples:
            label_text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
            self.lines.append(f"{name}{suffix}{{{label_text}}} {_number(value)}" if label_text
                              else f"{name}{suffix} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render_metrics(*, jobs: dict[str, Any], heartbeat_age_s: float | None, heartbeat_failures: int,
                   fulcrum_age_s: float | None, metrics: dict[str, Any] | None, leader: bool = True) -> str:
    """The /metrics page. `jobs` is JobStats.snapshot(); `metrics` is MetricsLoop.snapshot() (None: the
    metrics loop is not running)."""
    p = PromText()
    js = job_stats(jobs)
    p.family("agentkube_jobs_processed_total", "counter", "Jobs finished (completed or failed).",
             [("", {}, js["processed"])])
    p.family("agentkube_jobs_failed_total", "counter", "Jobs that failed.", [("", {}, js["failed"])])
    p.family("agentkube_jobs_running", "gauge", "Jobs running now.", [("", {}, js["running"])])
    p.family("agentkube_job_duration_seconds", "summary", "Job durations per action.",
             [s for action, a in js["actions"].items()
              for s in (("_sum", {"action": action}, a["total_s"]), ("_count", {"action": action}, a["count"]))])
    p.family("agentkube_job_duration_max_seconds", "gauge", "Longest job per action.",
             [("", {"action": action}, a["max_s"]) for action, a in js["actions"].items()])
    p.family("agentkube_jobs_failed_by_action_total", "counter", "Failed jobs per action.",
             [("", {"action": action}, a["failed"]) for action, a in js["actions"].items()])
    events = jobs.get("events") or {}
    p.family("agentkube_leader", "gauge", "1 on the active instance, 0 on a standby.", [("", {}, int(leader))])
    p.family("agentkube_jobs_taken_over_total", "counter",
             "Jobs Fulcrum held in Processing for this agent that no run here knew, run again.",
             [("", {}, events.get("jobs_taken_over", 0))])
    p.family("agentkube_results_dropped_total", "counter",
             "Job results never delivered: the job was gone (forbidden) or Fulcrum kept refusing it (refused).",
             [("", {"reason": r}, events.get(f"results_dropped_{r}", 0)) for r in ("forbidden", "refused")])
    p.family("agentkube_heartbeat_age_seconds", "gauge", "Seconds since the last accepted heartbeat (NaN: none).",
             [("", {}, heartbeat_age_s)])
    p.family("agentkube_heartbeat_failures_total", "counter", "Heartbeats Fulcrum did not accept.",
             [("", {}, heartbeat_failures)])
    p.family("agentkube_fulcrum_last_success_age_seconds", "gauge",
             "Seconds since Fulcrum last answered (NaN: never).", [("", {}, fulcrum_age_s)])
    m = metrics or {}
    vm_states = m.get("vm_states") or {}
    total = vm_states.get("total") or {}
    p.family("agentkube_vms", "gauge", "Tenant VMs by state, all services (last collection).",
             [("", {"state": s}, total.get(s, 0)) for s in VM_STATES] if total else [])
    p.family("agentkube_service_vms", "gauge", "Tenant VMs by state per service (agentInstanceId).",
             [("", {"service": svc, "state": s}, counts.get(s, 0))
              for svc, counts in sorted((vm_states.get("services") or {}).items()) for s in VM_STATES])
    p.family("agentkube_metric_posts_total", "counter", "Metric entries Fulcrum accepted.",
             [("", {}, m.get("posts", 0))])
    p.family("agentkube_metric_drops_total", "counter", "Metric entries dropped after their attempts.",
             [("", {}, m.get("drops", 0))])
    p.family("agentkube_metric_cycles_total", "counter", "Metrics collections run.", [("", {}, m.get("cycles", 0))])
    p.family("agentkube_metric_cycles_failed_total", "counter", "Metrics collections whose playbook failed.",
             [("", {}, m.get("cycles_failed", 0))])
    p.family("agentkube_metric_cycles_overrun_total", "counter", "Metrics collections that outlasted the interval.",
             [("", {}, m.get("cycles_overrun", 0))])
    p.family("agentkube_metric_collection_failures_total", "counter",
             "Collections where a part failed (proxmox, kamaji) or a tenant was unreachable.",
             [("", {"part": part}, m.get(f"{part}_failures", 0)) for part in ("proxmox", "kamaji", "tenant")])
    p.family("agentkube_metric_cycle_duration_seconds", "gauge", "Duration of the last metrics collection.",
             [("", {}, m.get("last_duration_s"))] if metrics is not None else [])
    return p.text()


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
