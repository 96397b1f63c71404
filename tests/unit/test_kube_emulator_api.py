"""The Kubernetes/Kamaji emulator over HTTPS, through the official `kubernetes` client and a kubeconfig."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from kubernetes import client, config, dynamic
from kubernetes.client.rest import ApiException
from unit_support import wait_for

from agentkube_lab.kube_emulator import READY_DELAY_ANNOTATION, KubeEmulator, default_crd_schema_path

NS = "tenants"


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[KubeEmulator]:
    emulator = KubeEmulator(tmp_path / "kube", ready_delay=0.2, validate_schema=False).start()
    emulator.put_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    yield emulator
    emulator.stop()


@pytest.fixture
def api(emu: KubeEmulator, tmp_path: Path) -> client.ApiClient:
    return config.new_client_from_config(str(emu.write_kubeconfig(tmp_path / "kubeconfig")))


@pytest.fixture
def tcps(api: client.ApiClient):
    return dynamic.DynamicClient(api).resources.get(api_version="kamaji.clastix.io/v1alpha1",
                                                    kind="TenantControlPlane")


def tcp(name: str = "t1", version: str = "v1.34.2", replicas: int = 1, **annotations: str) -> dict:
    return {"apiVersion": "kamaji.clastix.io/v1alpha1", "kind": "TenantControlPlane",
            "metadata": {"name": name, "namespace": NS, "labels": {"svc": name}, "annotations": annotations},
            "spec": {"dataStoreSchema": f"{NS}_{name}",
                     "controlPlane": {"deployment": {"replicas": replicas}, "service": {"serviceType": "ClusterIP"}},
                     "kubernetes": {"version": version, "kubelet": {}}}}


def message_of(error: ApiException) -> str:
    return json.loads(error.body)["message"]


def phase(tcps, name: str = "t1") -> tuple[str | None, str | None]:
    version = (tcps.get(name=name, namespace=NS).to_dict().get("status") or {}).get(
        "kubernetesResources", {}).get("version", {})
    return version.get("status"), version.get("version")


def test_discovery_publishes_kamaji_types(api: client.ApiClient) -> None:
    resources = client.CustomObjectsApi(api).get_api_resources("kamaji.clastix.io", "v1alpha1").to_dict()
    by_name = {r["name"]: r for r in resources["resources"]}
    assert by_name["tenantcontrolplanes"]["short_names"] == ["tcp"]
    assert by_name["tenantcontrolplanes"]["namespaced"] is True and by_name["datastores"]["namespaced"] is False
    assert by_name["tenantcontrolplanes/status"]["kind"] == "TenantControlPlane"
    assert by_name["tenantcontrolplanes/scale"]["kind"] == "Scale"
    groups = client.ApisApi(api).get_api_versions().to_dict()["groups"]
    assert [g["name"] for g in groups] == ["rbac.authorization.k8s.io", "coordination.k8s.io", "kamaji.clastix.io"]


def test_tls_is_verified_and_credentials_required(emu: KubeEmulator) -> None:
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{emu.url}/version", timeout=5)  # the lab CA is not a system CA
    assert requests.get(f"{emu.url}/version", verify=emu.ca_file, timeout=5).json()["gitVersion"]
    anonymous = requests.get(f"{emu.url}/api/v1/namespaces", verify=emu.ca_file, timeout=5)
    assert anonymous.status_code == 401 and anonymous.json()["kind"] == "Status"


def test_core_crud_list_kind_and_errors(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map(NS, {"metadata": {"name": "c1", "labels": {"a": "1"}}, "data": {"k": "v"}})
    core.create_namespaced_config_map(NS, {"metadata": {"name": "c2", "labels": {"a": "2"}}})
    listed = core.list_namespaced_config_map(NS, label_selector="a in (1)")
    assert [i.metadata.name for i in listed.items] == ["c1"] and listed.metadata.resource_version
    raw = dynamic.DynamicClient(api).resources.get(api_version="v1", kind="ConfigMap").get(namespace=NS)
    assert (raw.kind, raw.apiVersion) == ("ConfigMapList", "v1")
    with pytest.raises(ApiException) as conflict:
        core.create_namespaced_config_map(NS, {"metadata": {"name": "c1"}})
    assert conflict.value.status == 409 and '"AlreadyExists"' in conflict.value.body
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_secret("nope", NS)
    assert missing.value.status == 404
    core.delete_namespaced_config_map("c1", NS)
    assert [i.metadata.name for i in core.list_namespaced_config_map(NS).items] == ["c2"]


def test_tcp_goes_ready_with_endpoint_admin_secret_and_tenant_api(emu: KubeEmulator, api, tcps,
                                                                  tmp_path: Path) -> None:
    tcps.create(body=tcp(), namespace=NS)
    assert phase(tcps)[0] in (None, "NotReady")  # Kamaji's computeStatus: no replica ready yet
    wait_for(lambda: phase(tcps) == ("Ready", "v1.34.2"))
    obj = tcps.get(name="t1", namespace=NS).to_dict()
    tenant = emu.tenant(NS, "t1")
    assert obj["status"]["controlPlaneEndpoint"] == tenant.endpoint
    assert obj["metadata"]["finalizers"] == ["finalizer.kamaji.clastix.io"]
    secret = client.CoreV1Api(api).read_namespaced_secret(obj["status"]["kubeconfig"]["admin"]["secretName"], NS)
    assert set(secret.data) == {"admin.conf", "admin.svc", "super-admin.conf", "super-admin.svc"}
    admin_conf = base64.b64decode(secret.data["admin.conf"]).decode()
    ca = base64.b64decode(yaml.safe_load(admin_conf)["clusters"][0]["cluster"]["certificate-authority-data"])
    assert ca == tenant.ca_pem and ca != Path(emu.ca_file).read_bytes()  # the tenant has its own CA
    (tmp_path / "admin.conf").write_text(admin_conf)
    tenant_api = config.new_client_from_config(str(tmp_path / "admin.conf"))
    core = client.CoreV1Api(tenant_api)
    assert {"default", "kube-system", "kube-public"} <= {n.metadata.name for n in core.list_namespace().items}
    assert client.VersionApi(tenant_api).get_code().git_version == "v1.34.2"
    kubeadm = yaml.safe_load(core.read_namespaced_config_map("kubeadm-config", "kube-system").data[
        "ClusterConfiguration"])
    assert kubeadm["kubernetesVersion"] == "v1.34.2" and kubeadm["controlPlaneEndpoint"] == tenant.endpoint


def test_version_webhook_denies_like_a_real_admission_webhook(tcps) -> None:
    with pytest.raises(ApiException) as too_new:
        tcps.create(body=tcp(version="v1.37.0"), namespace=NS)
    assert too_new.value.status == 403
    assert message_of(too_new.value).startswith(
        'admission webhook "vtenantcontrolplane.kb.io" denied the request: unable to create')
    tcps.create(body=tcp(version="v1.33.5"), namespace=NS)
    for version, message in (("v1.35.0", "non-sequential"), ("v1.32.9", "unable to downgrade"),
                             ("1.34", "unable to parse")):
        with pytest.raises(ApiException) as denied:
            tcps.patch(name="t1", namespace=NS, body={"spec": {"kubernetes": {"version": version}}},
                       content_type="application/merge-patch+json")
        assert denied.value.status == 403 and message in message_of(denied.value)
    tcps.patch(name="t1", namespace=NS, body={"spec": {"kubernetes": {"version": "v1.34.0"}}},
               content_type="application/merge-patch+json")


def test_upgrade_sleep_wake_and_stuck(emu: KubeEmulator, tcps) -> None:
    tcps.create(body=tcp(), namespace=NS)
    wait_for(lambda: phase(tcps) == ("Ready", "v1.34.2"))
    tcps.patch(name="t1", namespace=NS, body={"spec": {"kubernetes": {"version": "v1.35.1"}}},
               content_type="application/merge-patch+json")
    assert wait_for(lambda: phase(tcps)[0] in ("Upgrading", "Ready"))
    wait_for(lambda: phase(tcps) == ("Ready", "v1.35.1"))
    tcps.patch(name="t1", namespace=NS, body={"spec": {"controlPlane": {"deployment": {"replicas": 0}}}},
               content_type="application/merge-patch+json")
    wait_for(lambda: phase(tcps)[0] == "Sleeping")
    assert not emu.tenant(NS, "t1").running
    tcps.patch(name="t1", namespace=NS, body={"spec": {"controlPlane": {"deployment": {"replicas": 2}}}},
               content_type="application/merge-patch+json")
    wait_for(lambda: phase(tcps)[0] == "Ready")
    assert emu.tenant(NS, "t1").running
    emu.stick(NS, "t1", "NotReady", reason="EtcdUnavailable", message="datastore is down")
    wait_for(lambda: phase(tcps)[0] == "NotReady")
    condition = tcps.get(name="t1", namespace=NS).to_dict()["status"]["kubernetesResources"]["deployment"][
        "conditions"][0]
    assert condition["reason"] == "EtcdUnavailable" and condition["status"] == "False"
    emu.unstick(NS, "t1")
    wait_for(lambda: phase(tcps)[0] == "Ready")


def test_per_tcp_ready_delay_annotation(emu: KubeEmulator, tcps) -> None:
    tcps.create(body=tcp("slow", **{READY_DELAY_ANNOTATION: "30"}), namespace=NS)
    tcps.create(body=tcp("fast"), namespace=NS)
    wait_for(lambda: phase(tcps, "fast")[0] == "Ready")
    assert phase(tcps, "slow")[0] == "NotReady"  # no replica ready during the first half of the delay


def test_delete_is_observable_as_terminating_then_gone(emu: KubeEmulator, api, tcps) -> None:
    tcps.create(body=tcp(), namespace=NS)
    wait_for(lambda: phase(tcps)[0] == "Ready")
    tenant = emu.tenant(NS, "t1")
    tcps.delete(name="t1", namespace=NS)
    assert tcps.get(name="t1", namespace=NS).metadata.deletionTimestamp
    wait_for(lambda: not tcps.get(namespace=NS).items)
    assert not tenant.running and emu.tenant(NS, "t1") is None
    assert emu.get("v1", "Secret", NS, "t1-admin-kubeconfig") is None


def test_fault_injection_and_request_counts(emu: KubeEmulator, api) -> None:
    core = client.CoreV1Api(api)
    before = emu.request_count[f"/api/v1/namespaces/{NS}/secrets"]
    emu.inject(r"/secrets$", status=503, times=1)
    with pytest.raises(ApiException) as unavailable:
        core.list_namespaced_secret(NS)
    assert unavailable.value.status == 503
    core.list_namespaced_secret(NS)  # only one injected failure
    assert emu.request_count[f"/api/v1/namespaces/{NS}/secrets"] == before + 2


def test_tenant_eviction_cordon_and_bootstrap_tokens(emu: KubeEmulator, tcps, api, tmp_path: Path) -> None:
    tcps.create(body=tcp(), namespace=NS)
    wait_for(lambda: phase(tcps)[0] == "Ready")
    tenant = emu.tenant(NS, "t1")
    tenant.add_node("w1")
    tenant.add_pod("app", node_name="w1")
    (tmp_path / "admin.conf").write_text(tenant.kubeconfig)
    core = client.CoreV1Api(config.new_client_from_config(str(tmp_path / "admin.conf")))
    core.patch_node("w1", {"spec": {"unschedulable": True}})
    assert core.read_node("w1").spec.unschedulable is True
    assert [c.status for c in core.read_node("w1").status.conditions if c.type == "Ready"] == ["True"]
    pods = core.list_pod_for_all_namespaces(field_selector="spec.nodeName=w1").items
    assert [p.metadata.name for p in pods] == ["app"]
    core.create_namespaced_pod_eviction("app", "default", {"apiVersion": "policy/v1", "kind": "Eviction",
                                                           "metadata": {"name": "app", "namespace": "default"},
                                                           "deleteOptions": {"gracePeriodSeconds": 1}})
    terminating = core.read_namespaced_pod("app", "default")  # Terminating through its grace period first
    assert terminating.metadata.deletion_timestamp is not None
    assert terminating.metadata.deletion_grace_period_seconds == 1
    wait_for(lambda: core.list_pod_for_all_namespaces(field_selector="spec.nodeName=w1").items == [])
    core.create_namespaced_secret("kube-system", {
        "metadata": {"name": "bootstrap-token-abcdef"}, "type": "bootstrap.kubernetes.io/token",
        "stringData": {"token-id": "abcdef", "token-secret": "0123456789abcdef",
                       "usage-bootstrap-authentication": "true", "usage-bootstrap-signing": "true"}})
    tenant_ca = tmp_path / "tenant-ca.crt"
    tenant_ca.write_bytes(tenant.ca_pem)
    cluster_info = requests.get(f"{tenant.url}/api/v1/namespaces/kube-public/configmaps/cluster-info",
                                verify=tenant_ca, timeout=5).json()  # anonymous, as kubeadm discovery reads it
    assert "jws-kubeconfig-abcdef" in cluster_info["data"]
    as_token = requests.get(f"{tenant.url}/api/v1/nodes", timeout=5, verify=tenant_ca,
                            headers={"Authorization": "Bearer abcdef.0123456789abcdef"})
    wrong = requests.get(f"{tenant.url}/api/v1/nodes", timeout=5, verify=tenant_ca,
                         headers={"Authorization": "Bearer abcdef.ffffffffffffffff"})
    # authenticated as system:bootstrap:abcdef, but no RBAC rule lets a bootstrap token list nodes
    assert (as_token.status_code, wrong.status_code) == (403, 401)
    assert 'User "system:bootstrap:abcdef" cannot list resource "nodes"' in as_token.json()["message"]
    assert tenant.ca_cert_hash.startswith("sha256:") and len(tenant.ca_cert_hash) == 71


def test_crd_schema_validation_when_contracts_are_present(tmp_path: Path) -> None:
    schema = default_crd_schema_path()
    if schema is None:
        pytest.skip("../shared/contracts/kamaji is absent: no CRD schema to validate against")
    with KubeEmulator(tmp_path / "kube", ready_delay=0.1, crd_schema_path=schema) as emulator:
        emulator.put_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        api = config.new_client_from_config(str(emulator.write_kubeconfig(tmp_path / "kubeconfig")))
        tcps = dynamic.DynamicClient(api).resources.get(api_version="kamaji.clastix.io/v1alpha1",
                                                        kind="TenantControlPlane")
        bad = tcp()
        bad["spec"]["controlPlane"]["service"]["serviceType"] = "Bogus"
        del bad["spec"]["kubernetes"]["kubelet"]
        with pytest.raises(ApiException) as invalid:
            tcps.create(body=bad, namespace=NS)
        assert invalid.value.status == 422
        fields = {c["field"] for c in yaml.safe_load(invalid.value.body)["details"]["causes"]}
        # plus strategy.go's "some validation rules were not checked" (field <nil>): an enum error blocks CEL
        assert fields == {"spec.controlPlane.service.serviceType", "spec.kubernetes.kubelet", "<nil>"}
        good = tcp()
        good["spec"]["unknownField"] = True
        # Kamaji's CEL rules on spec read self.networkProfile.*: without networkProfile, cel-go answers "no such
        # key: networkProfile" and the apiserver refuses the TCP (kube_cel, issue 11)
        good["spec"]["networkProfile"] = {}
        created = tcps.create(body=good, namespace=NS).to_dict()
        assert "unknownField" not in created["spec"]  # pruned, as a structural schema does
        assert created["spec"]["controlPlane"]["deployment"]["strategy"]["type"] == "RollingUpdate"  # defaulted
        wait_for(lambda: phase(tcps)[0] == "Ready")  # the controller's status validates too
        with pytest.raises(ApiException) as immutable:
            tcps.patch(name="t1", namespace=NS, body={"spec": {"dataStoreSchema": "other"}},
                       content_type="application/merge-patch+json")
        assert immutable.value.status == 422
        assert "changing the dataStoreSchema is not supported" in message_of(immutable.value)
