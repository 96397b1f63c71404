"""The kubeadm_node molecule scenario (create, prepare, converge, idempotence, verify, destroy) on a debootstrapped
Debian 12 root filesystem reached through the chroot connection."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from kubeadm_lab_support import REPO, rootfs_cache

pytestmark = pytest.mark.integration


def test_molecule_kubeadm_node_scenario():
    if os.geteuid() != 0:
        pytest.skip("needs root: debootstrap and the chroot connection need it")
    if shutil.which("debootstrap") is None and not (rootfs_cache() / "usr/bin/python3").exists():
        pytest.skip("debootstrap is not installed (apt-get install debootstrap) and no cached rootfs exists")
    venv_bin = Path(sys.executable).parent
    molecule = venv_bin / "molecule"
    if not molecule.exists():
        pytest.skip(f"molecule is not installed next to {sys.executable}")
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}", "ANSIBLE_NOCOLOR": "1",
           "NO_COLOR": "1"}
    result = subprocess.run([str(molecule), "test"], cwd=REPO / "roles/kubeadm_node", env=env,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, (result.stdout + result.stderr)[-8000:]
