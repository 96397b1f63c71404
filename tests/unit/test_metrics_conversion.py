"""Pure metric conversion: throughput across two samples, percentages, entries per part, VM state counts,
job statistics and the problems of a collection."""

from __future__ import annotations

import copy

import pytest

from agentkube.core import metrics as m
from agentkube_lab.fulcrum_catalog import load_shipped

GiB = 1024**3


def vm(name: str, tenant: str = "alpha", status: str = "running", **usage) -> dict:
    base = {"vmid": 100, "name": name, "node": "pve1", "status": status, "tenant": tenant, "serviceId": "s1",
            "cpu": 0.5, "maxcpu": 2, "mem": 1 * GiB, "maxmem": 4 * GiB, "disk": 5 * GiB, "maxdisk": 20 * GiB,
            "netin": 1000, "netout": 0}
    base.update(usage)
    return base


def result(vms: list[dict], sampled_at: float = 100.0, **parts) -> dict:
    return {"namespace": "kamaji-tenants",
            "proxmox": {"ok": True, "error": "", "sampledAt": sampled_at, "vms": vms},
            "kamaji": parts.get("kamaji", {"ok": True, "error": "", "tcps": []}),
            "tenants": parts.get("tenants", [])}


def by_key(entries: list[m.MetricEntry]) -> dict[tuple[str, str], float]:
    return {(e.resource_id, e.type_name): e.value for e in entries}


def test_throughput_is_bytes_per_second_between_two_samples():
    assert m.throughput(None, (10.0, 5000.0)) is None
    assert m.throughput((10.0, 1000.0), (14.0, 9000.0)) == 2000.0
    assert m.throughput((10.0, 1000.0), (10.0, 9000.0)) is None      # no time passed
    assert m.throughput((10.0, 9000.0), (20.0, 1000.0)) is None      # counter reset (VM restarted)


def test_network_throughput_needs_a_previous_sample_and_uses_in_plus_out():
    tracker = m.ThroughputTracker()
    first = by_key(m.entries_from_result(result([vm("a-0", netin=1000, netout=500)], 100.0), tracker))
    assert ("a-0", m.VM_NETWORK) not in first
    second = by_key(m.entries_from_result(result([vm("a-0", netin=61000, netout=30500)], 160.0), tracker))
    assert second[("a-0", m.VM_NETWORK)] == pytest.approx((61000 + 30500 - 1500) / 60)


def test_a_vm_that_disappears_is_forgotten_and_starts_over():
    tracker = m.ThroughputTracker()
    m.entries_from_result(result([vm("a-0", netin=100)], 1.0), tracker)
    m.entries_from_result(result([vm("b-0", netin=100)], 2.0), tracker)
    back = by_key(m.entries_from_result(result([vm("a-0", netin=900)], 3.0), tracker))
    assert ("a-0", m.VM_NETWORK) not in back  # its sample from t=1 is gone: no rate across the gap


def test_a_failed_proxmox_collection_keeps_the_previous_sample():
    tracker = m.ThroughputTracker()
    m.entries_from_result(result([vm("a-0", netin=0)], 0.0), tracker)
    down = result([], 10.0)
    down["proxmox"] = {"ok": False, "error": "connection refused", "vms": []}
    assert [e for e in m.entries_from_result(down, tracker) if e.type_name.startswith("vm.")] == []
    later = by_key(m.entries_from_result(result([vm("a-0", netin=2000)], 20.0), tracker))
    assert later[("a-0", m.VM_NETWORK)] == 100.0


def test_vm_usage_percentages_and_instance_id():
    entries = m.vm_entries(result([vm("a-0", cpu=0.255, mem=GiB, maxmem=4 * GiB, disk=0, maxdisk=0)])["proxmox"],
                           "kamaji-tenants", m.ThroughputTracker())
    values = by_key(entries)
    assert values[("a-0", m.VM_CPU)] == 25.5
    assert values[("a-0", m.VM_MEMORY)] == 25.0
    assert ("a-0", m.VM_DISK) not in values          # maxdisk 0: no percentage rather than a made-up one
    assert {e.agent_instance_id for e in entries} == {"kamaji-tenants/alpha"}


def test_percent_bounds():
    assert m.percent(5, 0) is None
    assert m.percent(None, 10) == 0.0
    assert m.percent(15, 10) == 100.0
    assert m.percent("x", 10) is None


def test_tcp_and_tenant_entries():
    kamaji = {"ok": True, "error": "", "tcps": [
        {"namespace": "kamaji-tenants", "name": "alpha", "status": "Ready", "replicas": 2, "readyReplicas": 2},
        {"namespace": "kamaji-tenants", "name": "beta", "status": "Sleeping", "replicas": 0, "readyReplicas": 0}]}
    tenants = [
        {"namespace": "kamaji-tenants", "name": "alpha", "queried": True, "reachable": True, "error": "",
         "nodes": [{"name": "alpha-0", "ready": True}, {"name": "alpha-1", "ready": False}], "podsRunning": 7},
        {"namespace": "kamaji-tenants", "name": "beta", "queried": False, "reachable": False,
         "error": "control plane is Sleeping; not queried", "nodes": [], "podsRunning": 0}]
    entries = m.tcp_entries(kamaji) + m.tenant_entries(tenants)
    values = {(e.agent_instance_id, e.resource_id, e.type_name): e.value for e in entries}
    a, b = "kamaji-tenants/alpha", "kamaji-tenants/beta"
    assert values[(a, "alpha", m.TCP_STATUS)] == 1 and values[(b, "beta", m.TCP_STATUS)] == 0
    assert values[(a, "alpha", m.TCP_REPLICAS_READY)] == 2
    assert values[(a, "alpha", m.NODES_READY)] == 1
    assert values[(a, "alpha", m.NODES_TOTAL)] == 2
    assert values[(a, "alpha", m.PODS_RUNNING)] == 7
    assert values[(a, "alpha-0", m.NODE_READY)] == 1 and values[(a, "alpha-1", m.NODE_READY)] == 0
    assert not any(k[0] == b and k[2].startswith("cluster.") for k in values)


def test_entries_use_only_shipped_metric_types():
    shipped = {t["name"] for t in load_shipped("metric-types")}
    assert set(m.METRIC_TYPES) == shipped


def test_to_api_is_the_metric_entry_body():
    body = m.MetricEntry("ns/t", "t-0", m.VM_CPU, 12.5).to_api()
    assert body == {"agentInstanceId": "ns/t", "resourceId": "t-0", "typeName": "vm.cpu.usage", "value": 12.5}


def test_vm_state_counts_per_service_and_total():
    proxmox = result([vm("a-0"), vm("a-1", status="stopped"), vm("b-0", tenant="beta", status="unknown"),
                      vm("b-1", tenant="beta")])["proxmox"]
    counts = m.vm_state_counts(proxmox, "kamaji-tenants")
    assert counts["total"] == {"running": 2, "stopped": 1, "other": 1}
    assert counts["services"]["kamaji-tenants/alpha"] == {"running": 1, "stopped": 1, "other": 0}
    assert counts["services"]["kamaji-tenants/beta"] == {"running": 1, "stopped": 0, "other": 1}


def test_job_stats_means_and_totals():
    snap = {"processed": 3, "failed": 1, "running": 1,
            "actions": {"create": {"count": 2, "failed": 1, "total_s": 30.0, "max_s": 20.0}}}
    stats = m.job_stats(snap)
    assert stats["actions"]["create"]["mean_s"] == 15.0
    assert (stats["processed"], stats["failed"], stats["running"]) == (3, 1, 1)


def test_collection_problems_name_the_failed_parts_but_not_sleeping_tenants():
    r = result([])
    r["proxmox"] = {"ok": False, "error": "GET /cluster/resources failed: connection error", "vms": []}
    r["tenants"] = [{"namespace": "ns", "name": "down", "queried": True, "reachable": False, "error": "timeout"},
                    {"namespace": "ns", "name": "sleepy", "queried": False, "reachable": False, "error": "Sleeping"}]
    problems = m.collection_problems(r)
    assert problems == ["proxmox: GET /cluster/resources failed: connection error", "tenant ns/down: timeout"]
    ok = copy.deepcopy(r)
    ok["proxmox"]["ok"] = True
    ok["tenants"] = ok["tenants"][1:]
    assert m.collection_problems(ok) == []
    unconfigured = copy.deepcopy(ok)
    unconfigured["kamaji"] = {"ok": False, "configured": False, "error": "not configured", "tcps": []}
    assert m.collection_problems(unconfigured) == []
