"""A lab worker VM's guest OS (agentkube_lab.vm_guest_os) boots like a VM: cloud-init applied to its own disk (a
copy of the Debian 12 rootfs cache) and its own sshd on its own 127.0.0.0/8 address, reached with plain ssh as
the cloud-init user with sudo; host key pinning and key authentication really decide; stop leaves nothing behind
(no process, no mount); a restart keeps the host key (per-instance) while a changed config is a new instance;
destroy never touches the cache; an address outside loopback is refused before anything is done.

Needs root (namespaces, mounts, chroot) and the rootfs cache with openssh-server and sudo ($AGENTKUBE_ROOTFS_CACHE);
skips otherwise. The VMs use 127.0.77.<n>:22; when port 22 is taken on such an address (a host sshd listening on
0.0.0.0:22), a free port of that address is used instead and the test output says so."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentkube_lab.lab import rootfs_cache
from agentkube_lab.vm_guest_os import (
    ROOTFS_MARKERS,
    GuestConfigError,
    GuestDisk,
    GuestSshd,
    GuestStateError,
    loginuid_settable,
    mounts_under,
    processes_rooted_in,
)

pytestmark = pytest.mark.integration

USER = "agentkube"
GATEWAY = "127.0.77.1"


@pytest.fixture(scope="module")
def cache() -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root: the VM's sshd runs in namespaces of its own, chrooted into its disk")
    missing_tools = [t for t in ("ssh", "ssh-keygen", "unshare", "chroot") if shutil.which(t) is None]
    if missing_tools:
        pytest.skip(f"missing host tools: {', '.join(missing_tools)}")
    path = rootfs_cache()
    missing = [m for m in ROOTFS_MARKERS if not (path / m).exists()]
    if missing:
        pytest.skip(f"no complete Debian 12 rootfs cache at {path} (missing {', '.join(missing)}): build it with "
                    "roles/kubeadm_node/molecule/default/build_rootfs.sh or set AGENTKUBE_ROOTFS_CACHE")
    return path


def keygen(path: Path) -> Path:
    """A throwaway ed25519 key pair; returns the private key's path."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("keys")
    return {name: keygen(base / name) for name in ("client", "stranger", "other_host")}


_last_octet = iter(range(10 + os.getpid() % 100, 250))


def _bindable(address: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


def vm_address() -> tuple[str, int]:
    """127.0.77.<n> with port 22 free, else (port 22 taken there) a free port of that address."""
    address = f"127.0.77.{next(_last_octet)}"
    if _bindable(address, 22):
        return address, 22
    with socket.socket() as s:
        s.bind((address, 0))
        port = s.getsockname()[1]
    print(f"port 22 is taken on {address}: this VM's sshd uses port {port}")
    return address, port


@dataclass
class Vm:
    disk: GuestDisk
    sshd: GuestSshd
    hostname: str
    known_hosts: Path

    @property
    def target(self) -> str:
        return self.sshd.address if self.sshd.port == 22 else f"[{self.sshd.address}]:{self.sshd.port}"

    def ssh(self, command: str, key: Path, known_hosts: Path | None = None, *extra: str,
            user: str = USER) -> subprocess.CompletedProcess:
        argv = ["ssh", "-F", "/dev/null", "-i", str(key), "-p", str(self.sshd.port),
                "-o", f"UserKnownHostsFile={known_hosts or self.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                "-o", "IdentityAgent=none", "-o", "ConnectTimeout=5", *extra, f"{user}@{self.sshd.address}", command]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)


def wait_for_port(address: str, port: int, timeout: float = 10.0) -> None:
    """What the product does by itself: wait until the VM's sshd answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((address, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def refuses_connections(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def cloud_init(keys: list[Path], address: str, hostname: str) -> dict:
    return dict(hostname=hostname, user=USER, ssh_authorized_keys=[Path(f"{k}.pub").read_text() for k in keys],
                address=address, prefix=24, gateway=GATEWAY, nameservers=[GATEWAY])


def boot(cache: Path, base: Path, hostname: str, keys: list[Path]) -> Vm:
    address, port = vm_address()
    disk = GuestDisk.provision(cache, base / hostname)
    assert disk.apply_cloud_init(**cloud_init(keys, address, hostname)) is True  # first boot: a new instance
    sshd = GuestSshd(disk, address, port).start()
    known_hosts = base / f"{hostname}.known_hosts"
    vm = Vm(disk, sshd, hostname, known_hosts)
    known_hosts.write_text(f"{vm.target} {disk.host_key()}\n")
    wait_for_port(address, port)
    return vm


def shut_down(vm: Vm) -> None:
    vm.sshd.stop()
    vm.disk.destroy()


@pytest.fixture(scope="module")
def booted(cache, keys, tmp_path_factory):
    host_name = socket.gethostname()
    vm = boot(cache, tmp_path_factory.mktemp("vms"), "worker-a1", [keys["client"]])
    yield vm
    shut_down(vm)
    assert socket.gethostname() == host_name  # the VM's hostname lived in its own UTS namespace


@pytest.fixture
def vm(cache, keys, tmp_path):
    vm = boot(cache, tmp_path, "worker-b1", [keys["client"]])
    yield vm
    shut_down(vm)


def test_the_cloud_init_user_logs_in_with_sudo_and_python(booted, keys):
    out = booted.ssh("hostname; id -un; sudo -n id -u; python3 -c 'import apt, sys; print(sys.version_info[0])'",
                     keys["client"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["worker-a1", USER, "0", "3"]
    tty = booted.ssh("tty", keys["client"], None, "-tt")  # a pty of the VM's own devpts instance
    assert tty.returncode == 0, tty.stderr
    assert tty.stdout.strip().startswith("/dev/pts/")


def test_cloud_init_left_the_files_cloud_init_writes(booted, keys):
    root = booted.disk.root
    assert (root / "etc/hostname").read_text() == "worker-a1\n"
    assert "127.0.1.1 worker-a1 worker-a1\n" in (root / "etc/hosts").read_text()
    sudoers = root / "etc/sudoers.d/90-cloud-init-users"
    assert f"\n# User rules for {USER}\n{USER} ALL=(ALL) NOPASSWD:ALL\n" in sudoers.read_text()
    assert sudoers.stat().st_mode & 0o777 == 0o440
    passwd = {line.split(":")[0]: line.split(":") for line in (root / "etc/passwd").read_text().splitlines()}
    uid, home, shell = int(passwd[USER][2]), passwd[USER][5], passwd[USER][6]
    assert (home, shell) == (f"/home/{USER}", "/bin/bash")
    shadow = {line.split(":")[0]: line.split(":")[1] for line in (root / "etc/shadow").read_text().splitlines()}
    assert shadow[USER].startswith("!")  # locked password
    groups = [line.split(":")[0] for line in (root / "etc/group").read_text().splitlines()
              if USER in line.split(":")[3].split(",")]
    assert {"adm", "sudo", "netdev", "plugdev", "video"} <= set(groups)
    authorized = root / f"home/{USER}/.ssh/authorized_keys"
    st = authorized.stat()
    assert (st.st_mode & 0o777, st.st_uid) == (0o600, uid)
    assert (authorized.parent.stat().st_mode & 0o777, authorized.parent.stat().st_uid) == (0o700, uid)
    assert authorized.read_text() == Path(f"{keys['client']}.pub").read_text()
    assert 'rather than the user \\"root\\"' in (root / "root/.ssh/authorized_keys").read_text()
    for kind in ("rsa", "ecdsa", "ed25519"):
        assert booted.disk.host_key(kind).endswith(" root@worker-a1")
    eni = (root / "etc/network/interfaces.d/50-cloud-init").read_text()
    assert f"iface eth0 inet static\n    address {booted.sshd.address}/24\n    gateway {GATEWAY}\n" in eni


def test_a_known_hosts_with_another_key_fails_host_key_verification(booted, keys, tmp_path):
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"{booted.target} {Path(f'{keys['other_host']}.pub').read_text()}")
    out = booted.ssh("true", keys["client"], wrong)
    assert out.returncode == 255
    assert "Host key verification failed" in out.stderr


def test_another_client_key_is_denied(booted, keys):
    out = booted.ssh("true", keys["stranger"])
    assert out.returncode == 255
    assert "Permission denied (publickey" in out.stderr


def test_the_vm_has_its_own_pid_namespace_and_no_mount_reaches_the_host(booted, keys):
    out = booted.ssh("cat /proc/1/comm; ls /proc | grep -c '^[0-9]'", keys["client"])
    assert out.returncode == 0, out.stderr
    comm, count = out.stdout.split()
    assert comm == "sshd" and int(count) < 20  # sshd is PID 1 of the VM; the host's processes are not seen
    assert mounts_under(booted.disk.root) == []
    assert str(booted.disk.root) not in Path("/proc/self/mountinfo").read_text()


def test_stop_ends_every_session_and_a_restart_keeps_the_host_key(vm, keys, cache):
    session = subprocess.Popen(
        ["ssh", "-F", "/dev/null", "-i", str(keys["client"]), "-p", str(vm.sshd.port),
         "-o", f"UserKnownHostsFile={vm.known_hosts}", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
         f"{USER}@{vm.sshd.address}", "echo started; exec sleep 60"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
    assert session.stdout.readline().strip() == "started"
    host_key = vm.disk.host_key()

    vm.sshd.stop()
    assert session.wait(timeout=10) != 0  # the session died with the namespace
    assert not vm.sshd.running
    assert refuses_connections(vm.sshd.address, vm.sshd.port)
    assert processes_rooted_in(vm.disk.root) == []
    assert mounts_under(vm.disk.root) == []
    assert not vm.sshd.pidfile.exists()
    vm.sshd.stop()  # idempotent

    # The same VM boots again: same disk (provision keeps it), same instance, so cc_ssh does not run.
    assert GuestDisk.provision(cache, vm.disk.root).root == vm.disk.root
    assert vm.disk.apply_cloud_init(**cloud_init([keys["client"]], vm.sshd.address, vm.hostname)) is False
    assert vm.disk.host_key() == host_key
    assert vm.sshd.start().running
    vm.sshd.start()  # idempotent: still the one namespace
    wait_for_port(vm.sshd.address, vm.sshd.port)
    out = vm.ssh("sudo -n hostname", keys["client"])
    assert (out.returncode, out.stdout.strip()) == (0, vm.hostname), out.stderr


def test_a_changed_config_is_a_new_instance_with_new_host_keys(cache, keys, tmp_path):
    disk = GuestDisk.provision(cache, tmp_path / "worker-c1")
    address = "127.0.77.3"
    assert disk.apply_cloud_init(**cloud_init([keys["client"]], address, "worker-c1")) is True
    first_key, first_iid = disk.host_key(), disk.instance_id
    # PVE's instance id is the sha1 of the user-data and network-config: a key added makes a new instance.
    assert disk.apply_cloud_init(**cloud_init([keys["client"], keys["stranger"]], address, "worker-c1")) is True
    assert disk.instance_id != first_iid
    assert disk.host_key() != first_key
    authorized = (disk.root / f"home/{USER}/.ssh/authorized_keys").read_text().splitlines()
    assert [line.split()[-1] for line in authorized] == ["client", "stranger"]  # merged, as cloud-init does
    assert (disk.root / "var/lib/cloud/data/previous-instance-id").read_text().strip() == first_iid
    disk.destroy()


def test_a_guest_sshd_config_adding_a_listen_address_is_refused(cache, keys, tmp_path):
    disk = GuestDisk.provision(cache, tmp_path / "worker-h1")
    disk.apply_cloud_init(**cloud_init([keys["client"]], "127.0.77.2", "worker-h1"))
    (disk.root / "etc/ssh/sshd_config.d/wide.conf").write_text("ListenAddress 0.0.0.0\n")
    sshd = GuestSshd(disk, "127.0.77.2")
    with pytest.raises(GuestStateError, match=r"adds listen addresses \['0\.0\.0\.0:22'\]"):
        sshd.start()
    assert not sshd.running and not sshd.pidfile.exists() and processes_rooted_in(disk.root) == []
    disk.destroy()


def _stats(cache: Path) -> dict[str, tuple]:
    files = ("etc/passwd", "etc/shadow", "var/log/dpkg.log", "var/lib/dpkg/status", "usr/bin/python3")
    return {f: (st.st_ino, st.st_mtime_ns, st.st_size, st.st_mode) for f in files for st in [(cache / f).stat()]}


def test_destroy_removes_the_disk_and_never_touches_the_cache(cache, keys, tmp_path):
    before = _stats(cache)
    vm = boot(cache, tmp_path, "worker-d1", [keys["client"]])
    assert (cache / "etc/passwd").stat().st_nlink == 1  # etc/ is a real copy, usr/ is hard-linked
    assert (vm.disk.root / "usr/bin/python3").stat().st_ino == (cache / "usr/bin/python3").stat().st_ino
    out = vm.ssh("sudo -n sh -c 'echo lab-append >> /var/log/dpkg.log && useradd extra'", keys["client"])
    assert out.returncode == 0, out.stderr
    assert (vm.disk.root / "var/log/dpkg.log").read_text().endswith("lab-append\n")
    assert _stats(cache) == before

    with pytest.raises(GuestStateError, match="halt it first"):
        vm.disk.destroy()
    vm.sshd.stop()
    # Something mounted under the disk (here in a mount namespace of the destroying process only): refused.
    refused = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount -t tmpfs lab-test "$1/mnt" && exec "$2" -m agentkube_lab.vm_guest_os destroy --root "$1"',
         "sh", str(vm.disk.root), sys.executable], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "mounted under it" in refused.stderr, refused.stderr
    assert vm.disk.root.is_dir()

    vm.disk.destroy()
    assert not vm.disk.root.exists()
    assert _stats(cache) == before
    assert "lab-append" not in (cache / "var/log/dpkg.log").read_text()


def test_an_address_outside_loopback_is_refused_before_anything_is_done(tmp_path, keys):
    disk = GuestDisk(tmp_path / "worker-e1")
    base = cloud_init([keys["client"]], "127.0.77.4", "worker-e1")
    for change, field in (({"address": "10.0.0.5"}, "address"), ({"address": "::1"}, "address"),
                          ({"prefix": 7}, "prefix"), ({"gateway": "192.168.1.1"}, "gateway"),
                          ({"nameservers": ["1.1.1.1"]}, "nameservers"), ({"user": "root"}, "user"),
                          ({"hostname": "bad_name"}, "hostname"), ({"ssh_authorized_keys": ["ssh-ed25519 AAAA"]},
                                                                   "ssh_authorized_keys")):
        with pytest.raises(GuestConfigError, match=f"^{field}"):
            disk.apply_cloud_init(**(base | change))
    with pytest.raises(GuestConfigError, match=r"outside 127\.0\.0\.0/8"):
        GuestSshd(disk, "192.0.2.10")
    out = subprocess.run(
        [sys.executable, "-m", "agentkube_lab.vm_guest_os", "boot", "--cache", str(tmp_path / "no-cache"),
         "--root", str(disk.root), "--hostname", "worker-e1", "--user", USER,
         "--ssh-key-file", f"{keys['client']}.pub", "--address", "192.0.2.10"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "192.0.2.10 is outside 127.0.0.0/8" in out.stderr
    assert list(tmp_path.iterdir()) == []  # no disk, no pidfile, no log


def test_the_command_line_boots_halts_and_destroys_from_other_processes(cache, keys, tmp_path):
    address, port = vm_address()
    root = tmp_path / "worker-f1"
    cli = [sys.executable, "-m", "agentkube_lab.vm_guest_os"]
    boot_cmd = [*cli, "boot", "--cache", str(cache), "--root", str(root), "--hostname", "worker-f1",
                "--user", USER, "--ssh-key-file", f"{keys['client']}.pub", "--address", address,
                "--port", str(port), "--gateway", GATEWAY]
    first = subprocess.run(boot_cmd, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    host_key = first.stdout.strip()
    assert host_key.startswith("ssh-ed25519 ") and host_key.endswith(" root@worker-f1")
    vm = Vm(GuestDisk(root), GuestSshd(GuestDisk(root), address, port), "worker-f1", tmp_path / "known_hosts")
    vm.known_hosts.write_text(f"{vm.target} {host_key}\n")
    try:
        assert vm.sshd.running  # seen from this process through the pidfile
        wait_for_port(address, port)
        assert vm.ssh("sudo -n id -u", keys["client"]).stdout.strip() == "0"

        assert subprocess.run([*cli, "halt", "--root", str(root)], timeout=60).returncode == 0
        assert refuses_connections(address, port)
        assert processes_rooted_in(root) == []
        assert not vm.sshd.running

        again = subprocess.run(boot_cmd, capture_output=True, text=True, timeout=60)
        assert (again.returncode, again.stdout.strip()) == (0, host_key), again.stderr
        wait_for_port(address, port)
        assert vm.ssh("hostname", keys["client"]).stdout.strip() == "worker-f1"
    finally:
        destroyed = subprocess.run([*cli, "destroy", "--root", str(root)], capture_output=True, text=True,
                                   timeout=60)
    assert destroyed.returncode == 0, destroyed.stderr
    assert not root.exists()
    assert processes_rooted_in(root) == []


def test_pam_loginuid_is_made_optional_only_when_the_lab_cannot_set_loginuids(booted, cache, keys, tmp_path):
    pam_line = "session    required     pam_loginuid.so"
    if loginuid_settable():  # the usual case: the image's PAM stack is left as Debian ships it
        assert pam_line in (booted.disk.root / "etc/pam.d/sshd").read_text()
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to boot without CAP_AUDIT_CONTROL")
    address, port = vm_address()
    root = tmp_path / "worker-g1"
    cli = [sys.executable, "-m", "agentkube_lab.vm_guest_os"]
    # A lab with a loginuid already set and no CAP_AUDIT_CONTROL: pam_loginuid would refuse every session.
    constrained = subprocess.run(
        ["sh", "-c", 'echo 0 > /proc/self/loginuid || exit 77; '
         'exec setpriv --inh-caps=-audit_control --bounding-set=-audit_control "$@"', "sh",
         *cli, "boot", "--cache", str(cache), "--root", str(root), "--hostname", "worker-g1", "--user", USER,
         "--ssh-key-file", f"{keys['client']}.pub", "--address", address, "--port", str(port)],
        capture_output=True, text=True, timeout=60)
    if constrained.returncode == 77:
        pytest.skip("this process's loginuid cannot be set (audit loginuid immutable)")
    try:
        assert constrained.returncode == 0, constrained.stderr
        vm = Vm(GuestDisk(root), GuestSshd(GuestDisk(root), address, port), "worker-g1", tmp_path / "known_hosts")
        vm.known_hosts.write_text(f"{vm.target} {constrained.stdout.strip()}\n")
        wait_for_port(address, port)
        out = vm.ssh("sudo -n id -u", keys["client"])
        assert (out.returncode, out.stdout.strip()) == (0, "0"), out.stderr
        pam = (root / "etc/pam.d/sshd").read_text()
        assert "session    optional     pam_loginuid.so" in pam and pam_line not in pam
    finally:
        subprocess.run([*cli, "destroy", "--root", str(root)], capture_output=True, timeout=60)
    assert not root.exists()
