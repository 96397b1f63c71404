"""kubeadm_node's package path (roles/kubeadm_node/tasks/packages.yml) against the lab's pkgs.k8s.io
(agentkube_lab.k8s_apt_repo), with Debian 12's own apt inside a chroot of a copy of the lab root filesystem:
Release.key at kubeadm_node_package_keyring, the list file as the role writes it, `apt-get update`, the pinned
install, hold. apt refuses a repository signed by another key and a Packages that does not match the signed
Release. The chroot shares the host's network, so the repository on 127.0.0.1 is reached; nothing is mounted into
it (apt and dpkg work without /proc and /dev here). The copy's Debian mirror list is emptied, as the lab's worker
image has it, so apt reads only the lab repository."""

from __future__ import annotations

import gzip
import subprocess
import urllib.request
from pathlib import Path

import pytest

from agentkube_lab.k8s_apt_repo import K8sAptRepo

pytestmark = pytest.mark.integration

# roles/kubeadm_node/defaults/main.yml: kubeadm_node_package_keyring and kubeadm_node_package_list_file
KEYRING = "/etc/apt/keyrings/kubernetes-apt-keyring.asc"
LIST_FILE = "/etc/apt/sources.list.d/kubernetes.list"
PACKAGES = ("kubelet", "kubeadm", "kubectl")  # kubeadm_node_packages
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    with K8sAptRepo(tmp_path_factory.mktemp("apt") / "state", ["v1.35.7", "v1.35.8", "v1.36.0"]) as served:
        yield served


@pytest.fixture
def node(rootfs_cache, tmp_path) -> Path:
    """A copy of the cached Debian 12 root filesystem whose only apt source will be the lab's."""
    root = tmp_path / "rootfs"
    subprocess.run(["cp", "-a", "--reflink=auto", str(rootfs_cache), str(root)], check=True)
    (root / "etc/apt/sources.list").write_text("")
    return root


def add_repository(root: Path, key_url: str, repo_url: str, minor: str) -> None:
    """What packages.yml does: the keyrings folder, get_url of the key, the list file (its exact content)."""
    keyring = root / KEYRING.lstrip("/")
    keyring.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    with urllib.request.urlopen(key_url, timeout=10) as response:
        keyring.write_bytes(response.read())
    keyring.chmod(0o644)
    listing = root / LIST_FILE.lstrip("/")
    listing.write_text(f"# Managed by Ansible (kubeadm_node): Kubernetes {minor} packages\n"
                       f"deb [signed-by={KEYRING}] {repo_url} /\n")
    listing.chmod(0o644)


def chroot(root: Path, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["chroot", str(root), *argv], env=ENV, input=stdin, capture_output=True, text=True,
                          timeout=300)


def test_the_role_s_package_path_installs_pinned_versions_from_the_lab_repository(repo, node):
    add_repository(node, repo.key_url("v1.35"), repo.repo_url("v1.35"), "v1.35")
    update = chroot(node, "apt-get", "update")
    assert update.returncode == 0, update.stdout + update.stderr
    assert "W:" not in update.stdout + update.stderr, update.stdout + update.stderr  # no signature warnings

    install = chroot(node, "apt-get", "install", "-y", *(f"{p}=1.35.7-1.1" for p in PACKAGES))
    assert install.returncode == 0, install.stdout + install.stderr
    assert chroot(node, "kubeadm", "version", "-o", "short").stdout.strip() == "v1.35.7"
    assert chroot(node, "kubelet", "--version").stdout.strip() == "Kubernetes v1.35.7"
    assert chroot(node, "kubectl", "version", "--client").stdout.strip() == "Client Version: v1.35.7"
    for package in PACKAGES:
        status = chroot(node, "dpkg", "-s", package).stdout
        assert "Status: install ok installed" in status, status
        assert "Version: 1.35.7-1.1" in status, status
    for dependency in ("cri-tools", "kubernetes-cni"):  # kubeadm and kubelet Depends, as on pkgs.k8s.io
        assert "Status: install ok installed" in chroot(node, "dpkg", "-s", dependency).stdout

    # dpkg_selections: hold; a held package moves only with --allow-change-held-packages (the role passes it)
    chroot(node, "dpkg", "--set-selections", stdin="".join(f"{p} hold\n" for p in PACKAGES))
    assert chroot(node, "dpkg", "--get-selections", "kubeadm").stdout.split() == ["kubeadm", "hold"]
    held = chroot(node, "apt-get", "install", "-y", "kubeadm=1.35.8-1.1")
    assert held.returncode != 0
    assert "held packages" in (held.stdout + held.stderr).lower(), held.stdout + held.stderr
    patch = chroot(node, "apt-get", "install", "-y", "--allow-change-held-packages",
                   *(f"{p}=1.35.8-1.1" for p in PACKAGES))
    assert patch.returncode == 0, patch.stdout + patch.stderr
    assert chroot(node, "kubeadm", "version", "-o", "short").stdout.strip() == "v1.35.8"
    # the v1.35 repository has no v1.36 packages (one repository per minor, as pkgs.k8s.io)
    other_minor = chroot(node, "apt-get", "install", "-y", "--allow-change-held-packages", "kubeadm=1.36.0-1.1")
    assert other_minor.returncode != 0
    assert "'1.36.0-1.1' for 'kubeadm' was not found" in other_minor.stderr, other_minor.stderr


def test_a_repository_signed_by_another_key_is_refused(repo, node, tmp_path):
    with K8sAptRepo(tmp_path / "other-key", ["v1.35.7"]) as other:
        # the operator's keyring is the lab key; the repository is signed by another one
        add_repository(node, repo.key_url("v1.35"), other.repo_url("v1.35"), "v1.35")
        update = chroot(node, "apt-get", "update")
    output = update.stdout + update.stderr
    assert update.returncode != 0, output
    assert "NO_PUBKEY" in output and "is not signed" in output, output
    install = chroot(node, "apt-get", "install", "-y", "kubeadm=1.35.7-1.1")
    assert install.returncode != 0
    assert "Status: install ok installed" not in chroot(node, "dpkg", "-s", "kubeadm").stdout


def test_a_packages_index_that_does_not_match_the_signed_release_is_refused(node, tmp_path):
    with K8sAptRepo(tmp_path / "tampered", ["v1.35.7"]) as served:
        repo_dir = served.www / "core:/stable:/v1.35/deb"
        text = (repo_dir / "Packages").read_text().replace("Version: 1.35.7-1.1", "Version: 1.35.9-1.1")
        (repo_dir / "Packages").write_text(text)
        (repo_dir / "Packages.gz").write_bytes(gzip.compress(text.encode()))
        add_repository(node, served.key_url("v1.35"), served.repo_url("v1.35"), "v1.35")
        update = chroot(node, "apt-get", "update")
    output = update.stdout + update.stderr
    assert update.returncode != 0, output
    # apt checks the size, then the hashes, the signed Release gives for the index it fetched
    assert "Hash Sum mismatch" in output or "File has unexpected size" in output, output
    policy = chroot(node, "apt-cache", "policy", "kubeadm").stdout
    assert "1.35.9" not in policy, policy
