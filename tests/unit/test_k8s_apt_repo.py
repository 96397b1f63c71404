"""The lab's pkgs.k8s.io (agentkube_lab.k8s_apt_repo): layout and URLs per minor, the indexes and their hashes,
the signatures (checked with gpgv against Release.key, as apt does), the package versions and contents, the build
cache, and start/stop. Installing from it with apt in a Debian 12 chroot is tests/integration/
test_k8s_apt_repo_install.py."""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from agentkube_lab import kubeadm_emulator as ke
from agentkube_lab.k8s_apt_repo import K8sAptRepo, default_versions, package_version

pytestmark = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("dpkg-deb", "gpg", "gpgv")),
    reason="needs dpkg-deb, gpg and gpgv (apt-get install dpkg gnupg gpgv)")

VERSIONS = ["v1.35.7", "v1.35.8", "v1.36.0"]
ARCH = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    with K8sAptRepo(tmp_path_factory.mktemp("apt") / "state", VERSIONS) as served:
        yield served


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def stanzas(text: str) -> list[dict[str, str]]:
    """deb822 paragraphs (Packages, a control file), continuation lines joined with newlines."""
    out = []
    for block in text.strip().split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in block.splitlines():
            if line.startswith(" "):
                fields[key] += "\n" + line
            else:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        out.append(fields)
    return out


def release_sums(release: str, algorithm: str) -> dict[str, tuple[str, int]]:
    """name -> (digest, size) of one checksum section of a Release file."""
    lines = release.splitlines()
    start = lines.index(f"{algorithm}:") + 1
    sums = {}
    for line in lines[start:]:
        if not line.startswith(" "):
            break
        digest, size, name = line.split()
        sums[name] = (digest, int(size))
    return sums


def keyring_of(armored: bytes, tmp_path: Path) -> Path:
    """Release.key dearmored into a keyring file, as `gpg --dearmor` does for apt's signed-by."""
    home = tmp_path / "verify-home"
    home.mkdir(mode=0o700, exist_ok=True)
    (tmp_path / "Release.key").write_bytes(armored)
    keyring = tmp_path / f"keyring-{hashlib.sha256(armored).hexdigest()[:8]}.gpg"
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--yes", "--dearmor", "-o", str(keyring),
                    str(tmp_path / "Release.key")], check=True, capture_output=True)
    return keyring


def gpgv(keyring: Path, *files: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["gpgv", "--keyring", str(keyring), *map(str, files)], capture_output=True, text=True)


# ---------------------------------------------------------------- layout and URLs
def test_urls_have_the_shape_of_pkgs_k8s_io(repo):
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", repo.url)
    assert repo.repo_url("v1.35") == repo.url + "core:/stable:/v1.35/deb/"
    assert repo.key_url("v1.36") == repo.url + "core:/stable:/v1.36/deb/Release.key"
    assert repo.minors == ["v1.35", "v1.36"]
    with pytest.raises(ValueError, match=r"v1\.35, v1\.36"):
        repo.repo_url("v1.34")
    with pytest.raises(ValueError):
        repo.repo_url("1.35")  # the minor is named as kubeadm_node_minor names it: v1.35


def test_each_minor_serves_the_flat_repository_files(repo):
    for minor in repo.minors:
        for name in ("Release", "InRelease", "Release.gpg", "Release.key", "Packages", "Packages.gz"):
            assert get(repo.repo_url(minor) + name), f"{minor}/{name} is empty"
    for missing in ("core:/stable:/v1.34/deb/Release", "core:/stable:/v1.35/deb/Packages.xz", "dists/"):
        with pytest.raises(urllib.error.HTTPError) as err:
            get(repo.url + missing)
        assert err.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as err:  # no directory listings
        get(repo.repo_url("v1.35"))
    assert err.value.code == 404


def test_packages_lists_the_minors_versions_with_files_that_match(repo):
    packages = stanzas(get(repo.repo_url("v1.35") + "Packages").decode())
    versions = {(p["Package"], p["Version"]) for p in packages}
    assert versions == {("kubeadm", "1.35.7-1.1"), ("kubelet", "1.35.7-1.1"), ("kubectl", "1.35.7-1.1"),
                        ("kubeadm", "1.35.8-1.1"), ("kubelet", "1.35.8-1.1"), ("kubectl", "1.35.8-1.1"),
                        ("cri-tools", "1.35.0-1.1"), ("kubernetes-cni", "1.7.1-1.1")}
    for entry in packages:
        assert entry["Architecture"] == ARCH
        assert entry["Filename"] == f"{ARCH}/{entry['Package']}_{entry['Version']}_{ARCH}.deb"
        assert "agentkube lab stand-in" in entry["Description"]
        deb = get(repo.repo_url("v1.35") + entry["Filename"])
        assert int(entry["Size"]) == len(deb)
        assert entry["SHA256"] == hashlib.sha256(deb).hexdigest()
        assert entry["MD5sum"] == hashlib.md5(deb).hexdigest()  # noqa: S324 - apt's index checksum
    by_name = {p["Package"]: p for p in packages if p["Version"].startswith("1.35.7")}
    assert by_name["kubeadm"]["Depends"] == "cri-tools (>= 1.30.0)"
    assert by_name["kubelet"]["Depends"].startswith("kubernetes-cni (>= 1.2.0)")
    assert "Depends" not in by_name["kubectl"]


def test_the_kubeadm_deb_carries_the_lab_emulator_at_its_version(repo, tmp_path):
    deb = tmp_path / "kubeadm.deb"
    deb.write_bytes(get(repo.repo_url("v1.35") + f"{ARCH}/kubeadm_1.35.8-1.1_{ARCH}.deb"))
    control = stanzas(subprocess.run(["dpkg-deb", "-f", str(deb)], check=True, capture_output=True,
                                     text=True).stdout)[0]
    assert (control["Package"], control["Version"], control["Architecture"]) == ("kubeadm", "1.35.8-1.1", ARCH)
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], check=True, capture_output=True, text=True).stdout
    assert all(" root/root " in line for line in listing.splitlines())
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    for absolute, (text, mode) in ke.package_files("kubeadm", "v1.35.8").items():
        installed = root / absolute.lstrip("/")
        assert installed.read_text() == text
        assert stat.S_IMODE(installed.stat().st_mode) == mode
    # the packaged emulator runs and reports the package's version
    done = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); from kubeadm_emulator import "
         "kubeadm_main; sys.exit(kubeadm_main(['version', '-o', 'short']))",
         str(root / ke.LIB_DIR.lstrip("/"))],
        env={**os.environ, "AGENTKUBE_LAB_ROOT": str(root), "PYTHONPATH": ""}, capture_output=True, text=True)
    assert done.stdout.strip() == "v1.35.8", done.stderr


# ---------------------------------------------------------------- Release, hashes, signatures
def test_release_names_the_indexes_with_their_hashes(repo):
    for minor in repo.minors:
        release = get(repo.repo_url(minor) + "Release").decode()
        fields = stanzas(release.split("\nMD5Sum:")[0])[0]
        assert fields["Label"] == f"isv:kubernetes:core:stable:{minor}"
        assert fields["Origin"].startswith("obs://") and minor in fields["Origin"]
        assert fields["Architectures"] == ARCH
        assert re.fullmatch(r"\w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} UTC", fields["Date"])
        files = {name: get(repo.repo_url(minor) + name) for name in ("Packages", "Packages.gz")}
        assert gzip.decompress(files["Packages.gz"]) == files["Packages"]
        for algorithm, digest in (("MD5Sum", hashlib.md5), ("SHA1", hashlib.sha1), ("SHA256", hashlib.sha256)):
            assert release_sums(release, algorithm) == {
                name: (digest(data).hexdigest(), len(data)) for name, data in files.items()}


def test_inrelease_and_release_gpg_verify_against_release_key(repo, tmp_path):
    base = repo.repo_url("v1.35")
    keyring = keyring_of(get(base + "Release.key"), tmp_path)
    for name in ("Release", "InRelease", "Release.gpg"):
        (tmp_path / name).write_bytes(get(base + name))
    assert gpgv(keyring, tmp_path / "InRelease").returncode == 0
    assert gpgv(keyring, tmp_path / "Release.gpg", tmp_path / "Release").returncode == 0
    signed = subprocess.run(["gpgv", "--keyring", str(keyring), "--output", "-", str(tmp_path / "InRelease")],
                            check=True, capture_output=True).stdout
    assert signed == (tmp_path / "Release").read_bytes()  # InRelease signs exactly the Release served
    # a Release changed after signing no longer verifies
    tampered = (tmp_path / "Release").read_text().replace("Architectures:", "Architectures: i386")
    (tmp_path / "Release").write_text(tampered)
    assert gpgv(keyring, tmp_path / "Release.gpg", tmp_path / "Release").returncode != 0
    (tmp_path / "InRelease").write_text(get(base + "InRelease").decode().replace("Codename: deb", "Codename: x"))
    assert gpgv(keyring, tmp_path / "InRelease").returncode != 0


def test_a_tampered_packages_fails_the_signed_hash(tmp_path):
    """What apt checks: the signed InRelease's SHA256 of Packages. Changing Packages on the server breaks it."""
    with K8sAptRepo(tmp_path / "state", ["v1.35.7"]) as served:
        base = served.repo_url("v1.35")
        keyring = keyring_of(get(base + "Release.key"), tmp_path)
        (tmp_path / "InRelease").write_bytes(get(base + "InRelease"))
        signed = subprocess.run(["gpgv", "--keyring", str(keyring), "--output", "-", str(tmp_path / "InRelease")],
                                check=True, capture_output=True, text=True).stdout
        expected = release_sums(signed, "SHA256")["Packages"]
        assert (hashlib.sha256(get(base + "Packages")).hexdigest(), len(get(base + "Packages"))) == expected
        on_disk = served.www / "core:/stable:/v1.35/deb/Packages"
        on_disk.write_text(on_disk.read_text().replace("1.35.7-1.1", "1.35.9-1.1"))
        assert hashlib.sha256(get(base + "Packages")).hexdigest() != expected[0]


def test_another_lab_key_does_not_verify(repo, tmp_path):
    with K8sAptRepo(tmp_path / "other", ["v1.35.7"]) as other:
        other_inrelease = tmp_path / "InRelease"
        other_inrelease.write_bytes(get(other.repo_url("v1.35") + "InRelease"))
        assert get(other.key_url("v1.35")) != get(repo.key_url("v1.35"))
    keyring = keyring_of(get(repo.key_url("v1.35")), tmp_path)
    done = gpgv(keyring, other_inrelease)
    assert done.returncode != 0
    assert "No public key" in done.stderr or "NO_PUBKEY" in done.stderr, done.stderr


def test_the_private_key_stays_in_state_dir(repo):
    home = repo.state_dir / "gnupg"
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    key = get(repo.key_url("v1.35")).decode()
    assert key.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    for path in repo.www.rglob("*"):
        if path.is_file():
            assert b"PRIVATE KEY" not in path.read_bytes(), path
    # the gpg-agent the build started is gone
    done = subprocess.run(["gpg-connect-agent", "--homedir", str(home), "--no-autostart", "/bye"],
                          capture_output=True, text=True)
    assert done.returncode != 0 or "no gpg-agent running" in done.stderr


# ---------------------------------------------------------------- versions, build cache, lifecycle
def test_versions_format():
    assert package_version("v1.35.7") == "1.35.7-1.1"
    assert package_version("v1.36.10") == "1.36.10-1.1"
    for bad in ("1.35.7", "v1.35", "v1.35.7-1.1", "latest"):
        with pytest.raises(ValueError, match=r"v1\.35\.7"):
            package_version(bad)
        with pytest.raises(ValueError):
            K8sAptRepo(Path("/nonexistent"), [bad])
    with pytest.raises(ValueError):
        K8sAptRepo(Path("/nonexistent"), [])


def test_default_versions_are_patches_0_to_9_of_the_supported_minors():
    from agentkube_lab.pve_lab import SUPPORTED_MINORS  # only this test needs the PVE emulator's module

    defaults = default_versions()
    assert defaults == [f"v{minor}.{patch}" for minor in SUPPORTED_MINORS for patch in range(10)]
    assert {"v1.33.9", "v1.34.9", "v1.35.7", "v1.35.8", "v1.36.9"} <= set(defaults)  # what tests and demo use
    assert K8sAptRepo(Path("/nonexistent")).minors == [f"v{minor}" for minor in SUPPORTED_MINORS]


def test_a_second_start_reuses_the_build_and_the_key(tmp_path):
    state = tmp_path / "state"
    first = K8sAptRepo(state, ["v1.35.7"])
    assert first.build() is True
    inrelease = state / "www/core:/stable:/v1.35/deb/InRelease"
    before = (inrelease.read_bytes(), inrelease.stat().st_mtime_ns)
    key = (state / "www/core:/stable:/v1.35/deb/Release.key").read_bytes()
    assert K8sAptRepo(state, ["v1.35.7"]).build() is False
    assert (inrelease.read_bytes(), inrelease.stat().st_mtime_ns) == before
    # other versions: rebuilt, with the same lab key
    assert K8sAptRepo(state, ["v1.35.7", "v1.35.8"]).build() is True
    assert b"1.35.8-1.1" in (state / "www/core:/stable:/v1.35/deb/Packages").read_bytes()
    assert (state / "www/core:/stable:/v1.35/deb/Release.key").read_bytes() == key
    assert [p.name for p in state.iterdir() if p.name.startswith("www.")] == []  # no staging left behind


def test_start_and_stop_leave_no_server(tmp_path):
    served = K8sAptRepo(tmp_path / "state", ["v1.34.2"])
    served.start()
    assert served.start() is served  # idempotent
    port = int(served.url.rsplit(":", 1)[1].strip("/"))
    socket.create_connection(("127.0.0.1", port), timeout=2).close()
    served.stop()
    served.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    with pytest.raises(RuntimeError, match="not started"):
        served.url  # noqa: B018 - the property raises
    with served:  # a context manager too, on a new port
        assert get(served.repo_url("v1.34") + "Release")
        port = int(served.url.rsplit(":", 1)[1].strip("/"))
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


def test_install_into_rootfs_writes_exactly_the_package_files(tmp_path):
    """The rootfs stand-ins and the .deb contents come from one function (kubeadm_emulator.package_files)."""
    root = tmp_path / "root"
    ke.install_into_rootfs(root, "v1.35.7", kubelet_version="v1.34.3")
    expected = {**ke.package_files("kubeadm", "v1.35.7"), **ke.package_files("kubelet", "v1.34.3"),
                **ke.package_files("kubectl", "v1.35.7")}
    written = {"/" + str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert written == set(expected)
    for absolute, (text, mode) in expected.items():
        assert (root / absolute.lstrip("/")).read_text() == text
        assert stat.S_IMODE((root / absolute.lstrip("/")).stat().st_mode) == mode
    with pytest.raises(ValueError, match="no lab stand-in"):
        ke.package_files("kube-proxy", "v1.35.7")
