"""Each role's molecule scenario (default driver, no Docker), run as `molecule test` from the role directory:
create, converge, idempotence, verify, destroy. kamaji_tcp and proxmox_vm run against the lab's emulators,
kubeadm_node against a lab worker booted from a debootstrapped Debian 12 root filesystem (cloud-init applied, its
own sshd on 127.0.88.10), reached over ssh as the cloud-init user with become."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agentkube_lab.lab import rootfs_cache, rootfs_complete

pytestmark = pytest.mark.integration

ROLES = Path(__file__).resolve().parents[2] / "roles"
BIN = Path(sys.executable).parent
SCENARIOS = ("kamaji_tcp", "kubeadm_node", "proxmox_vm", "tenant_baseline", "tenant_metrics")
# a string that must never appear in a scenario's output (the bootstrap token of kubeadm_node is checked by
# tests/integration/test_kubeadm_node_remove.py, where its value is known)
SECRET_MARKERS = {
    "kamaji_tcp": "kind: Config",  # the tenant admin kubeconfig
    "tenant_baseline": "kind: Config",  # the tenant admin kubeconfig
    "proxmox_vm": "PVEAPIToken=",  # the lab's Proxmox token header
    "tenant_metrics": "PVEAPIToken=",  # the lab's Proxmox token header
    "kubeadm_node": "PRIVATE KEY-----",  # the SSH key the scenario makes to reach its worker
}


def _needs_root_rootfs() -> str | None:
    if os.geteuid() != 0:
        return ("needs root: the lab worker's sshd runs in mount and PID namespaces of its own, and debootstrap "
                "builds its root filesystem")
    if shutil.which("debootstrap") is None and not rootfs_complete(rootfs_cache()):
        return (f"debootstrap is not installed (apt-get install debootstrap) and no complete cached rootfs "
                f"(with python3, sshd, sudo) exists at {rootfs_cache()}")
    return None


@pytest.mark.parametrize("role", SCENARIOS)
def test_molecule_default_scenario_passes(role):
    molecule = shutil.which("molecule", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if molecule is None:
        pytest.skip("molecule is not installed (pip install molecule)")
    if role == "kubeadm_node" and (reason := _needs_root_rootfs()):
        pytest.skip(reason)
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_NOCOLOR="1", PY_COLORS="0", NO_COLOR="1")
    if role == "kubeadm_node":
        env["AGENTKUBE_ROOTFS_CACHE"] = str(rootfs_cache())  # the cache _needs_root_rootfs looked at
    proc = subprocess.run([molecule, "test"], cwd=ROLES / role, env=env, capture_output=True, text=True,
                          timeout=1800)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-8000:]
    for step in ("converge", "idempotence", "verify"):
        assert f"{step}: Executed: Successful" in output, output[-8000:]
    if role in SECRET_MARKERS:
        assert SECRET_MARKERS[role] not in output
