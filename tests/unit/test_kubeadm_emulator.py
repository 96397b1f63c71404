"""The lab kubeadm emulator: JoinConfiguration checks, CA pinning and bootstrap-token auth against a lab tenant."""

from __future__ import annotations

import datetime as dt

import pytest
import yaml
from unit_support import start_tenant

from agentkube_lab import kubeadm_emulator as ke

TOKEN_ID, TOKEN_SECRET = "abcdef", "0123456789abcdef"


@pytest.fixture
def tenant(tmp_path):
    emulator, t = start_tenant(tmp_path / "kube")
    expiration = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    t.store.put({"apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
                 "metadata": {"name": f"bootstrap-token-{TOKEN_ID}", "namespace": "kube-system"},
                 "stringData": {"token-id": TOKEN_ID, "token-secret": TOKEN_SECRET, "expiration": expiration,
                                "usage-bootstrap-authentication": "true", "usage-bootstrap-signing": "true",
                                # what `kubeadm token create` sets: the group kubeadm's join RBAC is bound to
                                "auth-extra-groups": "system:bootstrappers:kubeadm:default-node-token"}})
    yield t
    emulator.stop()


@pytest.fixture
def root(tmp_path, monkeypatch):
    root = tmp_path / "root"
    ke.install_into_rootfs(root, "v1.35.7")
    prepare_node(root)
    monkeypatch.setenv("AGENTKUBE_LAB_ROOT", str(root))
    return root


def prepare_node(root) -> None:
    """What kubeadm_node's prep leaves on a node: ip_forward persisted, containerd on the tenant's systemd driver."""
    sysctl = root / "etc/sysctl.d/99-kubernetes.conf"
    sysctl.parent.mkdir(parents=True, exist_ok=True)
    sysctl.write_text("net.ipv4.ip_forward = 1\n")
    write_containerd_config(root, systemd=True)


def write_containerd_config(root, systemd: bool) -> None:
    config = root / "etc/containerd/config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text('version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]\n'
                      f"  SystemdCgroup = {str(systemd).lower()}\n")


def _config(tmp_path, tenant, **overrides) -> str:
    cfg = {"apiVersion": "kubeadm.k8s.io/v1beta4", "kind": "JoinConfiguration",
           "discovery": {"bootstrapToken": {"apiServerEndpoint": tenant.endpoint,
                                            "token": f"{TOKEN_ID}.{TOKEN_SECRET}",
                                            "caCertHashes": [tenant.ca_cert_hash]}},
           "nodeRegistration": {"name": "w0", "taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}],
                                "kubeletExtraArgs": [{"name": "node-labels", "value": "pool=a"}]}}
    for path, value in overrides.items():
        target = cfg
        *parents, leaf = path.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    file = tmp_path / "join.yaml"
    file.write_text(yaml.safe_dump(cfg))
    return str(file)


def _node(tenant):
    return tenant.store.find(tenant.store.resolve("v1", "Node"), None, "w0")


def test_join_registers_the_node_and_writes_the_kubelet_files(tmp_path, tenant, root):
    assert ke.kubeadm_main(["join", "--config", _config(tmp_path, tenant)]) == 0
    node = _node(tenant)
    assert node["metadata"]["labels"]["pool"] == "a"
    assert node["spec"]["taints"] == [{"key": "k", "value": "v", "effect": "NoSchedule"}]
    assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.35.7"
    assert (root / "etc/kubernetes/kubelet.conf").exists()
    assert (root / "var/lib/kubelet/config.yaml").exists()
    assert ke.kubeadm_main(["join", "--config", _config(tmp_path, tenant)]) == 1  # kubelet.conf exists


def test_a_wrong_ca_pin_stops_the_join_before_anything_is_registered(tmp_path, tenant, root, capsys):
    config = _config(tmp_path, tenant, **{"discovery.bootstrapToken.caCertHashes": ["sha256:" + "0" * 64]})
    assert ke.kubeadm_main(["join", "--config", config]) == 1
    assert "does not match any pinned public key" in capsys.readouterr().err
    assert _node(tenant) is None
    assert not (root / "etc/kubernetes/kubelet.conf").exists()


def test_an_unknown_token_cannot_register_a_node(tmp_path, tenant, root, capsys):
    config = _config(tmp_path, tenant, **{"discovery.bootstrapToken.token": "zzzzzz.0123456789abcdef"})
    assert ke.kubeadm_main(["join", "--config", config]) == 1
    assert "JWS" in capsys.readouterr().err
    assert _node(tenant) is None


@pytest.mark.parametrize(("field", "value", "named"), [
    ("apiVersion", "kubeadm.k8s.io/v1beta3", "apiVersion"),
    ("discovery.bootstrapToken.unsafeSkipCAVerification", True, "unsafeSkipCAVerification"),
    ("discovery.bootstrapToken.caCertHashes", [], "caCertHashes"),
    ("discovery.bootstrapToken.token", "short.token", "discovery.bootstrapToken.token"),
    ("nodeRegistration.name", "Not_A_Name", "nodeRegistration.name"),
])
def test_config_validate_names_the_bad_field(tmp_path, tenant, root, capsys, field, value, named):
    assert ke.kubeadm_main(["config", "validate", "--config", _config(tmp_path, tenant, **{field: value})]) == 1
    assert named in capsys.readouterr().err


def test_reset_removes_the_node_files(tmp_path, tenant, root):
    assert ke.kubeadm_main(["join", "--config", _config(tmp_path, tenant)]) == 0
    assert ke.kubeadm_main(["reset", "-f"]) == 0
    assert not (root / "etc/kubernetes/kubelet.conf").exists()
    assert not (root / "var/lib/kubelet").exists()


def test_upgrade_node_needs_a_joined_node_and_rewrites_the_kubelet_config_at_the_new_version(
        tmp_path, tenant, root, capsys):
    assert ke.kubeadm_main(["upgrade", "node"]) == 1
    assert "has not joined" in capsys.readouterr().err
    assert ke.kubeadm_main(["join", "--config", _config(tmp_path, tenant)]) == 0
    assert "v1.35.7 (join)" in (root / "var/lib/kubelet/config.yaml").read_text().splitlines()[0]
    ke.install_into_rootfs(root, "v1.36.2")  # the next minor's packages
    assert ke.kubeadm_main(["upgrade", "node"]) == 0
    assert "v1.36.2 (upgrade node)" in (root / "var/lib/kubelet/config.yaml").read_text().splitlines()[0]
