"""A Kubernetes upgrade through the agent rolls the workers one by one: the update job upgrades the control plane
one minor, then each worker in turn is drained, upgraded (`kubeadm upgrade node`) and uncordoned before the next
worker is drained. Emulated workers (root + the cached Debian 12 root filesystem; the lab kubeadm emulator is the
one emulated binary); the order is read from the job's events the agent's runner kept under its state dir."""

from __future__ import annotations

import json

import pytest
from agent_harness import job_done, lifecycle_lab, wait_for

from agentkube.core.naming import tenant_name
from agentkube_lab.lab import Lab, emulated_workers_available

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAMESPACE = "kamaji-tenants"
FROM, TO = "v1.34.4", "v1.35.7"
SPEC = {"kubernetesVersion": FROM, "controlPlane": {"replicas": 1, "serviceType": "ClusterIP"},
        "nodePools": [{"name": "default", "count": 2, "cores": 2, "memoryMiB": 2048, "diskGiB": 20}]}
# The steps of one worker's roll (kubeadm_node/tasks/upgrade.yml), in the order they must happen.
STEPS = {"Cordon and drain the Node with a timeout": "drain", "Run kubeadm upgrade node": "upgrade",
         "Uncordon the Node": "uncordon"}


@pytest.fixture
def lab(tmp_path):
    ok, why = emulated_workers_available()
    if not ok:
        pytest.skip(f"emulated workers unavailable: {why}")
    with lifecycle_lab(tmp_path / "lab", tcp_ready_delay=0.2, emulated_workers=True) as lab:
        yield lab


def finish(lab: Lab, job_id: str) -> dict:
    wait_for(lambda: job_done(lab, job_id), 400, interval=0.5, what="the job")
    return lab.fulcrum.get_job(job_id)


def roll_steps(lab: Lab, job_id: str) -> list[tuple[str, str]]:
    """(worker, step) of every drain/upgrade/uncordon task that ran, in event order."""
    events = lab.state_dir / "agent" / "jobs" / job_id / "artifacts" / job_id / "job_events"
    out = []
    for path in sorted(events.glob("*.json"), key=lambda p: int(p.name.split("-")[0])):
        event = json.loads(path.read_text())
        data = event.get("event_data", {})
        if event.get("event") == "runner_on_ok" and data.get("task") in STEPS:
            out.append((data["host"], STEPS[data["task"]]))
    return out


def test_an_upgrade_drains_upgrades_and_uncordons_each_worker_before_the_next(lab):
    assert lab.catalog is not None
    svc = lab.fulcrum.create_service("Roll Me", lab.catalog.service_type_id, lab.catalog.group_ids[0],
                                     lab.catalog.agent_id, SPEC)
    name = tenant_name("Roll Me", svc["id"])
    workers = [f"{name}-default-0", f"{name}-default-1"]
    created = finish(lab, next(j for j in lab.fulcrum.jobs if j["serviceId"] == svc["id"])["id"])
    assert created["status"] == "Completed", created.get("errorMessage")

    job = lab.fulcrum.request_action(svc["id"], "update", {"kubernetesVersion": TO})
    done = finish(lab, job["id"])
    assert done["status"] == "Completed", done.get("errorMessage")

    steps = roll_steps(lab, job["id"])
    assert sorted({w for w, _ in steps}) == workers, steps
    rolled = [w for i, (w, _) in enumerate(steps) if i == 0 or steps[i - 1][0] != w]
    assert len(rolled) == 2, f"each worker is rolled in one go, not interleaved: {steps}"
    for worker in workers:
        assert [s for w, s in steps if w == worker] == ["drain", "upgrade", "uncordon"], steps

    data = lab.fulcrum.get_service(svc["id"])["agentInstanceData"]
    assert data["kubernetesVersion"] == TO
    assert lab.kube.get("kamaji.clastix.io/v1alpha1", "TenantControlPlane", NAMESPACE,
                        name)["spec"]["kubernetes"]["version"] == TO
    tenant = lab.kube.tenant(NAMESPACE, name)
    nodes = {n["metadata"]["name"]: n for n in tenant.store.list(tenant.store.resolve("v1", "Node"), None)[0]}
    assert sorted(nodes) == workers
    assert not any(n.get("spec", {}).get("unschedulable") for n in nodes.values())  # all uncordoned
    for worker in workers:  # the version each node records after `kubeadm upgrade node`
        record = (lab.worker_root(worker) / "etc/kubernetes/agentkube-node-version").read_text().strip()
        assert record == TO, (worker, record)

    deleted = lab.fulcrum.request_action(svc["id"], "delete")
    assert finish(lab, deleted["id"])["status"] == "Completed"
    assert lab.leftovers() == []
