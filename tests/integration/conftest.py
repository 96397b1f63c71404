"""Fixtures shared by the kubeadm_node integration tests (test_kubeadm_*.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubeadm_lab_support import require_chroot_lab, start_lab_tenant


@pytest.fixture(scope="module")
def rootfs_cache() -> Path:
    """The cached Debian 12 root filesystem the workers are copied from (or a skip saying why)."""
    return require_chroot_lab()


@pytest.fixture
def tenant_lab(tmp_path):
    """A lab tenant (Kubernetes emulator) of its own for one test."""
    lab = start_lab_tenant(tmp_path / "kube")
    yield lab
    lab.emulator.stop()
