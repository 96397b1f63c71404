"""tenant_baseline against the lab tenant: CNI (lab stand-in manifest, from a file and from a mirror URL),
Pod Security Admission labels, extra manifests; idempotence; bad input fails before anything is touched."""

from __future__ import annotations

import hashlib
import http.server
import threading

import pytest
import yaml
from kubeadm_lab_support import REPO, run_playbook, start_lab_tenant

pytestmark = pytest.mark.integration

LAB_CNI = REPO / "roles/tenant_baseline/files/lab-cni-stand-in.yaml"
PLAY = [{"name": "Tenant baseline", "hosts": "localhost", "gather_facts": False,
         "vars": {"ansible_python_interpreter": "{{ ansible_playbook_python }}"},
         "roles": ["tenant_baseline"]}]
INVENTORY = {"all": {"hosts": {"localhost": {"ansible_connection": "local"}}}}
PSA = "pod-security.kubernetes.io/"

NETPOL = """apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-ingress, namespace: apps}
spec: {podSelector: {}, policyTypes: [Ingress]}
"""


@pytest.fixture
def lab(tmp_path):
    lab = start_lab_tenant(tmp_path / "kube")
    yield lab
    lab.emulator.stop()


def _vars(lab, **extra) -> dict:
    return {"tenant_baseline_kubeconfig": lab.tenant.kubeconfig, "tenant_baseline_cni": "calico",
            "tenant_baseline_pod_security": "restricted",
            "tenant_baseline_cni_manifest_files": {"calico": [str(LAB_CNI)], "cilium": []},
            "tenant_baseline_download_dir": str(extra.pop("download_dir", "/nonexistent")), **extra}


def test_baseline_applies_cni_psa_and_extras_and_is_idempotent(lab, tmp_path):
    netpol = tmp_path / "netpol.yaml"
    netpol.write_text(NETPOL)
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "pods", "namespace": "apps"},
             "spec": {"hard": {"pods": "50"}}}
    extravars = _vars(lab, tenant_baseline_psa_namespaces=["apps"],
                      tenant_baseline_extra_manifest_files=[str(netpol)],
                      tenant_baseline_extra_manifests=[quota])

    first = run_playbook(tmp_path / "run1", PLAY, INVENTORY, extravars)
    assert first.rc == 0, first.stdout
    assert first.changed() > 0

    for ns in ("default", "apps"):
        labels = lab.get("Namespace", ns)["metadata"]["labels"]
        assert labels[PSA + "enforce"] == "restricted"
        assert labels[PSA + "audit"] == "restricted"
        assert labels[PSA + "warn"] == "restricted"
        assert labels[PSA + "enforce-version"] == "latest"
    assert lab.get("Namespace", "kube-system")["metadata"]["labels"][PSA + "enforce"] == "privileged"
    assert lab.get("ConfigMap", "agentkube-lab-cni", "kube-system") is not None
    store = lab.tenant.store
    assert store.find(store.resolve("networking.k8s.io/v1", "NetworkPolicy"), "apps", "default-deny-ingress")
    assert lab.get("ResourceQuota", "pods", "apps")["spec"]["hard"] == {"pods": "50"}

    second = run_playbook(tmp_path / "run2", PLAY, INVENTORY, extravars)
    assert second.rc == 0, second.stdout
    assert second.changed() == 0


def test_cni_from_a_mirror_url(lab, tmp_path):
    served = tmp_path / "mirror"
    served.mkdir()
    (served / "calico.yaml").write_text(LAB_CNI.read_text())

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(served), **kw)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/calico.yaml"
        checksum = "sha256:" + hashlib.sha256((served / "calico.yaml").read_bytes()).hexdigest()
        extravars = _vars(lab, download_dir=tmp_path / "downloads",
                          tenant_baseline_cni_manifest_files={"calico": [], "cilium": []},
                          tenant_baseline_cni_manifest_urls={"calico": [{"url": url, "checksum": checksum}],
                                                             "cilium": []})
        run = run_playbook(tmp_path / "run", PLAY, INVENTORY, extravars)
    finally:
        server.shutdown()
    assert run.rc == 0, run.stdout
    assert lab.get("ServiceAccount", "agentkube-lab-cni", "kube-system") is not None
    assert list((tmp_path / "downloads").glob("calico-*.yaml"))


def test_cni_none_applies_no_cni(lab, tmp_path):
    run = run_playbook(tmp_path / "run", PLAY, INVENTORY, _vars(lab, tenant_baseline_cni="none"))
    assert run.rc == 0, run.stdout
    assert lab.get("ConfigMap", "agentkube-lab-cni", "kube-system") is None
    assert lab.get("Namespace", "default")["metadata"]["labels"][PSA + "enforce"] == "restricted"


def test_exempt_namespace_in_the_list_fails_before_anything_is_touched(lab, tmp_path):
    run = run_playbook(tmp_path / "run", PLAY, INVENTORY,
                       _vars(lab, tenant_baseline_psa_namespaces=["apps", "kube-system"]))
    assert run.rc != 0
    assert any("tenant_baseline_psa_namespaces" in m and "kube-system" in m for m in run.failure_messages())
    assert PSA + "enforce" not in (lab.get("Namespace", "default")["metadata"].get("labels") or {})
    assert lab.get("ConfigMap", "agentkube-lab-cni", "kube-system") is None


def test_unknown_pod_security_level_is_rejected_naming_the_field(lab, tmp_path):
    run = run_playbook(tmp_path / "run", PLAY, INVENTORY, _vars(lab, tenant_baseline_pod_security="strict"))
    assert run.rc != 0
    assert any("tenant_baseline_pod_security" in m for m in run.failure_messages())
    assert lab.get("ConfigMap", "agentkube-lab-cni", "kube-system") is None


def test_kubeconfig_never_reaches_the_artifacts(lab, tmp_path):
    run = run_playbook(tmp_path / "run", PLAY, INVENTORY, _vars(lab))
    assert run.rc == 0, run.stdout
    token = yaml.safe_load(lab.tenant.kubeconfig)["users"][0]["user"]["client-key-data"]  # admin.conf's secret
    assert token not in run.stdout
    assert token not in run.artifacts_text()
