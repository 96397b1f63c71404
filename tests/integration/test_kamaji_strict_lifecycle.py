"""The kamaji_tcp role against the strict Kamaji emulator: the status sequence Kamaji's computeStatus shows on a
create and on a certSAN change, the kubelet-config workers join with, and a create whose kubelet patch Kamaji
could not apply failing the job with a message naming the missing kubelet-config (instead of hanging)."""

from __future__ import annotations

import uuid

import pytest
import yaml
from test_kamaji_tcp_role import NAMESPACE, Tenant, version_status

from agentkube_lab.kube_emulator import KubeEmulator

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    state = tmp_path_factory.mktemp("kube")
    emulator = KubeEmulator(state, ready_delay=0.3).start()
    emulator.kubeconfig_path = emulator.write_kubeconfig(state / "parent.kubeconfig")
    yield emulator
    emulator.stop()


@pytest.fixture
def tenant(parent, tmp_path):
    return Tenant(parent, tmp_path, f"Strict {uuid.uuid4().hex[:6]}", str(uuid.uuid4()))


@pytest.fixture
def statuses(parent):
    """Every (status, recorded version, observedGeneration, generation) the parent stores for a TCP, by name."""
    seen: dict[str, list[tuple]] = {}

    def record(_event, rtype, obj):
        if rtype.kind != "TenantControlPlane" or not obj.get("status"):
            return
        version = obj["status"].get("kubernetesResources", {}).get("version", {})
        entry = (version.get("status"), version.get("version"), obj["status"].get("observedGeneration"),
                 obj["metadata"].get("generation"))
        history = seen.setdefault(obj["metadata"]["name"], [])
        if not history or history[-1] != entry:
            history.append(entry)
    parent.store.listeners.append(record)
    yield seen
    parent.store.listeners.remove(record)


def _kubelet_config(parent, tenant) -> dict | None:
    api = parent.tenant(NAMESPACE, tenant.name)
    cm = api.store.find(api.store.resolve("v1", "ConfigMap"), "kube-system", "kubelet-config")
    return yaml.safe_load(cm["data"]["kubelet"]) if cm else None


def test_create_shows_kamajis_status_sequence_and_uploads_the_kubelet_config(tenant, parent, statuses):
    run = tenant.run({"kubernetesVersion": "v1.35.7"})
    assert run.rc == 0, run.failures
    names = [s[0] for s in statuses[tenant.name]]
    assert names[0] == "NotReady" and names[-1] == "Ready", names
    assert names.index("NotReady") < names.index("Provisioning") < names.index("Ready")
    assert statuses[tenant.name][-1] == ("Ready", "v1.35.7", 1, 1)
    assert _kubelet_config(parent, tenant)["cgroupDriver"] == "systemd"  # the template's `add` reached it


def test_a_certsan_change_goes_unknown_then_ready(tenant, parent, statuses):
    assert tenant.run({"kubernetesVersion": "v1.35.7"}).rc == 0
    run = tenant.run({"kubernetesVersion": "v1.35.7", "controlPlane": {"certSANs": ["api.example.org"]}})
    assert run.rc == 0, run.failures
    after = statuses[tenant.name][statuses[tenant.name].index(("Ready", "v1.35.7", 1, 1)):]
    assert ("Unknown", "v1.35.7", 1, 2) in after  # rolled out, not a version change; generation 2 not observed yet
    assert "Upgrading" not in [s[0] for s in after]
    assert after[-1] == ("Ready", "v1.35.7", 2, 2)
    live = tenant.live()
    assert live["spec"]["networkProfile"]["certSANs"] == ["api.example.org"] and version_status(live) == "Ready"


def test_a_kubelet_patch_kamaji_cannot_apply_fails_the_create_naming_kubelet_config(tenant, parent):
    broken = {"kubernetes": {"kubelet": {"configurationJSONPatches": [
        {"op": "replace", "path": "/cgroupDriver", "value": "systemd"}]}}}  # the old template's patch
    run = tenant.run({"kubernetesVersion": "v1.35.7"}, kamaji_tcp_extra_spec=broken,
                     kamaji_tcp_kubelet_config_timeout=2)
    assert run.rc != 0
    assert any("Fail naming the missing kubelet-config" in f and "no kube-system/kubelet-config" in f
               and "configurationJSONPatches" in f for f in run.failures), run.failures
    assert version_status(tenant.live()) == "Ready"  # as on Kamaji: the TCP is Ready all the same
    assert _kubelet_config(parent, tenant) is None
    assert "unable to apply JSON patching" in parent.tenant(NAMESPACE, tenant.name).kubelet_config_error
