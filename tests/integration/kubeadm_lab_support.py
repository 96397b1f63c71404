"""Support for the kubeadm_node / tenant_baseline integration tests: a lab tenant served in-process, Debian 12
root filesystems (copies of the debootstrap cache) reached with the chroot connection, and playbook runs
through ansible-runner (so its artifacts can be inspected)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import ansible_runner
import pytest
import yaml

from agentkube_lab.kube_emulator import KubeEmulator
from agentkube_lab.kube_tenant import TenantApi
from agentkube_lab.kubeadm_emulator import install_into_rootfs
from agentkube_lab.lab import rootfs_cache, rootfs_complete

REPO = Path(__file__).resolve().parents[2]
BUILD_ROOTFS = REPO / "roles/kubeadm_node/molecule/default/build_rootfs.sh"
VERSION = "v1.35.7"


def require_chroot_lab() -> Path:
    """The cached Debian 12 root filesystem (built on first use), or a skip with the reason."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the chroot connection and debootstrap need it")
    cache = rootfs_cache()
    if not rootfs_complete(cache):
        if shutil.which("debootstrap") is None:
            pytest.skip("debootstrap is not installed (apt-get install debootstrap) and no cached rootfs exists")
        subprocess.run([str(BUILD_ROOTFS), str(cache)], check=True, timeout=1800)
    return cache


def copy_rootfs(cache: Path, dest: Path, kubelet_version: str | None = None) -> Path:
    """A per-test copy of the cached root filesystem with the lab kubeadm emulator installed."""
    subprocess.run(["cp", "-a", "--reflink=auto", str(cache), str(dest)], check=True)
    install_into_rootfs(dest, VERSION, kubelet_version)
    return dest


@dataclass
class LabTenant:
    emulator: KubeEmulator
    tenant: TenantApi
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (event, kind, name) in store order

    def record(self, event: str, rtype, obj: dict) -> None:
        self.events.append((event, rtype.kind, obj.get("metadata", {}).get("name", "")))

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict | None:
        store = self.tenant.store
        return store.find(store.resolve("v1", kind), namespace, name)

    def list(self, kind: str, namespace: str | None = None) -> list[dict]:
        store = self.tenant.store
        return store.list(store.resolve("v1", kind), namespace)[0]


def start_lab_tenant(state_dir: Path, name: str = "t1", namespace: str = "tenants") -> LabTenant:
    emulator = KubeEmulator(state_dir, ready_delay=0.05, validate_schema=False).start()
    emulator.put_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    emulator.put_object({
        "apiVersion": "kamaji.clastix.io/v1alpha1", "kind": "TenantControlPlane",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"controlPlane": {"deployment": {"replicas": 1}, "service": {"serviceType": "ClusterIP"}},
                 "kubernetes": {"version": VERSION, "kubelet": {}}, "dataStore": "default",
                 "dataStoreSchema": name},
    })
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        tenant = emulator.tenant(namespace, name)
        if tenant is not None and tenant.running:
            lab = LabTenant(emulator, tenant)
            tenant.store.listeners.append(lab.record)
            return lab
        time.sleep(0.05)
    emulator.stop()
    raise AssertionError("the lab tenant did not come up")


@dataclass
class PlaybookRun:
    rc: int
    status: str
    stdout: str
    artifacts_dir: Path
    events: list[dict]

    def changed(self) -> int:
        stats = [e for e in self.events if e.get("event") == "playbook_on_stats"]
        return sum((stats[-1]["event_data"].get("changed") or {}).values()) if stats else -1

    def failure_messages(self) -> list[str]:
        return [str(e["event_data"]["res"].get("msg", "")) for e in self.events
                if e.get("event") == "runner_on_failed" and not e["event_data"].get("ignore_errors")]

    def artifacts_text(self) -> str:
        chunks = []
        for path in self.artifacts_dir.rglob("*"):
            if path.is_file():
                chunks.append(path.read_text(errors="replace"))
        return "\n".join(chunks)


def run_playbook(private_dir: Path, playbook: list[dict], inventory: dict, extravars: dict | None = None
                 ) -> PlaybookRun:
    """Run `playbook` with ansible-runner in `private_dir` (roles from the repo, collections from the venv)."""
    project = private_dir / "project"
    project.mkdir(parents=True, exist_ok=True)
    (project / "play.yml").write_text(yaml.safe_dump(playbook, sort_keys=False))
    inv = private_dir / "inventory"
    inv.mkdir(exist_ok=True)
    (inv / "hosts.yml").write_text(yaml.safe_dump(inventory, sort_keys=False))
    env = private_dir / "env"
    env.mkdir(exist_ok=True)
    if extravars:
        (env / "extravars").write_text(yaml.safe_dump(extravars))
        (env / "extravars").chmod(0o600)
    result = ansible_runner.run(
        private_data_dir=str(private_dir), playbook="play.yml", quiet=True, ident="run",
        envvars={"ANSIBLE_ROLES_PATH": str(REPO / "roles"), "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
                 "ANSIBLE_NOCOLOR": "1"},
    )
    stdout = result.stdout.read() if result.stdout else ""
    events = list(result.events)
    return PlaybookRun(result.rc, result.status, stdout, private_dir / "artifacts" / "run", events)


def chroot_host(rootfs: Path) -> dict:
    return {"ansible_connection": "community.general.chroot", "ansible_host": str(rootfs),
            "ansible_python_interpreter": "/usr/bin/python3"}



# --- the kubeadm_node integration tests' shared pieces: one worker reached through the chroot connection

NODE = "worker-0"


def node_vars(lab: LabTenant, version: str = VERSION, **extra) -> dict:
    """kubeadm_node's variables for NODE joining the lab tenant (no services, no Ready wait: nothing runs)."""
    return {"kubeadm_node_kubernetes_version": version, "kubeadm_node_tenant_kubeconfig": lab.tenant.kubeconfig,
            "kubeadm_node_manage_services": False, "kubeadm_node_wait_ready": False,
            "kubeadm_node_pool": "default", **extra}


def node_inventory(rootfs: Path) -> dict:
    return {"all": {"hosts": {NODE: chroot_host(rootfs),
                              "localhost": {"ansible_connection": "local",
                                            "ansible_python_interpreter": "{{ ansible_playbook_python }}"}}}}

