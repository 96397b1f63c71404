"""Drains honour PodDisruptionBudgets: kubeadm_node's removal against a strict lab tenant whose evictions answer
429 while a budget allows no disruption. A refused eviction is retried until the bound; a budget relaxed during
the retries lets the drain finish (pods Terminating through their grace period, then the Node deleted); a bound
that runs out uncordons the Node and fails naming the Node and the budget. The controller side only: the node
host is a local connection and `kubeadm reset` is off (the chroot tests cover the node side)."""

from __future__ import annotations

import sys
import threading
import time

import pytest
import yaml
from kubeadm_lab_support import LabTenant, run_playbook, start_lab_tenant

pytestmark = pytest.mark.integration

NODE = "worker-0"
NS = "default"


@pytest.fixture
def lab(tmp_path):
    lab = start_lab_tenant(tmp_path / "kube")
    yield lab
    lab.emulator.stop()


def _seed(lab: LabTenant, min_available: int) -> None:
    """Node worker-0 running web-0 and web-1 (a ReplicaSet's, ready, 1 s grace period), web-2 elsewhere, a DaemonSet
    pod on the node, and a budget over app=web."""
    store = lab.tenant.store
    lab.tenant.add_node(NODE)
    rs = store.put({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "web", "namespace": NS},
                    "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}}})
    owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": rs["metadata"]["uid"],
             "controller": True}
    for name, node in (("web-0", NODE), ("web-1", NODE), ("web-2", "worker-1")):
        store.put({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": name, "namespace": NS, "labels": {"app": "web"}, "ownerReferences": [owner]},
                   "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
                            "containers": [{"name": "web", "image": "nginx"}]},
                   "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})
    lab.tenant.add_pod("agent-1", "kube-system", node_name=NODE, owner_kind="DaemonSet")
    store.put({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
               "metadata": {"name": "web-pdb", "namespace": NS},
               "spec": {"minAvailable": min_available, "selector": {"matchLabels": {"app": "web"}}}})


def _remove(tmp_path, lab: LabTenant, timeout: int):
    play = [{"name": "Remove the worker", "hosts": NODE, "gather_facts": False, "tasks": [
        {"name": "kubeadm_node remove", "ansible.builtin.include_role": {"name": "kubeadm_node",
                                                                         "tasks_from": "remove"}}]}]
    inventory = {"all": {"hosts": {
        NODE: {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
        "localhost": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}
    extravars = {"kubeadm_node_tenant_kubeconfig": lab.tenant.kubeconfig, "kubeadm_node_reset": False,
                 "kubeadm_node_drain_timeout_seconds": timeout, "kubeadm_node_drain_retry_delay_seconds": 1,
                 "kubeadm_node_drain_grace_period_seconds": 1}
    return run_playbook(tmp_path / "remove", play, inventory, extravars)


def _evictions(lab: LabTenant, pod: str) -> int:
    return lab.tenant.server.method_count[("POST", f"/api/v1/namespaces/{NS}/pods/{pod}/eviction")]


def _pdb(lab: LabTenant) -> dict:
    store = lab.tenant.store
    return store.get(store.resolve("policy/v1", "PodDisruptionBudget"), NS, "web-pdb")


def test_a_drain_blocked_by_a_budget_goes_on_once_the_budget_allows_it(tmp_path, lab) -> None:
    _seed(lab, min_available=3)
    assert _pdb(lab)["status"]["disruptionsAllowed"] == 0
    relaxed = threading.Event()

    def relax_after_a_refusal() -> None:  # an operator (or a new replica elsewhere) frees the budget meanwhile
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _evictions(lab, "web-0") + _evictions(lab, "web-1") < 2:
            time.sleep(0.05)
        time.sleep(1.5)  # at least one more retry is refused
        pdb = _pdb(lab)
        pdb["spec"]["minAvailable"] = 1
        lab.tenant.store.put(pdb)
        relaxed.set()

    helper = threading.Thread(target=relax_after_a_refusal, daemon=True)
    helper.start()
    run = _remove(tmp_path, lab, timeout=60)
    helper.join(timeout=5)

    assert run.rc == 0, run.stdout
    assert relaxed.is_set()
    assert _evictions(lab, "web-0") + _evictions(lab, "web-1") >= 4  # refused, retried, then accepted
    assert lab.get("Pod", "web-0", NS) is None and lab.get("Pod", "web-1", NS) is None
    assert lab.get("Pod", "web-2", NS) is not None  # on another node
    assert lab.get("Pod", "agent-1", "kube-system") is not None  # DaemonSet pods are not evicted
    assert lab.get("Node", NODE) is None
    order = [(e, k, n) for e, k, n in lab.events if k in ("Pod", "Node") and n in ("web-0", "web-1", NODE)]
    assert ("MODIFIED", "Node", NODE) in order  # cordoned first
    # each pod was Terminating (MODIFIED with its deletionTimestamp) before it was gone, and before the Node
    for pod in ("web-0", "web-1"):
        assert order.index(("DELETED", "Pod", pod)) < order.index(("DELETED", "Node", NODE))


def test_a_drain_whose_budget_never_allows_it_uncordons_and_names_node_and_budget(tmp_path, lab) -> None:
    _seed(lab, min_available=3)

    run = _remove(tmp_path, lab, timeout=3)

    assert run.rc != 0
    message = " ".join(run.failure_messages())
    assert f"Node {NODE}" in message
    assert f"PodDisruptionBudget {NS}/web-pdb" in message
    assert "The disruption budget web-pdb needs 3 healthy pods and has 3 currently" in message
    assert "uncordoned" in message
    node = lab.get("Node", NODE)
    assert node is not None and not node["spec"].get("unschedulable")  # uncordoned, kept
    for pod in ("web-0", "web-1"):
        live = lab.get("Pod", pod, NS)
        assert live is not None and not live["metadata"].get("deletionTimestamp")
    assert _evictions(lab, "web-0") >= 2  # retried, not given up at the first 429
    user = yaml.safe_load(lab.tenant.kubeconfig)["users"][0]["user"]
    credential = user.get("client-key-data") or user.get("token")  # admin.conf's secret
    assert credential and credential not in run.stdout and credential not in run.artifacts_text()
