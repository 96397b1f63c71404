"""LAB STAND-IN of pkgs.k8s.io: the lab's Kubernetes apt repository, signed with a lab key, served on loopback.

pkgs.k8s.io cannot be reached from the lab, so kubeadm_node's real package path (fetch `Release.key` into
/etc/apt/keyrings, `deb [signed-by=...] <repo_url> /`, `apt install kubelet=1.35.7-1.1 ...`, dpkg hold) runs
against this instead. `K8sAptRepo(state_dir, versions).start()` builds the repository once (cached in state_dir:
a later start with the same versions and stand-ins reuses it) and serves it over HTTP on 127.0.0.1 and a free
port; `.repo_url("v1.35")` is the repository of one minor, `.key_url("v1.35")` its Release.key.

The layout is pkgs.k8s.io's (kubernetes.io "Installing kubeadm": `https://pkgs.k8s.io/core:/stable:/v1.35/deb/`
and `.../deb/Release.key`, one flat repository per minor, published by the openSUSE Build Service): in each
`core:/stable:/<minor>/deb/`, `Release` (with the OBS fields Archive/Codename/Origin/Label/Architectures/Date and
the MD5Sum/SHA1/SHA256 of `Packages` and `Packages.gz`), `InRelease` (clearsigned), `Release.gpg` (detached,
armored), `Release.key` (the armored public key), `Packages`, `Packages.gz`, and the packages under `<arch>/`
(`Filename: amd64/kubeadm_1.35.7-1.1_amd64.deb`). Only the host's dpkg architecture is served.

Packages, per minor: kubeadm, kubelet and kubectl at each version (Debian version `1.35.7-1.1`, the revision
pkgs.k8s.io uses), plus the cri-tools and kubernetes-cni they depend on. Control fields follow the spec files of
kubernetes/release cmd/krel/templates/latest/<package>/<package>.spec (Group -> Section, Requires -> Depends) and
its metadata.yaml; the contents are the lab stand-ins (agentkube_lab.kubeadm_emulator.package_files), and every
Description says so. Default versions: patches 0..9 of every minor in pve_lab.SUPPORTED_MINORS (the tests and
the demo use patches up to .9). Building those 40 versions (4 repositories, 128 .debs) takes about 0.8 s on the
lab machine (2 cores, dpkg-deb in parallel); a start that reuses the cached build about 20 ms.

Signing: gpg with a private GNUPGHOME under state_dir (0700) holding a no-passphrase ed25519 key made once (apt
on Debian 12 verifies with gpgv 2.2, which accepts EdDSA). The private key never leaves state_dir; the gpg-agent
started for the build is stopped when it ends.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from agentkube_lab.kubeadm_emulator import LAB_PACKAGES, check_version, package_files

# pkgs.k8s.io's Debian revision (kubernetes/release: OBS builds `<version>-<revision>`, published as 1.35.7-1.1).
REVISION = "-1.1"
DEFAULT_PATCHES = range(10)
MAINTAINER = "agentkube lab <lab@agentkube.invalid>"
KEY_UID = "agentkube lab Kubernetes apt repository (LAB KEY, not pkgs.k8s.io) <lab-apt@agentkube.invalid>"
# kubernetes-cni is versioned on its own (CNI plugins), not with Kubernetes; v1.34's repository carries 1.7.1-1.1.
CNI_VERSION = "1.7.1-1.1"
MINOR_RE = re.compile(r"^v(\d+)\.(\d+)$")
BUILD_FORMAT = "1"  # bump when the layout changes, so cached repositories are rebuilt
SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; gpg-agent puts its sockets in GNUPGHOME (no /run/user here)

# Summary and Group of each package: kubernetes/release cmd/krel/templates/latest/<package>/<package>.spec.
SUMMARIES = {
    "kubeadm": ("admin", "Command-line utility for administering a Kubernetes cluster"),
    "kubelet": ("net", "Node agent for Kubernetes clusters"),
    "kubectl": ("admin", "Command-line utility for interacting with a Kubernetes cluster"),
    "cri-tools": ("admin", "Command-line utility for interacting with a container runtime"),
    "kubernetes-cni": ("net", "Binaries required to provision kubernetes container networking"),
}
# Relations: kubernetes/release cmd/krel/templates/latest/metadata.yaml and kubelet.spec (kubelet Requires
# kubernetes-cni (>= 1.2.0), and under debbuild mount and util-linux; Recommends iptables (>= 1.8.4)); kubeadm >= 1.30
# Requires cri-tools (>= 1.30.0), which the published kubeadm 1.36.0-1.1 carries (kubernetes-sigs/cri-tools#2057).
DEPENDS = {
    "kubelet": ("kubernetes-cni (>= 1.2.0)", "mount", "util-linux"),
    "kubeadm": ("cri-tools (>= 1.30.0)",),
}
RECOMMENDS = {"kubelet": ("iptables (>= 1.8.4)",)}
CRICTL_STUB = """#!/bin/sh
# agentkube LAB STAND-IN for crictl: prints its version, nothing else. Not a crictl.
case "$1" in
  --version|-v) echo "crictl version v{version}" ;;
  *) echo "lab stand-in crictl: only --version is supported" >&2; exit 1 ;;
esac
"""
CNI_README = """agentkube LAB STAND-IN for kubernetes-cni {version}: no CNI plugin binaries are installed.
The lab's tenants emulate pod networking in their API server; nothing on a lab worker runs a CNI plugin.
"""


def package_version(version: str) -> str:
    """The Debian version pkgs.k8s.io gives Kubernetes `version`: v1.35.7 -> 1.35.7-1.1."""
    check_version(version)
    return version[1:] + REVISION


def minor_of(version: str) -> str:
    """v1.35.7 -> v1.35 (the minor naming a repository, kubeadm_node_minor)."""
    check_version(version)
    return version.rsplit(".", 1)[0]


def default_versions() -> list[str]:
    """Patches 0..9 of every supported minor (pve_lab.SUPPORTED_MINORS): v1.33.0 ... v1.36.9."""
    from agentkube_lab.pve_lab import SUPPORTED_MINORS  # the PVE emulator's module, only when asked

    return [f"v{minor}.{patch}" for minor in SUPPORTED_MINORS for patch in DEFAULT_PATCHES]


def host_architecture() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], check=True, capture_output=True,
                          text=True).stdout.strip()


# ---------------------------------------------------------------- packages
@dataclass(frozen=True)
class DebPackage:
    """One .deb to build: name, Debian version, files (absolute path -> (text, mode)) and control relations."""
    name: str
    version: str
    files: dict[str, tuple[str, int]]
    depends: tuple[str, ...] = ()
    recommends: tuple[str, ...] = ()
    directories: tuple[str, ...] = field(default=())

    def filename(self, arch: str) -> str:
        return f"{arch}/{self.name}_{self.version}_{arch}.deb"

    def control(self, arch: str) -> str:
        section, summary = SUMMARIES[self.name]
        size_kib = sum(-(-len(text.encode()) // 1024) for text, _ in self.files.values()) or 1
        fields = [("Package", self.name), ("Version", self.version), ("Architecture", arch),
                  ("Maintainer", MAINTAINER), ("Installed-Size", str(size_kib))]
        if self.depends:
            fields.append(("Depends", ", ".join(self.depends)))
        if self.recommends:
            fields.append(("Recommends", ", ".join(self.recommends)))
        fields += [("Section", section), ("Priority", "optional"), ("Homepage", "https://kubernetes.io"),
                   ("Description", f"{summary} (agentkube lab stand-in)\n"
                                   f" The agentkube lab stand-in for {self.name} {self.version}, served by the lab's\n"
                                   " copy of pkgs.k8s.io: NOT the real Kubernetes package.")]
        return "".join(f"{key}: {value}\n" for key, value in fields)


def minor_packages(minor: str, versions: Iterable[str]) -> list[DebPackage]:
    """The packages of one minor's repository: kubeadm/kubelet/kubectl at each version, cri-tools, kubernetes-cni."""
    major_minor = minor[1:]
    cri_tools = f"{major_minor}.0{REVISION}"  # cri-tools follows Kubernetes minors (cri-tools 1.35.0 for v1.35)
    packages = [
        DebPackage("cri-tools", cri_tools,
                   {"/usr/bin/crictl": (CRICTL_STUB.format(version=cri_tools.split("-")[0]), 0o755)}),
        DebPackage("kubernetes-cni", CNI_VERSION,
                   {"/usr/share/doc/kubernetes-cni/README.agentkube-lab": (CNI_README.format(version=CNI_VERSION),
                                                                           0o644)},
                   directories=("/opt/cni/bin", "/etc/cni/net.d")),
    ]
    for version in versions:
        for name in LAB_PACKAGES:
            packages.append(DebPackage(name, package_version(version), package_files(name, version),
                                       depends=DEPENDS.get(name, ()), recommends=RECOMMENDS.get(name, ())))
    return packages


def build_deb(package: DebPackage, arch: str, scratch: Path, out: Path) -> None:
    """`dpkg-deb --build --root-owner-group` of the package's files (and md5sums, as dh_md5sums writes)."""
    tree = scratch / f"{package.name}_{package.version}"
    md5sums = []
    for absolute, (text, mode) in sorted(package.files.items()):
        target = tree / absolute.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)
        md5sums.append(f"{hashlib.md5(text.encode()).hexdigest()}  {absolute.lstrip('/')}\n")  # noqa: S324
    for directory in package.directories:
        (tree / directory.lstrip("/")).mkdir(parents=True, exist_ok=True)
    debian = tree / "DEBIAN"
    debian.mkdir(parents=True)
    (debian / "control").write_text(package.control(arch))
    (debian / "md5sums").write_text("".join(md5sums))
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "-Zgzip", "--root-owner-group", "--build", str(tree), str(out)],
                   check=True, capture_output=True, text=True)
    shutil.rmtree(tree)


# ---------------------------------------------------------------- indexes
def _digests(data: bytes) -> dict[str, str]:
    return {"MD5Sum": hashlib.md5(data).hexdigest(),  # noqa: S324 - apt's index checksums, not security
            "SHA1": hashlib.sha1(data).hexdigest(),  # noqa: S324
            "SHA256": hashlib.sha256(data).hexdigest()}


def packages_stanza(package: DebPackage, arch: str, deb: bytes) -> str:
    """The Packages entry of a built .deb (dpkg-scanpackages' fields: control + Filename, Size, checksums)."""
    sums = _digests(deb)
    return (package.control(arch) + f"Filename: {package.filename(arch)}\nSize: {len(deb)}\n"
            f"MD5sum: {sums['MD5Sum']}\nSHA1: {sums['SHA1']}\nSHA256: {sums['SHA256']}\n")


def release_text(minor: str, arch: str, indexes: dict[str, bytes], date: dt.datetime) -> str:
    """The flat repository's Release, in the shape OBS publishes for pkgs.k8s.io."""
    project = f"isv:kubernetes:core:stable:{minor}"
    lines = ["Archive: deb", "Codename: deb", f"Origin: obs://agentkube-lab/{project}/deb", f"Label: {project}",
             f"Architectures: {arch}", f"Date: {date.strftime('%a, %d %b %Y %H:%M:%S UTC')}",
             f"Description: agentkube lab stand-in of pkgs.k8s.io core:/stable:/{minor} (not the real packages)"]
    for algorithm in ("MD5Sum", "SHA1", "SHA256"):
        lines.append(f"{algorithm}:")
        lines += [f" {_digests(data)[algorithm]} {len(data):>16} {name}" for name, data in sorted(indexes.items())]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- signing
class LabSigningKey:
    """The lab's repository key in a private GNUPGHOME (`home`, 0700), made once without a passphrase."""

    def __init__(self, home: Path):
        self.home = Path(home)
        self._fingerprint_file = self.home / "agentkube-lab-key.fpr"

    @contextlib.contextmanager
    def session(self) -> Iterator[_Gpg]:
        """gpg bound to this home for a while; the gpg-agent it starts is stopped at the end."""
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.home.chmod(0o700)
        with _short_home(self.home) as home:
            gpg = _Gpg(home)
            try:
                if not self._fingerprint_file.exists():
                    self._fingerprint_file.write_text(gpg.generate(KEY_UID) + "\n")
                gpg.fingerprint = self._fingerprint_file.read_text().strip()
                yield gpg
            finally:
                subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
                               capture_output=True, check=False)


@contextlib.contextmanager
def _short_home(home: Path) -> Iterator[Path]:
    """`home`, or a short symlink to it when gpg-agent's socket path inside it would be too long."""
    if len(str(home / "S.gpg-agent.browser")) <= SOCKET_PATH_MAX:
        yield home
        return
    with tempfile.TemporaryDirectory(prefix="akgpg") as tmp:
        link = Path(tmp) / "h"
        link.symlink_to(home)
        yield link


@dataclass
class _Gpg:
    home: Path
    fingerprint: str = ""

    def _run(self, *args: str, stdin: bytes | None = None) -> bytes:
        done = subprocess.run(["gpg", "--homedir", str(self.home), "--batch", "--no-tty", "--quiet", *args],
                              input=stdin, capture_output=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"gpg {args[0]} failed: {done.stderr.decode(errors='replace').strip()}")
        return done.stdout

    def generate(self, uid: str) -> str:
        # an empty passphrase (no secret): the key is the lab's and lives only in this home
        self._run("--pinentry-mode", "loopback", "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign",
                  "never")
        listing = self._run("--with-colons", "--list-secret-keys", uid).decode()
        return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))

    def public_key(self) -> bytes:
        return self._run("--armor", "--export", self.fingerprint)

    def clearsign(self, data: bytes) -> bytes:
        return self._run("--local-user", self.fingerprint, "--digest-algo", "SHA512", "--clearsign", stdin=data)

    def detach_sign(self, data: bytes) -> bytes:
        return self._run("--local-user", self.fingerprint, "--digest-algo", "SHA512", "--armor", "--detach-sign",
                         stdin=data)


# ---------------------------------------------------------------- the repository
def repo_path(minor: str) -> str:
    """The path of a minor's repository, pkgs.k8s.io's: core:/stable:/v1.35/deb/."""
    return f"core:/stable:/{minor}/deb/"


class _Handler(SimpleHTTPRequestHandler):
    """GET/HEAD of the repository's files; no directory listings; quiet."""

    def list_directory(self, path):
        self.send_error(404, "not found")
        return None

    def log_message(self, format, *args):
        pass


class K8sAptRepo:
    """The lab's pkgs.k8s.io (see the module docstring). versions: "v1.35.7", ...; default: default_versions()."""

    def __init__(self, state_dir: Path, versions: Iterable[str] | None = None):
        self.state_dir = Path(state_dir).resolve()
        chosen = set(default_versions() if versions is None else versions)
        for version in chosen:
            check_version(version)
        self.versions = sorted(chosen, key=lambda v: tuple(int(p) for p in v[1:].split(".")))
        if not self.versions:
            raise ValueError("K8sAptRepo needs at least one version")
        self.minors = sorted({minor_of(v) for v in self.versions}, key=lambda m: int(m.split(".")[1]))
        self.www = self.state_dir / "www"
        self.key = LabSigningKey(self.state_dir / "gnupg")
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- URLs
    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the lab apt repository is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    def repo_url(self, minor: str) -> str:
        if minor not in self.minors:
            raise ValueError(f"the lab apt repository serves {', '.join(self.minors)}, not {minor!r}")
        return self.url + repo_path(minor)

    def key_url(self, minor: str) -> str:
        return self.repo_url(minor) + "Release.key"

    # ---- build
    def build(self) -> bool:
        """Build the repository unless state_dir already holds this one; True when it was (re)built."""
        arch = host_architecture()
        plan = {minor: minor_packages(minor, [v for v in self.versions if minor_of(v) == minor])
                for minor in self.minors}
        stamp = hashlib.sha256(json.dumps(
            [BUILD_FORMAT, arch, {m: [[p.name, p.version, p.files, p.depends, p.recommends, p.directories]
                                      for p in pkgs] for m, pkgs in plan.items()}],
            sort_keys=True).encode()).hexdigest()
        stamp_file = self.state_dir / "built.sha256"
        if self.www.is_dir() and stamp_file.is_file() and stamp_file.read_text().strip() == stamp:
            return False
        self.state_dir.mkdir(parents=True, exist_ok=True)
        stamp_file.unlink(missing_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="www.", dir=self.state_dir))
        try:
            self._build_into(staging, plan, arch)
            shutil.rmtree(self.www, ignore_errors=True)
            staging.rename(self.www)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        stamp_file.write_text(stamp + "\n")
        return True

    def _build_into(self, root: Path, plan: dict[str, list[DebPackage]], arch: str) -> None:
        root.chmod(0o755)
        jobs = [(minor, package) for minor, packages in plan.items() for package in packages]
        scratch = root / ".scratch"

        def one(job: tuple[str, DebPackage]) -> None:
            minor, package = job
            build_deb(package, arch, scratch, root / repo_path(minor) / package.filename(arch))

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            list(pool.map(one, jobs))
        shutil.rmtree(scratch)
        date = dt.datetime.now(dt.UTC)
        with self.key.session() as gpg:
            public_key = gpg.public_key()
            for minor, packages in plan.items():
                repo = root / repo_path(minor)
                index = "\n".join(packages_stanza(p, arch, (repo / p.filename(arch)).read_bytes())
                                  for p in packages).encode()
                indexes = {"Packages": index, "Packages.gz": gzip.compress(index, mtime=0)}
                for name, data in indexes.items():
                    (repo / name).write_bytes(data)
                release = release_text(minor, arch, indexes, date).encode()
                (repo / "Release").write_bytes(release)
                (repo / "InRelease").write_bytes(gpg.clearsign(release))
                (repo / "Release.gpg").write_bytes(gpg.detach_sign(release))
                (repo / "Release.key").write_bytes(public_key)

    # ---- serving
    def start(self) -> K8sAptRepo:
        if self._server is not None:
            return self
        self.build()
        handler = partial(_Handler, directory=str(self.www))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="k8s-apt-repo", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> K8sAptRepo:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
