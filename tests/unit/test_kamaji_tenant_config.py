"""What a tenant gets, as Kamaji builds it: kube-system/kubelet-config from kubelet v1beta1 defaults, cgroupDriver
from spec.kubernetes.kubelet.cgroupfs (absent when unset), configurationJSONPatches applied with strict RFC 6902
semantics; a failing patch leaves kubelet-config unwritten (clastix/kamaji internal/kubeadm/uploadconfig.go);
kubeadm join reads it and fails without it; admin.conf carries client certificates of the tenant CA (mutual TLS)."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID
from test_kubeadm_emulator import prepare_node

from agentkube_lab import kubeadm_emulator as ke
from agentkube_lab.certs import LabCA, issue_client_cert
from agentkube_lab.kube_patch import PatchError, json_equal, json_patch
from agentkube_lab.kube_tenant import KUBELET_V1BETA1_DEFAULTS, TenantApi, kubelet_configuration

DNS = ["10.96.0.10"]


# ---------------------------------------------------------------- kubelet-config content
def test_cgroup_driver_is_absent_when_cgroupfs_is_unset():
    config = kubelet_configuration({}, "cluster.local", DNS)
    assert "cgroupDriver" not in config  # Kamaji assigns "" and the JSON encoding omits it
    assert "resolvConf" not in config  # kc.ResolverConfig = nil
    assert config["apiVersion"] == "kubelet.config.k8s.io/v1beta1" and config["kind"] == "KubeletConfiguration"
    assert config["authentication"]["x509"]["clientCAFile"] == "/etc/kubernetes/pki/ca.crt"
    assert config["clusterDNS"] == DNS and config["clusterDomain"] == "cluster.local"
    assert config["rotateCertificates"] is True and config["staticPodPath"] == "/etc/kubernetes/manifests"
    assert config["authorization"]["mode"] == "Webhook" and config["maxPods"] == 110
    assert KUBELET_V1BETA1_DEFAULTS["cgroupDriver"] == "cgroupfs"  # the defaults are not modified
    assert "clientCAFile" not in KUBELET_V1BETA1_DEFAULTS["authentication"]["x509"]


def test_cgroup_driver_comes_from_cgroupfs():
    assert kubelet_configuration({"cgroupfs": "systemd"}, "cluster.local", DNS)["cgroupDriver"] == "systemd"


def test_replace_of_the_absent_cgroup_driver_fails_as_on_kamaji():
    with pytest.raises(PatchError, match="replace operation does not apply: doc is missing key: /cgroupDriver"):
        kubelet_configuration({"configurationJSONPatches": [
            {"op": "replace", "path": "/cgroupDriver", "value": "systemd"}]}, "cluster.local", DNS)


def test_add_sets_the_absent_cgroup_driver_and_replaces_a_present_one():
    add = {"configurationJSONPatches": [{"op": "add", "path": "/cgroupDriver", "value": "systemd"}]}
    assert kubelet_configuration(add, "cluster.local", DNS)["cgroupDriver"] == "systemd"
    both = {"cgroupfs": "cgroupfs", **add}
    assert kubelet_configuration(both, "cluster.local", DNS)["cgroupDriver"] == "systemd"


# ---------------------------------------------------------------- strict RFC 6902
@pytest.mark.parametrize(("ops", "message"), [
    ([{"op": "replace", "path": "/missing", "value": 1}], "replace operation does not apply: doc is missing key"),
    ([{"op": "remove", "path": "/missing"}], "remove operation does not apply: doc is missing key"),
    ([{"op": "test", "path": "/missing", "value": None}], "test operation does not apply"),
    ([{"op": "add", "path": "/no/parent", "value": 1}], "add operation does not apply: doc is missing path"),
    ([{"op": "add", "path": "/list/01", "value": 1}], "invalid array index"),
    ([{"op": "add", "path": "/list/-1", "value": 1}], "invalid array index"),
    ([{"op": "add", "path": "/list/3", "value": 1}], "index out of bounds"),
    ([{"op": "replace", "path": "/list/-", "value": 1}], "doc is missing key"),
    ([{"op": "test", "path": "/flag", "value": 1}], "test failed"),  # true is not 1
    ([{"op": "test", "path": "/n", "value": "1"}], "test failed"),
    ([{"op": "move", "from": "/obj", "path": "/obj/child"}], "into its own child"),
    ([{"op": "copy", "path": "/x"}], "failed to decode from"),
    ([{"op": "add", "path": "/x"}], "missing value"),
    ([{"op": "frobnicate", "path": "/x"}], "Unexpected kind"),
    ([{"op": "add", "value": 1}], "failed to decode path"),
    ([{"op": "add", "path": "x", "value": 1}], "invalid JSON pointer"),
])
def test_strict_json_patch_failures(ops, message):
    doc = {"list": [1, 2], "flag": True, "n": 1, "obj": {"a": 1}}
    with pytest.raises(PatchError, match=message):
        json_patch(doc, ops)


def test_json_patch_successes_and_atomicity():
    doc = {"list": [1, 2], "n": 1, "obj": {"a": 1}, "a/b": {"~c": 0}}
    out = json_patch(doc, [
        {"op": "add", "path": "/list/-", "value": 3}, {"op": "add", "path": "/list/0", "value": 0},
        {"op": "test", "path": "/n", "value": 1.0}, {"op": "copy", "from": "/obj", "path": "/copy"},
        {"op": "move", "from": "/n", "path": "/m"}, {"op": "replace", "path": "/a~1b/~0c", "value": 9},
        {"op": "test", "path": "/obj", "value": {"a": 1}}, {"op": "remove", "path": "/list/1"},
    ])
    assert out == {"list": [0, 2, 3], "obj": {"a": 1}, "a/b": {"~c": 9}, "copy": {"a": 1}, "m": 1}
    with pytest.raises(PatchError):
        json_patch(doc, [{"op": "add", "path": "/x", "value": 1}, {"op": "remove", "path": "/nope"}])
    assert doc == {"list": [1, 2], "n": 1, "obj": {"a": 1}, "a/b": {"~c": 0}}  # unchanged
    assert json_equal({"a": [1, 2.0]}, {"a": [1.0, 2]}) and not json_equal([True], [1])


# ---------------------------------------------------------------- the tenant API
@pytest.fixture
def make_tenant(tmp_path):
    started: list[TenantApi] = []

    def make(kubelet: dict | None = None) -> TenantApi:
        tenant = TenantApi(tmp_path / f"t{len(started)}", "tenants", f"t{len(started)}", "v1.35.0", kubelet=kubelet)
        tenant.start()
        started.append(tenant)
        return tenant
    yield make
    for tenant in started:
        tenant.stop()


def _config_map(tenant: TenantApi, name: str) -> dict | None:
    return tenant.store.find(tenant.store.resolve("v1", "ConfigMap"), "kube-system", name)


def test_tenant_uploads_kubeadm_and_kubelet_config_with_their_rbac(make_tenant):
    tenant = make_tenant({"configurationJSONPatches": [{"op": "add", "path": "/cgroupDriver", "value": "systemd"}]})
    kubelet = yaml.safe_load(_config_map(tenant, "kubelet-config")["data"]["kubelet"])
    assert kubelet["cgroupDriver"] == "systemd" and tenant.kubelet_config_error is None
    assert "ClusterConfiguration" in _config_map(tenant, "kubeadm-config")["data"]
    role = tenant.store.find(tenant.store.resolve("rbac.authorization.k8s.io/v1", "Role"), "kube-system",
                             "kubeadm:kubelet-config")
    assert role["rules"][0]["resourceNames"] == ["kubelet-config"]


def test_a_failing_patch_leaves_kubelet_config_unwritten(make_tenant):
    tenant = make_tenant({"configurationJSONPatches": [{"op": "replace", "path": "/cgroupDriver", "value": "systemd"}]})
    assert _config_map(tenant, "kubelet-config") is None
    assert "unable to apply JSON patching to KubeletConfiguration" in tenant.kubelet_config_error
    assert _config_map(tenant, "kubeadm-config") is not None  # the other phases still ran
    tenant.reconfigure("v1.35.0", {"configurationJSONPatches": [
        {"op": "add", "path": "/cgroupDriver", "value": "systemd"}]})
    assert _config_map(tenant, "kubelet-config") is not None and tenant.kubelet_config_error is None


def _get(url: str, context: ssl.SSLContext) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as resp:
            json.loads(resp.read())
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def test_admin_conf_holds_client_certificates_of_the_tenant_ca(make_tenant, tmp_path):
    tenant = make_tenant()
    user = yaml.safe_load(tenant.kubeconfig)["users"][0]
    assert user["name"] == "kubernetes-admin" and "token" not in user["user"]
    cert = x509.load_pem_x509_certificate(base64.b64decode(user["user"]["client-certificate-data"]))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "kubernetes-admin"
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == [
        "kubeadm:cluster-admins"]
    assert cert.issuer == x509.load_pem_x509_certificate(tenant.ca_pem).subject
    super_admin = yaml.safe_load(tenant.super_admin_kubeconfig)["users"][0]["user"]
    super_cert = x509.load_pem_x509_certificate(base64.b64decode(super_admin["client-certificate-data"]))
    assert [a.value for a in super_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == [
        "system:masters"]
    url = f"{tenant.url}/api/v1/namespaces"
    assert _get(url, tenant.admin_ssl_context()) == 200
    anonymous = ssl.create_default_context(cadata=tenant.ca_pem.decode())
    assert _get(url, anonymous) == 401
    # a certificate from another CA is refused by the TLS layer (CERT_OPTIONAL still verifies what is sent)
    other = issue_client_cert(LabCA(tmp_path / "other"), "admin", "kubernetes-admin", ("system:masters",))
    (tmp_path / "o.crt").write_bytes(other.cert_pem)
    (tmp_path / "o.key").write_bytes(other.key_pem)
    foreign = ssl.create_default_context(cadata=tenant.ca_pem.decode())
    foreign.load_cert_chain(str(tmp_path / "o.crt"), str(tmp_path / "o.key"))
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        _get(url, foreign)


# ---------------------------------------------------------------- kubeadm join reads what Kamaji uploaded
TOKEN_ID, TOKEN_SECRET = "abcdef", "0123456789abcdef"


def _join(tmp_path, tenant, monkeypatch) -> int:
    root = tmp_path / "root"
    ke.install_into_rootfs(root, "v1.35.0")
    prepare_node(root)  # ip_forward on, containerd on systemd: what kubeadm_node's prep leaves
    monkeypatch.setenv("AGENTKUBE_LAB_ROOT", str(root))
    tenant.store.put({"apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
                      "metadata": {"name": f"bootstrap-token-{TOKEN_ID}", "namespace": "kube-system"},
                      "stringData": {"token-id": TOKEN_ID, "token-secret": TOKEN_SECRET,
                                     "usage-bootstrap-authentication": "true", "usage-bootstrap-signing": "true",
                                     # kubeadm's join RBAC is bound to this group (kube_rbac)
                                     "auth-extra-groups": "system:bootstrappers:kubeadm:default-node-token"}})
    cfg = {"apiVersion": "kubeadm.k8s.io/v1beta4", "kind": "JoinConfiguration",
           "discovery": {"bootstrapToken": {"apiServerEndpoint": tenant.endpoint, "token": f"{TOKEN_ID}.{TOKEN_SECRET}",
                                            "caCertHashes": [tenant.ca_cert_hash]}},
           "nodeRegistration": {"name": "w0"}}
    (tmp_path / "join.yaml").write_text(yaml.safe_dump(cfg))
    return ke.kubeadm_main(["join", "--config", str(tmp_path / "join.yaml")])


def test_join_writes_the_clusters_kubelet_config(make_tenant, tmp_path, monkeypatch):
    tenant = make_tenant({"configurationJSONPatches": [{"op": "add", "path": "/cgroupDriver", "value": "systemd"}]})
    assert _join(tmp_path, tenant, monkeypatch) == 0
    written = (tmp_path / "root/var/lib/kubelet/config.yaml").read_text()
    assert yaml.safe_load(written)["cgroupDriver"] == "systemd"
    assert yaml.safe_load(written)["clusterDNS"] == ["10.96.0.10"]


def test_join_defaults_an_unset_cgroup_driver_to_systemd_as_kubeadm(make_tenant, tmp_path, monkeypatch):
    tenant = make_tenant()  # no cgroupfs, no patch: kubelet-config has no cgroupDriver
    assert "cgroupDriver" not in yaml.safe_load(_config_map(tenant, "kubelet-config")["data"]["kubelet"])
    assert _join(tmp_path, tenant, monkeypatch) == 0
    assert yaml.safe_load((tmp_path / "root/var/lib/kubelet/config.yaml").read_text())["cgroupDriver"] == "systemd"


def test_join_fails_without_kubelet_config_before_registering(make_tenant, tmp_path, monkeypatch, capsys):
    tenant = make_tenant({"configurationJSONPatches": [{"op": "replace", "path": "/cgroupDriver", "value": "systemd"}]})
    assert _join(tmp_path, tenant, monkeypatch) == 1
    err = capsys.readouterr().err
    assert 'No kubelet.config.k8s.io/v1beta1 config is loaded' in err and "kubelet-config" in err
    assert "error execution phase kubelet-start: no kubelet component config found" in err
    assert tenant.store.find(tenant.store.resolve("v1", "Node"), None, "w0") is None
    assert not (tmp_path / "root/var/lib/kubelet/config.yaml").exists()


# ---------------------------------------------------------------- the product's TCP against it
@pytest.mark.parametrize("driver", ["systemd", "cgroupfs"])
def test_the_rendered_tcp_yields_a_kubelet_config_with_the_chosen_driver(driver):
    from agentkube.core.tcp_manifest import TcpSettings, render_tcp
    from agentkube.core.tenant_spec import validate_tenant_spec

    tcp = render_tcp(validate_tenant_spec({"kubernetesVersion": "v1.35.7"}), "svc", "id-1",
                     TcpSettings(cgroup_driver=driver))
    kubelet = tcp["spec"]["kubernetes"]["kubelet"]
    config = kubelet_configuration(kubelet, "cluster.local", tcp["spec"]["networkProfile"]["dnsServiceIPs"])
    assert config["cgroupDriver"] == driver
