"""kubeadm_node's upgrade (kubeadm_node_state: upgraded) against the lab tenant, on Debian 12 root filesystems
reached through the chroot connection: a joined node goes to the next minor (drain, packages skipped because the
node already carries the version, `kubeadm upgrade node`, kubelet restart skipped without systemd, uncordon),
re-runs change nothing, a skipped minor is refused before anything is touched, and a failed drain is reported
readably without the kubeconfig."""

from __future__ import annotations

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

from agentkube_lab.kubeadm_emulator import install_into_rootfs

pytestmark = pytest.mark.integration

NEXT = "v1.36.2"  # the minor after VERSION (v1.35.7)
KUBELET_CONFIG = "var/lib/kubelet/config.yaml"
VERSION_RECORD = "etc/kubernetes/agentkube-node-version"


def _play(state: str) -> list[dict]:
    return [{"name": "Worker", "hosts": NODE, "gather_facts": True, "vars": {"kubeadm_node_state": state},
             "tasks": [{"name": f"kubeadm_node {state}", "ansible.builtin.include_role": {"name": "kubeadm_node"}}]}]


@pytest.fixture
def joined(rootfs_cache, tenant_lab, tmp_path):
    """A node joined at VERSION, with a ReplicaSet pod and a DaemonSet pod on it."""
    rootfs = copy_rootfs(rootfs_cache, tmp_path / "rootfs")
    run = run_playbook(tmp_path / "join", _play("joined"), node_inventory(rootfs), node_vars(tenant_lab))
    assert run.rc == 0, run.stdout
    assert (rootfs / VERSION_RECORD).read_text().strip() == VERSION
    tenant_lab.tenant.add_pod("web-1", node_name=NODE, owner_kind="ReplicaSet")
    tenant_lab.tenant.add_pod("agent-1", "kube-system", node_name=NODE, owner_kind="DaemonSet")
    return rootfs


def _node_history(tenant_lab) -> list[tuple[str, str, bool]]:
    """(event, kind/name, Node unschedulable after the event) for Node and Pod events, in store order."""
    history: list[tuple[str, str, bool]] = []

    def listen(event, rtype, obj):
        if rtype.kind in ("Node", "Pod"):
            history.append((event, f"{rtype.kind}/{obj['metadata']['name']}",
                            bool((obj.get("spec") or {}).get("unschedulable"))))
    tenant_lab.tenant.store.listeners.append(listen)
    return history


def test_upgrade_to_the_next_minor_drains_upgrades_and_uncordons(tenant_lab, joined, tmp_path):
    tenant_lab.tenant.reconfigure(NEXT)  # the control plane first, as Kamaji upgrades it
    install_into_rootfs(joined, NEXT)  # the node already carries the new packages: install is skipped
    history = _node_history(tenant_lab)

    run = run_playbook(tmp_path / "upgrade", _play("upgraded"), node_inventory(joined), node_vars(tenant_lab, NEXT))

    assert run.rc == 0, run.stdout
    node_events = [(e, unsched) for e, what, unsched in history if what == f"Node/{NODE}"]
    assert node_events[0] == ("MODIFIED", True), "cordoned first"
    assert node_events[-1] == ("MODIFIED", False), "uncordoned last"
    evicted = history.index(("DELETED", "Pod/web-1", False))
    cordoned = history.index(("MODIFIED", f"Node/{NODE}", True))
    uncordoned = len(history) - 1 - history[::-1].index(("MODIFIED", f"Node/{NODE}", False))
    assert cordoned < evicted < uncordoned
    assert tenant_lab.get("Pod", "agent-1", "kube-system") is not None  # DaemonSet pods stay
    assert not tenant_lab.get("Node", NODE)["spec"].get("unschedulable")
    kubelet_config = (joined / KUBELET_CONFIG).read_text().splitlines()[0]
    assert NEXT in kubelet_config and "upgrade node" in kubelet_config  # `kubeadm upgrade node` of NEXT ran
    assert (joined / VERSION_RECORD).read_text().strip() == NEXT
    assert not (joined / "etc/apt/sources.list.d/kubernetes.list").exists()  # no package repository set up

    history.clear()
    again = run_playbook(tmp_path / "again", _play("upgraded"), node_inventory(joined), node_vars(tenant_lab, NEXT))
    assert again.rc == 0, again.stdout
    assert again.changed() == 0
    assert history == []  # no second drain


def test_an_upgrade_skipping_a_minor_is_refused_before_anything_is_touched(tenant_lab, joined, tmp_path):
    install_into_rootfs(joined, "v1.37.1")  # even with the binaries there, the node runs v1.35
    before = (joined / KUBELET_CONFIG).read_text()
    tenant_lab.events.clear()

    run = run_playbook(tmp_path / "upgrade", _play("upgraded"), node_inventory(joined),
                       node_vars(tenant_lab, "v1.37.1"))

    assert run.rc != 0
    messages = " ".join(run.failure_messages())
    assert VERSION in messages and "v1.37.1" in messages and "one minor at a time" in messages
    assert tenant_lab.events == []  # no cordon, no eviction
    assert (joined / KUBELET_CONFIG).read_text() == before  # `kubeadm upgrade node` never ran
    assert (joined / VERSION_RECORD).read_text().strip() == VERSION


def test_a_failed_drain_is_reported_readably_without_the_kubeconfig(tenant_lab, joined, tmp_path):
    install_into_rootfs(joined, NEXT)
    before = (joined / KUBELET_CONFIG).read_text()
    tenant_lab.tenant.server.inject(r"/eviction$", status=500, times=None, method="POST", message="eviction refused")

    run = run_playbook(tmp_path / "upgrade", _play("upgraded"), node_inventory(joined),
                       node_vars(tenant_lab, NEXT, kubeadm_node_drain_timeout_seconds=5))

    assert run.rc != 0
    messages = run.failure_messages()
    assert any(f"Draining Node {NODE} for the upgrade to {NEXT} failed" in m for m in messages), messages
    token = yaml.safe_load(tenant_lab.tenant.kubeconfig)["users"][0]["user"]["client-key-data"]  # admin.conf's secret
    assert token not in run.stdout and token not in run.artifacts_text()
    assert (joined / KUBELET_CONFIG).read_text() == before
    assert (joined / VERSION_RECORD).read_text().strip() == VERSION
