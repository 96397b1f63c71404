"""A worker that fails to join: the create job fails naming the node and the step; once the cause is gone, a
re-run of create converges on the same VM (nothing is cloned again). Through the agent and the whole lab, with
emulated workers (root + the cached Debian 12 root filesystem)."""

from __future__ import annotations

import pytest
from agent_harness import job_done, lifecycle_lab, wait_for

from agentkube.core.naming import tenant_name
from agentkube_lab.lab import Lab, emulated_workers_available

pytestmark = pytest.mark.integration

NAMESPACE = "kamaji-tenants"
SPEC = {"kubernetesVersion": "v1.35.7", "controlPlane": {"replicas": 1, "serviceType": "ClusterIP"},
        "nodePools": [{"name": "edge", "count": 1, "cores": 2, "memoryMiB": 2048, "diskGiB": 20}]}


@pytest.fixture
def lab(tmp_path):
    ok, why = emulated_workers_available()
    if not ok:
        pytest.skip(f"emulated workers unavailable: {why}")
    with lifecycle_lab(tmp_path / "lab", tcp_ready_delay=0.2, emulated_workers=True) as lab:
        yield lab


def finish(lab: Lab, job_id: str) -> dict:
    wait_for(lambda: job_done(lab, job_id), 300, interval=0.5, what="the job")
    return lab.fulcrum.get_job(job_id)


def test_a_failed_join_names_the_node_and_a_rerun_converges(lab):
    assert lab.catalog is not None
    svc = lab.fulcrum.create_service("Join Fails", lab.catalog.service_type_id, lab.catalog.group_ids[0],
                                     lab.catalog.agent_id, SPEC)
    name = tenant_name("Join Fails", svc["id"])
    node = f"{name}-edge-0"
    first = next(j for j in lab.fulcrum.jobs if j["serviceId"] == svc["id"])
    # The tenant API refuses Node registrations as soon as it serves: the (emulated) kubeadm join fails.
    tenant = wait_for(lambda: (t := lab.kube.tenant(NAMESPACE, name)) is not None and t.running and t, 120,
                      what="the tenant API")
    tenant.server.inject(r"^/api/v1/nodes$", 503, times=None, method="POST", message="registration refused")

    failed = finish(lab, first["id"])
    assert failed["status"] == "Failed"
    assert node in failed["errorMessage"] and "kubeadm join" in failed["errorMessage"], failed["errorMessage"]
    assert lab.fulcrum.get_service(svc["id"])["status"] == "New"
    vms = [(vm.vmid, vm.config.get("name")) for vm in lab.pve.fake.vms if vm.config.get("name") == node]
    assert len(vms) == 1  # the VM was made before the join failed

    tenant.server.clear_faults()
    rerun = lab.fulcrum.request_action(svc["id"], "create", SPEC)
    done = finish(lab, rerun["id"])
    assert done["status"] == "Completed", done.get("errorMessage")
    service = lab.fulcrum.get_service(svc["id"])
    assert service["status"] == "Stopped"
    (reported,) = service["agentInstanceData"]["nodes"]
    assert (reported["vmid"], reported["name"]) == vms[0]  # converged on the same VM, nothing cloned again
    registered = tenant.store.list(tenant.store.resolve("v1", "Node"), None)[0]
    assert [n["metadata"]["name"] for n in registered] == [node]

    deleted = lab.fulcrum.request_action(svc["id"], "delete")
    assert finish(lab, deleted["id"])["status"] == "Completed"
    assert lab.leftovers() == []
