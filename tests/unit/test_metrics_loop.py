"""The metrics loop with a fake runner and a fake client: posts, drops after the attempts, failed collections,
never two cycles at once, and the interval thread."""

from __future__ import annotations

import threading
import time

import pytest

from agentkube.adapters.fulcrum_client import FulcrumError, FulcrumUnavailable
from agentkube.adapters.job_runner import PlaybookOutcome
from agentkube.agent.metrics_loop import RUN_IDENT, MetricsLoop
from agentkube.core.settings import ConfigError, MetricsSettings, load_settings

RESULT = {
    "namespace": "ns",
    "proxmox": {"ok": True, "error": "", "sampledAt": 1.0, "vms": [
        {"vmid": 1, "name": "t-0", "node": "pve1", "status": "running", "tenant": "t", "cpu": 0.1, "maxcpu": 1,
         "mem": 1, "maxmem": 2, "disk": 0, "maxdisk": 0, "netin": 0, "netout": 0}]},
    "kamaji": {"ok": True, "error": "", "tcps": [{"namespace": "ns", "name": "t", "status": "Ready",
                                                  "replicas": 1, "readyReplicas": 1}]},
    "tenants": [],
}


class FakeRunner:
    def __init__(self, result=RESULT, delay: float = 0.0, ok: bool = True):
        self.result, self.delay, self.ok = result, delay, ok
        self.runs = []
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def run(self, run, cancel=None):
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.runs.append(run)
        time.sleep(self.delay)
        with self._lock:
            self.active -= 1
        if not self.ok:
            return PlaybookOutcome(status="failed", rc=2, result=None, error="task 'x' failed on localhost: boom")
        return PlaybookOutcome(status="successful", rc=0, result=self.result)


class FakeClient:
    def __init__(self, fail_types=(), status=None):
        self.fail_types, self.status = set(fail_types), status
        self.calls = []
        self._lock = threading.Lock()

    def request(self, method, path, *, json=None, ok=(200,), attempts=None, **_):
        with self._lock:
            self.calls.append((method, path, json, attempts))
        if json["typeName"] in self.fail_types:
            if self.status:
                raise FulcrumError("400: metric type not found", self.status)
            raise FulcrumUnavailable("POST /metric-entries failed after 3 attempt(s)")


def loop_with(runner, client, **settings) -> MetricsLoop:
    return MetricsLoop(client, runner, MetricsSettings(**settings), inventory="inv.yml",
                       operator_vars=lambda: {"proxmox_vm_api_host": "127.0.0.1"})


def test_a_cycle_posts_every_entry_with_the_configured_attempts():
    runner, client = FakeRunner(), FakeClient()
    loop = loop_with(runner, client, post_attempts=5)
    report = loop.run_cycle()
    loop.stop()
    assert report.ok and report.proxmox_ok and report.kamaji_ok
    posted = {(c[2]["resourceId"], c[2]["typeName"]) for c in client.calls}
    assert posted == {("t-0", "vm.cpu.usage"), ("t-0", "vm.memory.usage"), ("t", "tcp.status"),
                      ("t", "tcp.replicas.ready")}
    assert all(c[:2] == ("POST", "/metric-entries") and c[3] == 5 for c in client.calls)
    assert report.posted == 4 and report.dropped == 0
    run = runner.runs[0]
    assert run.ident == RUN_IDENT and run.inventory == "inv.yml" and run.playbook == "playbooks/metrics.yml"
    assert run.operator_vars == {"proxmox_vm_api_host": "127.0.0.1"}
    assert report.vm_states["total"] == {"running": 1, "stopped": 0, "other": 0}


def test_failed_posts_are_counted_as_drops_with_their_reason():
    loop = loop_with(FakeRunner(), FakeClient(fail_types={"tcp.status"}))
    report = loop.run_cycle()
    loop2 = loop_with(FakeRunner(), FakeClient(fail_types={"vm.cpu.usage", "vm.memory.usage"}, status=400))
    report2 = loop2.run_cycle()
    loop.stop()
    loop2.stop()
    assert (report.posted, report.dropped) == (3, 1)
    assert loop.snapshot()["drop_reasons"] == {"unavailable": 1}
    assert (report2.posted, report2.dropped) == (2, 2)
    snap = loop2.snapshot()
    assert snap["drops"] == 2 and snap["posts"] == 2 and snap["drop_reasons"] == {"400": 2}


def test_a_failed_playbook_is_a_failed_cycle_without_posts():
    client = FakeClient()
    loop = loop_with(FakeRunner(ok=False), client)
    report = loop.run_cycle()
    loop.stop()
    assert not report.ok and "boom" in report.error
    assert client.calls == []
    assert loop.snapshot()["cycles_failed"] == 1


def test_proxmox_failure_is_counted_but_the_rest_is_posted():
    result = dict(RESULT, proxmox={"ok": False, "error": "GET /cluster/resources failed", "vms": []})
    client = FakeClient()
    loop = loop_with(FakeRunner(result=result), client)
    report = loop.run_cycle()
    loop.stop()
    assert report.ok and not report.proxmox_ok
    assert report.problems == ["proxmox: GET /cluster/resources failed"]
    assert {c[2]["typeName"] for c in client.calls} == {"tcp.status", "tcp.replicas.ready"}
    assert loop.snapshot()["proxmox_failures"] == 1


def test_cycles_never_overlap():
    runner = FakeRunner(delay=0.3)
    loop = loop_with(runner, FakeClient())
    results = []
    threads = [threading.Thread(target=lambda: results.append(loop.run_cycle())) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    loop.stop()
    assert runner.max_active == 1
    assert sum(1 for r in results if r is not None) == 1  # the others were refused, not queued


def test_the_interval_thread_runs_cycles_and_counts_overruns():
    runner = FakeRunner(delay=0.15)
    loop = MetricsLoop(FakeClient(), runner, MetricsSettings(interval_s=0.1), inventory="inv.yml",
                       first_delay_s=0.0)
    loop.start()
    deadline = time.monotonic() + 10
    while loop.snapshot()["cycles"] < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    loop.stop()
    snap = loop.snapshot()
    assert snap["cycles"] >= 3 and runner.max_active == 1
    assert snap["cycles_overrun"] >= 1
    assert not loop.alive


def test_metrics_and_health_settings_defaults_and_field_named_errors(tmp_path):
    base = {"fulcrum": {"url": "https://fulcrum.example/api/v1", "token": "t"},
            "agent": {"state_dir": str(tmp_path)}}
    s = load_settings(overrides=base)
    assert s.metrics.interval_s == 60 and s.metrics.playbook == "playbooks/metrics.yml"
    assert s.health.host == "127.0.0.1" and s.health.enabled
    with pytest.raises(ConfigError) as e:
        load_settings(overrides={**base, "metrics": {"interval_s": 0, "playbook": "metrics.sh"}})
    assert "metrics.interval_s (AGENTKUBE_METRICS__INTERVAL_S)" in str(e.value)
    assert "metrics.playbook" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_settings(overrides={**base, "health": {"port": 70000}})
    assert "health.port" in str(e.value)
