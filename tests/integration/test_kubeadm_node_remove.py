"""kubeadm_node against the lab tenant, on Debian 12 root filesystems reached through the chroot connection:
join (bootstrap token never leaked, deleted after the join), removal order (drain, Node deleted, then the VM),
a never-joined node, and a kubelet on the wrong minor."""

from __future__ import annotations

import base64
import json

import pytest
import yaml
from kubeadm_lab_support import (
    NODE,
    VERSION,
    copy_rootfs,
    node_inventory,
    node_vars,
    run_playbook,
)

pytestmark = pytest.mark.integration



def _play(state: str, vm_record: str | None = None) -> list[dict]:
    tasks: list[dict] = [{"name": f"kubeadm_node {state}", "ansible.builtin.include_role": {"name": "kubeadm_node"}}]
    if vm_record:
        # Stand-in for proxmox_vm's deletion: runs only once the role says the node is removed, and records
        # whether the Node still existed at that moment.
        tasks += [
            {"name": "Look at the Node before deleting the VM", "kubernetes.core.k8s_info": {
                "kubeconfig": "{{ kubeadm_node_tenant_kubeconfig | from_yaml }}", "kind": "Node", "name": NODE},
             "register": "vm_node_check", "delegate_to": "localhost", "no_log": True,
             "vars": {"ansible_python_interpreter": "{{ ansible_playbook_python }}"},
             "when": "kubeadm_node_removed | default(false)"},
            {"name": "Delete the VM (stand-in: records the deletion)", "ansible.builtin.copy": {
                "dest": vm_record, "mode": "0644",
                "content": "{{ {'node_present': vm_node_check.resources | length > 0} | to_json }}"},
             "delegate_to": "localhost", "vars": {"ansible_python_interpreter": "{{ ansible_playbook_python }}"},
             "when": "kubeadm_node_removed | default(false)"},
        ]
    return [{"name": "Worker", "hosts": NODE, "gather_facts": True,
             "vars": {"kubeadm_node_state": state}, "tasks": tasks}]


def _bootstrap_tokens(tenant_lab) -> list[dict]:
    return [s for s in tenant_lab.list("Secret", "kube-system") if s.get("type") == "bootstrap.kubernetes.io/token"]


def test_join_never_leaks_the_bootstrap_token_and_deletes_it(rootfs_cache, tenant_lab, tmp_path):
    created: list[dict] = []
    tenant_lab.tenant.store.listeners.append(
        lambda event, rtype, obj: created.append(obj)
        if event == "ADDED" and obj.get("type") == "bootstrap.kubernetes.io/token" else None)
    rootfs = copy_rootfs(rootfs_cache, tmp_path / "rootfs")

    run = run_playbook(tmp_path / "join", _play("joined"), node_inventory(rootfs), node_vars(tenant_lab))

    assert run.rc == 0, run.stdout
    assert tenant_lab.get("Node", NODE) is not None
    assert len(created) == 1, "one per-node bootstrap token"
    # stringData is merged into data by the apiserver and never stored
    data = {k: base64.b64decode(v).decode() for k, v in (created[0].get("data") or {}).items()}
    assert "stringData" not in created[0]
    secret = data["token-secret"]
    full = f"{data['token-id']}.{secret}"
    text = run.stdout + run.artifacts_text()
    assert secret not in text and full not in text
    assert _bootstrap_tokens(tenant_lab) == []  # deleted after the join
    assert (rootfs / "etc/kubernetes/kubelet.conf").exists()
    assert not (rootfs / "etc/kubernetes/kubeadm-join.yaml").exists()  # the file holding the token is gone
    record = (rootfs / "etc/kubernetes/kubeadm-join.redacted.yaml").read_text()
    assert secret not in record
    assert yaml.safe_load(record)["discovery"]["bootstrapToken"]["token"] == "REDACTED"

    again = run_playbook(tmp_path / "again", _play("joined"), node_inventory(rootfs), node_vars(tenant_lab))
    assert again.rc == 0, again.stdout
    assert again.changed() == 0
    assert len(created) == 1, "a joined node gets no new token"


def test_remove_drains_and_deletes_the_node_before_the_vm(rootfs_cache, tenant_lab, tmp_path):
    rootfs = copy_rootfs(rootfs_cache, tmp_path / "rootfs")
    joined = run_playbook(tmp_path / "join", _play("joined"), node_inventory(rootfs), node_vars(tenant_lab))
    assert joined.rc == 0, joined.stdout
    tenant_lab.tenant.add_pod("web-1", node_name=NODE, owner_kind="ReplicaSet")
    tenant_lab.tenant.add_pod("agent-1", "kube-system", node_name=NODE, owner_kind="DaemonSet")
    tenant_lab.tenant.add_pod("elsewhere", node_name="other-node", owner_kind="ReplicaSet")
    tenant_lab.events.clear()
    vm_record = tmp_path / "vm-deleted.json"

    run = run_playbook(tmp_path / "remove", _play("removed", str(vm_record)), node_inventory(rootfs),
                       node_vars(tenant_lab))

    assert run.rc == 0, run.stdout
    order = [(e, k, n) for e, k, n in tenant_lab.events if e == "DELETED" or (k == "Node" and e == "MODIFIED")]
    assert ("MODIFIED", "Node", NODE) in order  # cordoned
    assert order.index(("DELETED", "Pod", "web-1")) < order.index(("DELETED", "Node", NODE))
    assert order.index(("MODIFIED", "Node", NODE)) < order.index(("DELETED", "Pod", "web-1"))
    assert tenant_lab.get("Pod", "elsewhere", "default") is not None
    assert tenant_lab.get("Pod", "agent-1", "kube-system") is not None  # DaemonSet pods are not evicted
    assert tenant_lab.get("Node", NODE) is None
    assert json.loads(vm_record.read_text()) == {"node_present": False}
    assert not (rootfs / "etc/kubernetes/kubelet.conf").exists()  # kubeadm reset -f ran


def test_a_node_that_never_joined_is_not_drained(rootfs_cache, tenant_lab, tmp_path):
    rootfs = copy_rootfs(rootfs_cache, tmp_path / "rootfs")
    tenant_lab.tenant.add_pod("web-1", node_name=NODE, owner_kind="ReplicaSet")  # stale binding, no Node
    tenant_lab.events.clear()
    vm_record = tmp_path / "vm-deleted.json"

    run = run_playbook(tmp_path / "remove", _play("removed", str(vm_record)), node_inventory(rootfs),
                       node_vars(tenant_lab))

    assert run.rc == 0, run.stdout
    assert tenant_lab.events == []  # no cordon, no eviction, no delete
    assert tenant_lab.get("Pod", "web-1", "default") is not None
    assert json.loads(vm_record.read_text()) == {"node_present": False}


def test_a_kubelet_on_another_minor_fails_naming_both_versions(rootfs_cache, tenant_lab, tmp_path):
    rootfs = copy_rootfs(rootfs_cache, tmp_path / "rootfs", kubelet_version="v1.34.3")

    run = run_playbook(tmp_path / "join", _play("joined"), node_inventory(rootfs), node_vars(tenant_lab))

    assert run.rc != 0
    messages = " ".join(run.failure_messages())
    assert "v1.34.3" in messages and VERSION in messages and "kubelet" in messages
    assert tenant_lab.get("Node", NODE) is None
    assert _bootstrap_tokens(tenant_lab) == []
    assert not (rootfs / "etc/modules-load.d/kubernetes.conf").exists()  # failed before prep touched the node
