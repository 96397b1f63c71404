"""kubeadm_node's join against kubeadm's rules, on Debian 12 root filesystems reached through the chroot connection
with the lab kubeadm emulator (agentkube_lab.kubeadm_emulator / kubeadm_checks): a join killed after kubelet-start
began leaves ca.crt and bootstrap-kubelet.conf behind, which kubeadm's preflight refuses; the role resets such a
node and joins it. A JoinConfiguration with an unknown field fails `kubeadm config validate`, so nothing joins;
an operator's cgroup driver that differs from the tenant's is refused naming both (the emulated kubelet's own
refusal, when containerd's driver is not the tenant's, is in tests/unit/test_kubeadm_emulator_strict.py)."""

from __future__ import annotations

import subprocess

import pytest
import yaml
from kubeadm_lab_support import (
    NODE,
    REPO,
    copy_rootfs,
    node_inventory,
    node_vars,
    run_playbook,
)

pytestmark = pytest.mark.integration

CA = "etc/kubernetes/pki/ca.crt"
BOOTSTRAP = "etc/kubernetes/bootstrap-kubelet.conf"
KUBELET_CONF = "etc/kubernetes/kubelet.conf"
JOIN_CONFIG = "etc/kubernetes/kubeadm-join.yaml"
JOIN_TEMPLATE = REPO / "templates/kubeadm-join-configuration.yaml.j2"

PLAY = [{"name": "Worker", "hosts": NODE, "gather_facts": True, "vars": {"kubeadm_node_state": "joined"},
         "tasks": [{"name": "kubeadm_node", "ansible.builtin.include_role": {"name": "kubeadm_node"}}]}]


def _bootstrap_tokens(tenant_lab) -> list[str]:
    return [s["metadata"]["name"] for s in tenant_lab.list("Secret", "kube-system")
            if s.get("type") == "bootstrap.kubernetes.io/token"]


@pytest.fixture
def rootfs(rootfs_cache, tmp_path):
    return copy_rootfs(rootfs_cache, tmp_path / "rootfs")


def test_a_join_killed_after_tls_bootstrap_began_is_reset_and_joined_by_the_next_run(tenant_lab, rootfs, tmp_path):
    # The Node registration (the emulated kubelet's TLS bootstrap) hangs; `timeout` kills kubeadm join meanwhile.
    tenant_lab.tenant.server.inject(r"^/api/v1/nodes$", 503, times=1, method="POST", delay=8, message="hung")
    killed = run_playbook(tmp_path / "killed", PLAY, node_inventory(rootfs),
                          node_vars(tenant_lab, kubeadm_node_join_timeout_seconds=3,
                                    kubeadm_node_join_kill_after_seconds=1, kubeadm_node_discovery_timeout_seconds=2))
    assert killed.rc != 0
    failed = [e["event_data"] for e in killed.events if e.get("event") == "runner_on_failed"]
    assert [(f["task"], f["res"].get("rc")) for f in failed] == [("Run kubeadm join", 124)]  # killed by timeout
    assert (rootfs / CA).exists() and (rootfs / BOOTSTRAP).exists(), "what a killed kubelet-start leaves"
    assert not (rootfs / KUBELET_CONF).exists()
    assert tenant_lab.get("Node", NODE) is None
    assert not (rootfs / JOIN_CONFIG).exists() and _bootstrap_tokens(tenant_lab) == []  # the always: cleanup ran

    # kubeadm itself (the emulator, run inside the root filesystem) now refuses to join it: RunJoinNodeChecks
    join = rootfs / "root/join.yaml"
    join.write_text(yaml.safe_dump({
        "apiVersion": "kubeadm.k8s.io/v1beta4", "kind": "JoinConfiguration", "nodeRegistration": {"name": NODE},
        "discovery": {"bootstrapToken": {"apiServerEndpoint": tenant_lab.tenant.endpoint,
                                         "token": "abcdef.0123456789abcdef",
                                         "caCertHashes": [tenant_lab.tenant.ca_cert_hash]}}}))
    refused = subprocess.run(["chroot", str(rootfs), "/usr/bin/kubeadm", "join", "--config", "/root/join.yaml"],
                             capture_output=True, text=True, check=False, timeout=60)
    assert refused.returncode == 1
    assert "[ERROR FileAvailable--etc-kubernetes-pki-ca.crt]: /etc/kubernetes/pki/ca.crt already exists" \
        in refused.stderr, refused.stderr
    assert "[ERROR FileAvailable--etc-kubernetes-bootstrap-kubelet.conf]" in refused.stderr
    join.unlink()

    rerun = run_playbook(tmp_path / "rerun", PLAY, node_inventory(rootfs), node_vars(tenant_lab))
    assert rerun.rc == 0, rerun.stdout
    reset = [e for e in rerun.events if e.get("event") == "runner_on_ok"
             and e["event_data"].get("task") == "Run kubeadm reset (half-finished join)"]
    assert len(reset) == 1 and "[reset]" in reset[0]["event_data"]["res"]["stdout"]
    assert tenant_lab.get("Node", NODE) is not None
    assert (rootfs / KUBELET_CONF).exists() and not (rootfs / BOOTSTRAP).exists()
    assert _bootstrap_tokens(tenant_lab) == []

    again = run_playbook(tmp_path / "again", PLAY, node_inventory(rootfs), node_vars(tenant_lab))
    assert again.rc == 0, again.stdout
    assert again.changed() == 0  # a joined node is left alone: no second reset


def test_a_join_configuration_with_an_unknown_field_fails_validation_and_nothing_joins(tenant_lab, rootfs, tmp_path):
    template = tmp_path / "join-with-unknown-field.yaml.j2"
    template.write_text(JOIN_TEMPLATE.read_text().replace("nodeRegistration:\n", "nodeRegistration:\n  nodeName: x\n"))

    run = run_playbook(tmp_path / "run", PLAY, node_inventory(rootfs),
                       node_vars(tenant_lab, kubeadm_node_join_template=str(template)))

    assert run.rc != 0
    # `kubeadm config validate` (strict) refused it; the task is no_log (the file holds the token), so the
    # message itself is checked in tests/unit/test_kubeadm_emulator_strict.py
    failed = [e["event_data"]["task"] for e in run.events if e.get("event") == "runner_on_failed"]
    assert failed == ["Render the JoinConfiguration"]
    assert not (rootfs / CA).exists(), "kubeadm join never ran"
    assert tenant_lab.get("Node", NODE) is None
    assert not (rootfs / JOIN_CONFIG).exists() and _bootstrap_tokens(tenant_lab) == []


def test_an_operator_cgroup_driver_that_differs_from_the_tenants_is_refused_naming_both(tenant_lab, rootfs, tmp_path):
    run = run_playbook(tmp_path / "run", PLAY, node_inventory(rootfs),
                       node_vars(tenant_lab, kubeadm_node_cgroup_driver="cgroupfs"))

    assert run.rc != 0
    message = " ".join(run.failure_messages())
    assert "cgroupDriver systemd" in message and "kubeadm_node_cgroup_driver=cgroupfs" in message, message
    assert tenant_lab.get("Node", NODE) is None and not (rootfs / CA).exists()
