"""Every lifecycle action is idempotent: run twice through the agent, the second run changes nothing in Proxmox
or Kamaji, reports no changed task, and reports the same agentInstanceData.

A re-issued action is a new Fulcrum job. Where the lifecycle forbids repeating an action from the state the
first run left (start from Started, stop from Stopped, create from Stopped, delete from Deleted), the test
rewinds the service's status in the Fulcrum emulator to the state the action starts from and requests the
action again: the agent then receives an ordinary new job, as after a result Core never took. Everything else
(the vars contract, agentkube_previous, the runner, the playbook) is the agent's own path.

What "nothing changed" means here, measured around the second run only:
- Kamaji: the parent cluster's and the tenant's global resourceVersion counters did not move (no write at
  all), and the TCP's resourceVersion, generation and spec are the same;
- Proxmox: no task started and no write request (POST/PUT/DELETE) reached fakepve; every owned VM has the
  same vmid, node, status, tags, config digest and pending config;
- the runner: the playbook_on_stats event of the job's artifacts counts no changed task.

Slow (each action is a real playbook run): one module-scoped lab and agent."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from agent_harness import job_done, lifecycle_lab, wait_for

from agentkube.core.naming import tenant_name
from agentkube_lab.lab import Lab

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAMESPACE = "kamaji-tenants"
TCP_KIND = ("kamaji.clastix.io/v1alpha1", "TenantControlPlane")
SPEC = {"kubernetesVersion": "v1.34.4", "controlPlane": {"replicas": 1, "serviceType": "ClusterIP"},
        "nodePools": [{"name": "default", "count": 1, "cores": 2, "memoryMiB": 2048, "diskGiB": 20}],
        "baseline": {"cni": "calico", "podSecurity": "baseline"}}
JOB_TIMEOUT = 300
# The state each action starts from, to re-issue it after the first run moved the service on.
STARTS_FROM = {"create": "New", "start": "Stopped", "stop": "Started", "delete": "Started"}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with lifecycle_lab(tmp_path_factory.mktemp("idempotency") / "lab", kube=True, pve=True,
                       tcp_ready_delay=0.2) as lab:
        record_parent_writes(lab)
        yield lab


# -- driving the agent ------------------------------------------------------------------------------------------
def finish(lab: Lab, job: dict) -> dict:
    wait_for(lambda: job_done(lab, job["id"]), JOB_TIMEOUT, interval=0.5, what=f"job {job['action']}")
    return lab.fulcrum.get_job(job["id"])


def reissue(lab: Lab, service_id: str, action: str, params: dict | None = None) -> dict:
    """Request `action` again as a new job; where the lifecycle forbids it from the service's current status,
    rewind that status in the emulator first (the infrastructure is left as the first run made it)."""
    state = lab.fulcrum.state
    with state.lock:
        svc = state.services[service_id]
        if action in STARTS_FROM and svc.status != STARTS_FROM[action]:
            svc.status = STARTS_FROM[action]
    return finish(lab, lab.fulcrum.request_action(service_id, action, params))


def stats_of(lab: Lab, job_id: str) -> dict[str, Any]:
    """The playbook_on_stats event data the runner kept in the agent's state dir for this job."""
    events = lab.state_dir / "agent" / "jobs" / job_id / "artifacts" / job_id / "job_events"
    for path in sorted(events.glob("*.json")):
        event = json.loads(path.read_text())
        if event.get("event") == "playbook_on_stats":
            return event["event_data"]
    raise AssertionError(f"no playbook_on_stats event under {events}")


def changed_tasks(lab: Lab, job_id: str) -> list[str]:
    """'task (host)' of every task result reported changed, to name them when the count is not 0."""
    events = lab.state_dir / "agent" / "jobs" / job_id / "artifacts" / job_id / "job_events"
    out = []
    for path in sorted(events.glob("*.json"), key=lambda p: int(p.name.split("-")[0])):
        event = json.loads(path.read_text())
        data = event.get("event_data", {})
        if event.get("event") in ("runner_on_ok", "runner_item_on_ok") and (data.get("res") or {}).get("changed"):
            out.append(f"{data.get('task')} ({data.get('host')})")
    return out


# -- what the infrastructure looks like -------------------------------------------------------------------------
PARENT_WRITES: dict[int, list[tuple[str, str]]] = {}  # id(lab) -> writes to the Kamaji parent


def record_parent_writes(lab: Lab) -> None:
    """Count every write to the parent but the agent's own leader-election Lease renewals (every retry period)."""
    writes = PARENT_WRITES.setdefault(id(lab), [])
    lab.kube.store.listeners.append(
        lambda event, rtype, obj: writes.append((event, rtype.plural)) if rtype.plural != "leases" else None)


def kamaji_state(lab: Lab, tenant: str) -> dict[str, Any]:
    tcp = lab.kube.get(*TCP_KIND, NAMESPACE, tenant)
    api = lab.kube.tenant(NAMESPACE, tenant)
    return {
        "parent_writes": len(PARENT_WRITES[id(lab)]),
        "tenant_rv": api.store.resource_version if api is not None else None,
        "tcp": None if tcp is None else {"resourceVersion": tcp["metadata"]["resourceVersion"],
                                         "generation": tcp["metadata"].get("generation"),
                                         "spec": tcp["spec"]},
    }


def proxmox_state(lab: Lab, tenant: str) -> dict[str, Any]:
    def read(fake):
        vms = {}
        for vm in list(fake.vms.values()) if isinstance(fake.vms, dict) else list(fake.vms):
            if f"tenant-{tenant}" in str(vm.config.get("tags") or ""):
                vms[vm.vmid] = {"name": vm.config.get("name"), "node": vm.node, "status": vm.status,
                                "tags": vm.config.get("tags"), "digest": vm.digest(), "pending": dict(vm.pending)}
        return {"vms": vms, "tasks": set(fake.tasks), "requests": len(fake.requests)}

    return lab.pve.call(lambda: read(lab.pve.fake))


def proxmox_writes_since(lab: Lab, mark: int) -> list[str]:
    return lab.pve.call(lambda: [f"{m} {p}" for m, p, _ in lab.pve.fake.requests[mark:] if m != "GET"])


def assert_second_run_changes_nothing(lab: Lab, tenant: str, service_id: str, action: str,
                                      params: dict | None = None) -> dict:
    """Run `action` again and check nothing moved; returns the second job."""
    first_data = lab.fulcrum.get_service(service_id)["agentInstanceData"]
    kamaji_before, pve_before = kamaji_state(lab, tenant), proxmox_state(lab, tenant)

    job = reissue(lab, service_id, action, params)
    assert job["status"] == "Completed", f"second {action}: {job.get('errorMessage')}"

    kamaji_after, pve_after = kamaji_state(lab, tenant), proxmox_state(lab, tenant)
    assert kamaji_after == kamaji_before, f"second {action} changed Kamaji"
    assert pve_after["vms"] == pve_before["vms"], f"second {action} changed VMs"
    assert pve_after["tasks"] == pve_before["tasks"], (
        f"second {action} started Proxmox tasks: {sorted(pve_after['tasks'] - pve_before['tasks'])}")
    assert proxmox_writes_since(lab, pve_before["requests"]) == [], f"second {action} wrote to Proxmox"
    stats = stats_of(lab, job["id"])
    assert stats.get("changed") == {}, f"second {action} changed: {changed_tasks(lab, job['id'])}"
    assert stats.get("failures") == {} and stats.get("ok"), stats
    second_data = lab.fulcrum.get_service(service_id)["agentInstanceData"]
    assert second_data == first_data, f"second {action} reported other agentInstanceData"
    return job


# -- the tests ---------------------------------------------------------------------------------------------------
def first_run(lab: Lab, service_id: str, action: str, params: dict | None = None, *, changes: bool = True) -> dict:
    job = reissue(lab, service_id, action, params)
    assert job["status"] == "Completed", f"{action}: {job.get('errorMessage')}"
    if changes:  # so the second run's "nothing changed" is not vacuous
        assert stats_of(lab, job["id"])["changed"], f"the first {action} changed nothing"
    return job


# Every action run twice against the realistic lab: ~5 min alone, longer beside another test process.
@pytest.mark.timeout(1500)
def test_every_action_run_twice_changes_nothing_the_second_time(lab):
    assert lab.catalog is not None
    svc = lab.fulcrum.create_service("Twice", lab.catalog.service_type_id, lab.catalog.group_ids[0],
                                     lab.catalog.agent_id, SPEC)
    sid, name = svc["id"], tenant_name("Twice", svc["id"])
    created = finish(lab, next(j for j in lab.fulcrum.jobs if j["serviceId"] == sid))
    assert created["status"] == "Completed", created.get("errorMessage")
    assert stats_of(lab, created["id"])["changed"]
    assert_second_run_changes_nothing(lab, name, sid, "create")
    assert lab.fulcrum.get_service(sid)["status"] == "Stopped"

    first_run(lab, sid, "start", changes=False)  # create left the tenant up: this start may be a no-op already
    first_run(lab, sid, "stop")
    assert_second_run_changes_nothing(lab, name, sid, "stop")
    assert lab.fulcrum.get_service(sid)["status"] == "Stopped"

    first_run(lab, sid, "start")
    assert_second_run_changes_nothing(lab, name, sid, "start")
    assert lab.fulcrum.get_service(sid)["status"] == "Started"

    grown = copy.deepcopy(SPEC)
    grown["controlPlane"]["replicas"] = 2
    grown["nodePools"][0].update({"count": 2, "cores": 4, "diskGiB": 30})
    first_run(lab, sid, "update", grown)
    assert_second_run_changes_nothing(lab, name, sid, "update", grown)
    assert len(lab.fulcrum.get_service(sid)["agentInstanceData"]["nodes"]) == 2

    first_run(lab, sid, "delete")
    assert_second_run_changes_nothing(lab, name, sid, "delete")
    assert lab.fulcrum.get_service(sid)["status"] == "Deleted"
    assert lab.leftovers() == []


def test_a_second_run_reports_the_kubeconfig_unscrubbed(lab):
    assert lab.catalog is not None
    svc = lab.fulcrum.create_service("Kube Twice", lab.catalog.service_type_id, lab.catalog.group_ids[0],
                                     lab.catalog.agent_id, SPEC)
    created = finish(lab, next(j for j in lab.fulcrum.jobs if j["serviceId"] == svc["id"]))
    assert created["status"] == "Completed", created.get("errorMessage")
    first = lab.fulcrum.get_service(svc["id"])["agentInstanceData"]["kubeconfig"]
    again = reissue(lab, svc["id"], "update", SPEC)  # allowed from Stopped: no rewind
    assert again["status"] == "Completed", again.get("errorMessage")
    second = lab.fulcrum.get_service(svc["id"])["agentInstanceData"]["kubeconfig"]
    deleted = reissue(lab, svc["id"], "delete")
    assert deleted["status"] == "Completed", deleted.get("errorMessage")
    assert "current-context" in first
    assert second == first
