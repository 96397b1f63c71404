"""The tenant lifecycle end to end: the agent runs the real action playbooks against the whole lab (Fulcrum,
Kamaji and Proxmox emulators, emulated workers when this machine can run them) and reports to Fulcrum.

Slow (each action is a real playbook run of tens of seconds): one module-scoped lab and agent."""

from __future__ import annotations

import copy
import threading
import time

import pytest
from agent_harness import job_done, lifecycle_lab, wait_for

from agentkube.core.naming import tenant_name
from agentkube_lab.lab import Lab

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAMESPACE = "kamaji-tenants"
SPEC = {"kubernetesVersion": "v1.34.4", "controlPlane": {"replicas": 1, "serviceType": "ClusterIP"},
        "nodePools": [{"name": "default", "count": 1, "cores": 2, "memoryMiB": 2048, "diskGiB": 20}],
        "baseline": {"cni": "calico", "podSecurity": "baseline"}}
JOB_TIMEOUT = 300


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    # A short Ready timeout, so the "control plane never gets Ready" case fails quickly.
    with lifecycle_lab(tmp_path_factory.mktemp("lifecycle") / "lab", tcp_ready_delay=0.2,
                       operator_vars={"kamaji_tcp_ready_timeout": 15}) as lab:
        yield lab


def run(lab: Lab, svc: dict, action: str, params: dict | None = None) -> dict:
    job = lab.fulcrum.request_action(svc["id"], action, params)
    return finish(lab, job)


def finish(lab: Lab, job: dict) -> dict:
    wait_for(lambda: job_done(lab, job["id"]), JOB_TIMEOUT, interval=0.5, what=f"job {job['action']}")
    return lab.fulcrum.get_job(job["id"])


def create(lab: Lab, name: str, spec: dict) -> tuple[dict, dict]:
    assert lab.catalog is not None
    svc = lab.fulcrum.create_service(name, lab.catalog.service_type_id, lab.catalog.group_ids[0],
                                     lab.catalog.agent_id, spec)
    job = next(j for j in lab.fulcrum.jobs if j["serviceId"] == svc["id"])
    return svc, finish(lab, job)


def tcp(lab: Lab, name: str) -> dict | None:
    return lab.kube.get("kamaji.clastix.io/v1alpha1", "TenantControlPlane", NAMESPACE, name)


def owned_vms(lab: Lab, tenant: str) -> list[tuple[int, str]]:
    return sorted((vm.vmid, str(vm.config.get("name"))) for vm in lab.pve.fake.vms
                  if f"tenant-{tenant}" in str(vm.config.get("tags") or ""))


def vm_states(lab: Lab, tenant: str) -> dict[int, tuple]:
    """vmid -> (name, status, config digest, pending config) of every VM the tenant owns."""
    return lab.pve.call(lambda: {vm.vmid: (vm.config.get("name"), vm.status, vm.digest(), dict(vm.pending))
                                 for vm in lab.pve.fake.vms if f"tenant-{tenant}" in str(vm.config.get("tags") or "")})


def scale_down_blocked_by_a_budget_then_allowed(lab: Lab, svc: dict, name: str, spec: dict) -> None:
    """2 -> 1 workers while a PodDisruptionBudget protects the only replica on the node to remove: the tenant's
    apiserver answers the eviction 429, the drain retries, and goes on once the budget is relaxed meanwhile."""
    tenant = lab.kube.tenant(NAMESPACE, name)
    store, victim = tenant.store, f"{name}-default-1"
    rs = store.put({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "web", "namespace": "default"},
                    "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}}})
    store.put({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "web-0", "namespace": "default", "labels": {"app": "web"},
                            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web",
                                                 "uid": rs["metadata"]["uid"], "controller": True}]},
               "spec": {"nodeName": victim, "terminationGracePeriodSeconds": 1,
                        "containers": [{"name": "web", "image": "nginx"}]},
               "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})
    pdb_type = store.resolve("policy/v1", "PodDisruptionBudget")
    store.put({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
               "metadata": {"name": "web-pdb", "namespace": "default"},
               "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}})
    assert store.get(pdb_type, "default", "web-pdb")["status"]["disruptionsAllowed"] == 0
    eviction = ("POST", "/api/v1/namespaces/default/pods/web-0/eviction")
    relaxed = threading.Event()

    def relax_after_a_refusal() -> None:  # an operator frees the budget while the drain keeps retrying
        deadline = time.monotonic() + JOB_TIMEOUT
        while time.monotonic() < deadline and tenant.server.method_count[eviction] < 1:
            time.sleep(0.2)
        pdb = store.get(pdb_type, "default", "web-pdb")
        pdb["spec"]["minAvailable"] = 0
        store.put(pdb)
        relaxed.set()

    threading.Thread(target=relax_after_a_refusal, daemon=True).start()
    down = copy.deepcopy(spec)
    down["nodePools"][0]["count"] = 1
    scaled = run(lab, svc, "update", down)
    assert scaled["status"] == "Completed", scaled.get("errorMessage")
    assert relaxed.is_set() and tenant.server.method_count[eviction] >= 2  # refused first, then allowed
    assert [n["name"] for n in lab.fulcrum.get_service(svc["id"])["agentInstanceData"]["nodes"]] == [
        f"{name}-default-0"]
    assert store.find(store.resolve("v1", "Node"), None, victim) is None
    assert store.find(store.resolve("v1", "Pod"), "default", "web-0") is None


def test_create_reports_the_tenant_then_a_skipped_minor_is_refused_and_delete_leaves_nothing(lab):
    svc, job = create(lab, "Life One", SPEC)
    name = tenant_name("Life One", svc["id"])
    assert job["status"] == "Completed", job.get("errorMessage")
    service = lab.fulcrum.get_service(svc["id"])
    assert service["status"] == "Stopped"  # the canonical lifecycle: create -> Stopped
    assert service["agentInstanceId"] == f"{NAMESPACE}/{name}"
    data = service["agentInstanceData"]
    assert data["kubernetesVersion"] == "v1.34.4"
    assert data["controlPlane"] == {"replicas": 1, "status": "Ready"}
    assert data["endpoint"].startswith("https://127.0.0.1:")
    assert "current-context" in data["kubeconfig"]
    (node,) = data["nodes"]
    vms = owned_vms(lab, name)
    assert [(node["vmid"], node["name"])] == vms
    assert node["pool"] == "default" and node["name"] == f"{name}-default-0" and node["ip"]
    assert node["status"] == ("NotReady" if lab.emulated_workers else "NotJoined") or node["status"] == "Ready"
    if lab.emulated_workers:  # the Node registered in the tenant through the (emulated) kubeadm join
        tenant = lab.kube.tenant(NAMESPACE, name)
        nodes = tenant.store.list(tenant.store.resolve("v1", "Node"), None)[0]
        assert [n["metadata"]["name"] for n in nodes] == [node["name"]]

    # v1.34 -> v1.36 skips a minor: refused before anything is touched.
    before_tcp = tcp(lab, name)
    skipped = copy.deepcopy(SPEC)
    skipped["kubernetesVersion"] = "v1.36.0"
    skipped["nodePools"][0]["count"] = 2
    refused = run(lab, svc, "update", skipped)
    assert refused["status"] == "Failed"
    assert "kubernetesVersion" in refused["errorMessage"] and "v1.36.0" in refused["errorMessage"]
    after_tcp = tcp(lab, name)
    assert after_tcp["spec"] == before_tcp["spec"]
    assert after_tcp["metadata"]["resourceVersion"] == before_tcp["metadata"]["resourceVersion"]
    assert owned_vms(lab, name) == vms

    deleted = run(lab, svc, "delete")
    assert deleted["status"] == "Completed", deleted.get("errorMessage")
    assert lab.fulcrum.get_service(svc["id"])["status"] == "Deleted"
    assert tcp(lab, name) is None
    assert owned_vms(lab, name) == []
    assert lab.leftovers() == []


def test_delete_after_a_half_finished_create_leaves_nothing(lab):
    assert lab.catalog is not None
    svc = lab.fulcrum.create_service("Half Done", lab.catalog.service_type_id, lab.catalog.group_ids[0],
                                     lab.catalog.agent_id, SPEC)
    name = tenant_name("Half Done", svc["id"])
    lab.kube.stick(NAMESPACE, name, "NotReady", "EtcdUnreachable", "datastore default is down")
    job = finish(lab, next(j for j in lab.fulcrum.jobs if j["serviceId"] == svc["id"]))
    assert job["status"] == "Failed"
    # the role's rescue names the last status seen and its reason; the agent reports that last failure
    assert "did not become Ready" in job["errorMessage"], job["errorMessage"]
    assert "NotReady" in job["errorMessage"] and "EtcdUnreachable" in job["errorMessage"], job["errorMessage"]
    assert tcp(lab, name) is not None  # half finished: the control plane was applied
    lab.kube.unstick(NAMESPACE, name)

    deleted = run(lab, svc, "delete")
    assert deleted["status"] == "Completed", deleted.get("errorMessage")
    assert tcp(lab, name) is None
    assert owned_vms(lab, name) == []
    assert lab.leftovers() == []


# Stop, start, then update and scale against the realistic lab: 400 s beside another test process in CI's run.
@pytest.mark.timeout(1200)
def test_stop_sleeps_the_control_plane_start_wakes_it_and_update_scales_and_resizes(lab):
    spec = copy.deepcopy(SPEC)
    svc, job = create(lab, "Life Two", spec)
    name = tenant_name("Life Two", svc["id"])
    assert job["status"] == "Completed", job.get("errorMessage")

    started = run(lab, svc, "start")
    assert started["status"] == "Completed", started.get("errorMessage")
    assert lab.fulcrum.get_service(svc["id"])["status"] == "Started"

    grown = copy.deepcopy(spec)
    grown["controlPlane"]["replicas"] = 2
    grown["nodePools"][0].update({"count": 2, "cores": 4, "diskGiB": 30})
    updated = run(lab, svc, "update", grown)
    assert updated["status"] == "Completed", updated.get("errorMessage")
    data = lab.fulcrum.get_service(svc["id"])["agentInstanceData"]
    assert data["controlPlane"] == {"replicas": 2, "status": "Ready"}
    assert [n["name"] for n in data["nodes"]] == [f"{name}-default-0", f"{name}-default-1"]
    vms = [vm for vm in lab.pve.fake.vms if f"tenant-{name}" in str(vm.config.get("tags") or "")]
    # cores of a running VM change at its next boot (pending); disks grow at once
    assert {int(vm.pending.get("cores", vm.config["cores"])) for vm in vms} == {4}
    assert all("size=30G" in str(vm.config["scsi0"]) for vm in vms)

    # A disk shrink, asked together with changes that would come first (control plane replicas, a new VM):
    # refused by update's read-only preflight, before the control plane or any VM is touched.
    shrunk = copy.deepcopy(grown)
    shrunk["controlPlane"]["replicas"] = 3
    shrunk["nodePools"][0].update({"count": 3, "diskGiB": 20})
    tcp_before, vms_before = tcp(lab, name), vm_states(lab, name)
    refused = run(lab, svc, "update", shrunk)
    assert refused["status"] == "Failed"
    message = refused["errorMessage"]
    assert "nodePools[default].diskGiB" in message and "refused before anything was changed" in message, message
    assert f"{name}-default-0 (vmid " in message and "is 30 GiB, requested 20 GiB" in message, message
    tcp_after = tcp(lab, name)
    assert tcp_after["metadata"]["resourceVersion"] == tcp_before["metadata"]["resourceVersion"]
    assert tcp_after["spec"] == tcp_before["spec"]
    assert vm_states(lab, name) == vms_before  # no VM cloned, resized or reconfigured
    assert lab.fulcrum.get_service(svc["id"])["status"] == "Started"

    stopped = run(lab, svc, "stop")
    assert stopped["status"] == "Completed", stopped.get("errorMessage")
    service = lab.fulcrum.get_service(svc["id"])
    assert service["status"] == "Stopped"
    assert service["agentInstanceData"]["controlPlane"] == {"replicas": 0, "status": "Sleeping"}
    assert {n["status"] for n in service["agentInstanceData"]["nodes"]} == {"Stopped"}
    assert service["agentInstanceData"]["kubeconfig"]  # kept while asleep
    assert tcp(lab, name)["spec"]["controlPlane"]["deployment"]["replicas"] == 0

    again = run(lab, svc, "start")
    assert again["status"] == "Completed", again.get("errorMessage")
    data = lab.fulcrum.get_service(svc["id"])["agentInstanceData"]
    assert data["controlPlane"] == {"replicas": 2, "status": "Ready"}
    assert all(n["status"] != "Stopped" for n in data["nodes"])
    assert {int(vm.config["cores"]) for vm in vms} == {4}  # applied by the reboot

    if lab.emulated_workers:
        scale_down_blocked_by_a_budget_then_allowed(lab, svc, name, grown)

    deleted = run(lab, svc, "delete")
    assert deleted["status"] == "Completed", deleted.get("errorMessage")
    assert lab.leftovers() == []
