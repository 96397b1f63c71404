"""The health endpoint: /metrics parses as Prometheus text (prometheus_client's parser) and holds the values,
/healthz and /readyz follow the loop, heartbeat, Fulcrum and leadership."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agentkube.adapters.leadership import LeadershipStatus
from agentkube.agent.health_server import AgentProbes, HealthServer, render_metrics
from agentkube.agent.job_stats import JobStats


def parse(text: str) -> dict[str, dict]:
    """family -> {type, help, samples: [(name, labels, value)]}, through prometheus_client's own parser of the
    text format (it raises on a malformed line)."""
    assert text.endswith("\n"), "exposition must end with a newline"
    families = {}
    for family in text_string_to_metric_families(text):
        name = family.name + ("_total" if family.type == "counter" else "")
        assert name not in families, f"family {name} repeated"
        families[name] = {"help": family.documentation, "type": family.type,
                          "samples": [(s.name, s.labels, s.value) for s in family.samples]}
    return families


def metrics_snapshot() -> dict:
    return {"alive": True, "cycles": 3, "cycles_failed": 1, "cycles_overrun": 0, "posts": 42, "drops": 2,
            "drop_reasons": {"400": 2}, "proxmox_failures": 1, "kamaji_failures": 0, "tenant_failures": 4,
            "last_duration_s": 2.5, "last_age_s": 1.0, "last_ok": True,
            "vm_states": {"total": {"running": 5, "stopped": 1, "other": 0},
                          "services": {'ns/we"ird\\name': {"running": 2, "stopped": 1, "other": 0}}}}


def value(families: dict, family: str, **labels: str) -> float:
    for _name, got, v in families[family]["samples"]:
        if got == labels:
            return v
    raise KeyError((family, labels))


def test_metrics_page_parses_and_holds_the_values():
    stats = JobStats()
    stats.started()
    stats.finished("create", True, 12.0)
    stats.started()
    stats.finished("create", False, 4.0)
    stats.started()
    text = render_metrics(jobs=stats.snapshot(), heartbeat_age_s=1.5, heartbeat_failures=2, fulcrum_age_s=None,
                          metrics=metrics_snapshot())
    f = parse(text)
    assert value(f, "agentkube_jobs_processed_total") == 2
    assert value(f, "agentkube_jobs_failed_total") == 1
    assert value(f, "agentkube_jobs_running") == 1
    assert f["agentkube_job_duration_seconds"]["type"] == "histogram"
    samples = f["agentkube_job_duration_seconds"]["samples"]
    assert ("agentkube_job_duration_seconds_sum", {"action": "create"}, 16.0) in samples
    assert ("agentkube_job_duration_seconds_count", {"action": "create"}, 2.0) in samples
    assert ("agentkube_job_duration_seconds_bucket", {"action": "create", "le": "5.0"}, 1.0) in samples
    assert ("agentkube_job_duration_seconds_bucket", {"action": "create", "le": "15.0"}, 2.0) in samples
    assert value(f, "agentkube_heartbeat_age_seconds") == 1.5
    assert str(value(f, "agentkube_fulcrum_last_success_age_seconds")) == "nan"
    assert value(f, "agentkube_vms", state="running") == 5
    assert value(f, "agentkube_service_vms", service='ns/we"ird\\name', state="stopped") == 1  # escaped, read back
    assert value(f, "agentkube_metric_posts_total") == 42
    assert value(f, "agentkube_metric_drops_total") == 2
    assert value(f, "agentkube_metric_collection_failures_total", part="tenant") == 4


def test_metrics_page_without_a_metrics_loop_still_parses():
    f = parse(render_metrics(jobs=JobStats().snapshot(), heartbeat_age_s=None, heartbeat_failures=0,
                             fulcrum_age_s=3.0, metrics=None))
    assert value(f, "agentkube_metric_drops_total") == 0
    assert f["agentkube_vms"]["samples"] == []


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fake_agent(clock: Clock) -> SimpleNamespace:
    heartbeat = SimpleNamespace(last=clock.now, failures=0)
    heartbeat.age_s = lambda: None if heartbeat.last is None else clock.now - heartbeat.last
    leader = LeadershipStatus("file", "host_1_ab", True, "host_1_ab", 1, clock.now)
    return SimpleNamespace(state=SimpleNamespace(last_loop=clock.now, stopping=False), heartbeat=heartbeat,
                           client=SimpleNamespace(last_success=clock.now), stats=JobStats(), metrics=None,
                           leadership=SimpleNamespace(status=lambda: leader))


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), e.headers.get("Content-Type", "")


@pytest.fixture
def served():
    clock = Clock()
    agent = fake_agent(clock)
    server = HealthServer(AgentProbes(agent, loop_max_age_s=30, heartbeat_max_age_s=10, fulcrum_max_age_s=60,
                                      clock=clock), "127.0.0.1", 0).start()
    yield server, agent, clock
    server.stop()


def test_endpoints_follow_loop_heartbeat_and_fulcrum(served):
    server, agent, clock = served
    assert server.host == "127.0.0.1" and server.port > 0
    assert get(server.url + "/healthz")[0] == 200
    assert get(server.url + "/readyz")[0] == 200
    status, body, ctype = get(server.url + "/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    parse(body)

    clock.now += 11  # heartbeat older than its limit, loop still fresh
    agent.state.last_loop = clock.now
    status, body, _ = get(server.url + "/healthz")
    assert status == 503 and "heartbeat" in body
    agent.heartbeat.last = clock.now
    assert get(server.url + "/healthz")[0] == 200

    clock.now += 31  # the loop is stuck
    agent.heartbeat.last = clock.now
    status, body, _ = get(server.url + "/healthz")
    assert status == 503 and "loop" in body

    status, body, _ = get(server.url + "/readyz")  # Fulcrum last answered 42 s ago: still within 60
    assert status == 200
    clock.now += 30
    status, body, _ = get(server.url + "/readyz")
    assert status == 503 and "Fulcrum" in body
    agent.client.last_success = None
    assert get(server.url + "/readyz")[0] == 503
    assert get(server.url + "/nope")[0] == 404


def test_a_standby_is_healthy_and_ready_without_heartbeat_and_says_so(served):
    """A standby sends no heartbeat and makes no Fulcrum calls: it must not be restarted or kept out of a rolling
    update for that; /readyz, /healthz and /metrics tell it from the leader."""
    server, agent, clock = served
    assert re.search(r"^agentkube_leader 1\.0$", get(server.url + "/metrics")[1], re.M)
    standby = LeadershipStatus("lease", "host_2_cd", False, "host_1_ab", 0, clock.now)
    agent.leadership.status = lambda: standby
    agent.heartbeat.last = None
    agent.client.last_success = None
    for path in ("/healthz", "/readyz"):
        status, body, _ = get(server.url + path)
        assert status == 200 and "standby (lease; active: host_1_ab)" in body, (path, body)
    assert re.search(r"^agentkube_leader 0\.0$", get(server.url + "/metrics")[1], re.M)
    clock.now += 31  # a standby whose loop is stuck is not healthy either
    assert get(server.url + "/healthz")[0] == 503


def test_stopping_agent_is_not_healthy(served):
    server, agent, _ = served
    agent.state.stopping = True
    status, body, _ = get(server.url + "/healthz")
    assert status == 503 and "stopping" in body
