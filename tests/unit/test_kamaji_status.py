"""The lab Kamaji controller's status follows Kamaji's computeStatus (clastix/kamaji
internal/resources/k8s_deployment_resource.go) and writes observedGeneration only after a whole reconcile pass
(controllers/tenantcontrolplane_controller.go); tcp_status.reached reads it right. Driven with a fake clock."""

from __future__ import annotations

import copy

import pytest

from agentkube.core import tcp_status
from agentkube_lab.kamaji_controller import KamajiController, compute_status
from agentkube_lab.kube_resources import CORE_TYPES, KAMAJI_TYPES, TENANT_CONTROL_PLANE, ResourceCatalog
from agentkube_lab.kube_store import MERGE_PATCH, ObjectStore

NS, NAME = "tenants", "t1"


@pytest.mark.parametrize(("replicas", "spec_version", "status_version", "ready", "progressing", "expected"), [
    (0, "v1.35.0", "v1.35.0", 0, False, "Sleeping"),  # replicas 0 wins over everything
    (0, "v1.35.0", None, 2, True, "Sleeping"),
    (2, "v1.35.0", None, 0, True, "NotReady"),  # no replica ready: NotReady, even while provisioning
    (2, "v1.35.0", "v1.34.0", 0, True, "NotReady"),
    (2, "v1.35.0", "v1.35.0", 2, False, "Ready"),
    (2, "v1.35.0", None, 2, False, "Ready"),  # not progressing: Ready
    (2, "v1.35.0", "v1.34.0", 1, True, "Upgrading"),
    (2, "v1.35.0", None, 1, True, "Provisioning"),
    (2, "v1.35.0", "v1.35.0", 1, True, "Unknown"),  # a rollout that is no version change (e.g. certSANs)
])
def test_compute_status_follows_kamaji_order(replicas, spec_version, status_version, ready, progressing, expected):
    assert compute_status(replicas, spec_version, status_version, ready, progressing) == expected


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def lab(tmp_path):
    store = ObjectStore(ResourceCatalog(CORE_TYPES + KAMAJI_TYPES))
    store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    clock = Clock()
    controller = KamajiController(store, tmp_path / "tenants", ready_delay=10.0, clock=clock)
    seen: list[tuple] = []

    def record(_event, rtype, obj):
        if rtype == TENANT_CONTROL_PLANE and obj.get("status"):
            version = obj["status"].get("kubernetesResources", {}).get("version", {})
            entry = (version.get("status"), version.get("version"), obj["status"].get("observedGeneration"),
                     obj["metadata"].get("generation"))
            if not seen or seen[-1] != entry:
                seen.append(entry)
    store.listeners.append(record)
    yield store, controller, clock, seen
    controller.stop()


def _tcp(**spec_overrides) -> dict:
    spec = {"controlPlane": {"deployment": {"replicas": 2}, "service": {"serviceType": "ClusterIP"}},
            "kubernetes": {"version": "v1.35.0", "kubelet": {}},
            "networkProfile": {"port": 6443, "certSANs": ["a.example.org"]}}
    spec.update(spec_overrides)
    return {"apiVersion": "kamaji.clastix.io/v1alpha1", "kind": "TenantControlPlane",
            "metadata": {"name": NAME, "namespace": NS}, "spec": spec}


def _run(controller, clock, until: float) -> None:
    """Reconcile every second of fake time up to `until`."""
    while clock.now <= until:
        controller.reconcile(NS, NAME)
        controller.reconcile(NS, NAME)
        clock.now += 1.0


def _scale(store, replicas: int) -> None:
    store.patch(TENANT_CONTROL_PLANE, NS, NAME, MERGE_PATCH,
                {"spec": {"controlPlane": {"deployment": {"replicas": replicas}}}})


def _live(store) -> dict:
    return store.find(TENANT_CONTROL_PLANE, NS, NAME)


def test_create_shows_notready_then_provisioning_then_ready(lab):
    store, controller, clock, seen = lab
    store.put(_tcp())
    _run(controller, clock, clock.now + 12)
    statuses = [s[0] for s in seen]
    assert statuses[0] == "NotReady" and "Provisioning" in statuses and statuses[-1] == "Ready"
    assert statuses.index("NotReady") < statuses.index("Provisioning") < statuses.index("Ready")
    assert seen[-1] == ("Ready", "v1.35.0", 1, 1)
    # the status of the first pass is written before observedGeneration, which only the pass's end writes
    assert seen[0] == ("NotReady", None, None, 1)
    tcp = _live(store)
    assert tcp_status.reached(tcp, "Ready")
    assert tcp["status"]["kubernetesResources"]["deployment"]["readyReplicas"] == 2


def test_certsan_change_goes_unknown_then_ready_and_reached_waits_for_it(lab):
    store, controller, clock, seen = lab
    store.put(_tcp())
    _run(controller, clock, clock.now + 12)
    tcp = _live(store)
    tcp["spec"]["networkProfile"]["certSANs"] = ["b.example.org"]
    store.put(tcp)
    changed = _live(store)
    assert changed["metadata"]["generation"] == 2
    # Kamaji has not reconciled yet: still Ready, but for generation 1, so not reached for the new spec
    assert tcp_status.version_status(changed) == "Ready" and not tcp_status.reached(changed, "Ready")
    seen.clear()
    controller.reconcile(NS, NAME)
    assert seen[0] == ("Unknown", "v1.35.0", 1, 2)  # status first, observedGeneration after the pass
    assert seen[1] == ("Unknown", "v1.35.0", 2, 2)
    assert not tcp_status.reached(_live(store), "Ready")
    _run(controller, clock, clock.now + 12)
    assert seen[-1] == ("Ready", "v1.35.0", 2, 2)
    assert "Upgrading" not in [s[0] for s in seen]
    assert tcp_status.reached(_live(store), "Ready")


def test_version_change_goes_upgrading(lab):
    store, controller, clock, seen = lab
    store.put(_tcp())
    _run(controller, clock, clock.now + 12)
    store.patch(TENANT_CONTROL_PLANE, NS, NAME, MERGE_PATCH, {"spec": {"kubernetes": {"version": "v1.36.0"}}})
    seen.clear()
    _run(controller, clock, clock.now + 12)
    assert seen[0][:2] == ("Upgrading", "v1.35.0")  # the recorded version stays the old one while upgrading
    assert seen[-1] == ("Ready", "v1.36.0", 2, 2)
    assert controller.tenants[(NS, NAME)].version == "v1.36.0"


def test_sleeping_records_the_version_and_wake_is_notready_then_unknown(lab):
    store, controller, clock, seen = lab
    store.put(_tcp())
    _run(controller, clock, clock.now + 12)
    _scale(store, 0)
    controller.reconcile(NS, NAME)
    tcp = _live(store)
    assert seen[-1] == ("Sleeping", "v1.35.0", 2, 2)
    assert tcp_status.reached(tcp, "Sleeping") and not controller.tenants[(NS, NAME)].running
    _scale(store, 2)
    seen.clear()
    _run(controller, clock, clock.now + 12)
    statuses = [s[0] for s in seen]
    assert statuses[0] == "NotReady" and "Unknown" in statuses and statuses[-1] == "Ready"


def test_reached_rules():
    base = {"metadata": {"generation": 3}, "spec": {"kubernetes": {"version": "v1.35.0"}},
            "status": {"observedGeneration": 3,
                       "kubernetesResources": {"version": {"status": "Ready", "version": "v1.35.0"}}}}
    assert tcp_status.reached(base, "Ready")
    stale = copy.deepcopy(base)
    stale["status"]["observedGeneration"] = 2
    assert not tcp_status.reached(stale, "Ready")
    other_version = copy.deepcopy(base)
    other_version["status"]["kubernetesResources"]["version"]["version"] = "v1.34.0"
    assert not tcp_status.reached(other_version, "Ready")
    no_version = copy.deepcopy(base)
    del no_version["status"]["kubernetesResources"]["version"]["version"]
    assert not tcp_status.reached(no_version, "Ready")  # Kamaji always records the version on Ready
    unknown = copy.deepcopy(base)
    unknown["status"]["kubernetesResources"]["version"]["status"] = "Unknown"
    assert not tcp_status.reached(unknown, "Ready")
    sleeping = copy.deepcopy(base)
    sleeping["status"]["kubernetesResources"]["version"]["status"] = "Sleeping"
    assert tcp_status.reached(sleeping, "Sleeping")
    sleeping["status"]["observedGeneration"] = 2
    assert not tcp_status.reached(sleeping, "Sleeping")  # the Sleeping of an older generation
