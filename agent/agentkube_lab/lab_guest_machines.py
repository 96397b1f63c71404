"""The lab's worker VMs as machines: a root filesystem (disk) per VM, booted like a cloud image when the VM starts.

When fakepve says a VM's guest has booted (pve_lab.py), the lab applies the VM's cloud-init settings from its
Proxmox config to the VM's disk (vm_guest_os.GuestDisk: hostname, the `ciuser` with passwordless sudo, `sshkeys`,
fresh host keys, the address) and runs an sshd for it on the VM's own address in 127.0.0.0/8 (vm_guest_os.GuestSshd:
a private mount + PID namespace, chroot). Stopping the VM stops its sshd and every session in it; destroying the VM
removes its disk. The lab's worker image reaches no Debian mirror (GuestDisk.provision empties its apt sources), so
packages come only from the lab's Kubernetes repository on loopback (k8s_apt_repo.py).
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import re
import subprocess
import tempfile
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from agentkube_lab.vm_guest_os import GuestDisk, GuestSshd, loopback_address

log = logging.getLogger(__name__)

HOST_KEY_PATH = "/etc/ssh/ssh_host_ed25519_key.pub"
# PVE's default when `ciuser` is not set is the image's own default user (Debian's cloud images: debian).
DEFAULT_CIUSER = "debian"


class LabNetwork:
    """A /24 of 127.0.0.0/8 that this lab alone uses while it runs ("127.X.Y", X from 16 up: 127.0.x.x is left to
    fixed test addresses): each claim holds an exclusive lock on a file named after the network in the temp
    folder, so two labs on one machine (parallel test processes, a demo beside the suite) never put sshds at the
    same addresses. `release()` (or the process's end) frees it."""

    LOCK_DIR = Path(tempfile.gettempdir()) / "agentkube-lab-networks"

    def __init__(self, rng: random.Random | None = None):
        rng = rng or random.SystemRandom()
        self.LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
        for _ in range(200):
            prefix = f"127.{rng.randint(16, 254)}.{rng.randint(0, 255)}"
            fd = os.open(self.LOCK_DIR / prefix, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.prefix, self._fd = prefix, fd
            return
        raise RuntimeError(f"no free lab network in 127.0.0.0/8 ({self.LOCK_DIR} holds 200 claimed ones)")

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True)
class CloudInit:
    """What a Proxmox VM's config hands cloud-init (qemu-server src/PVE/QemuServer/Cloudinit.pm)."""

    hostname: str
    user: str
    ssh_authorized_keys: list[str]
    address: str
    prefix: int
    gateway: str | None
    nameservers: list[str] = field(default_factory=list)
    mac: str | None = None
    dhcp: bool = False

    @classmethod
    def from_vm_config(cls, config: dict, name: str, address: str, prefix: int) -> CloudInit:
        """`sshkeys` is stored URL-encoded, one key per line (PVE's `pve-urlencoded`); `ipconfig0`'s `gw=` and
        `nameserver` (space separated) as PVE writes them."""
        keys = urllib.parse.unquote(str(config.get("sshkeys") or ""))
        gateway = re.search(r"(?:^|,)gw=([0-9.]+)", str(config.get("ipconfig0") or ""))
        mac = re.search(r"=((?:[0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2})", str(config.get("net0") or ""))
        return cls(hostname=name, user=str(config.get("ciuser") or DEFAULT_CIUSER),
                   ssh_authorized_keys=[k.strip() for k in keys.splitlines() if k.strip()],
                   address=address, prefix=prefix, gateway=gateway.group(1) if gateway else None,
                   nameservers=str(config.get("nameserver") or "").split(),
                   mac=mac.group(1).lower() if mac else None,
                   dhcp="ip=dhcp" in str(config.get("ipconfig0") or "ip=dhcp"))


@dataclass
class Machine:
    disk: GuestDisk
    sshd: GuestSshd | None = None
    booting: threading.Lock = field(default_factory=threading.Lock)


class GuestMachines:
    """The disks and sshds of the lab's VMs, by disk key (unique per VM). Thread-safe; every call blocks."""

    def __init__(self, cache: Path, disks_dir: Path, ssh_port: int = 22):
        self.cache = Path(cache)
        self.disks_dir = Path(disks_dir)
        self.ssh_port = ssh_port
        self._machines: dict[str, Machine] = {}
        self._lock = threading.Lock()

    def boot(self, key: str, settings: CloudInit) -> str:
        """Make the disk (first boot) and apply cloud-init; returns the ed25519 host public key line."""
        loopback_address(settings.address)  # before any disk is made for it
        with self._lock:
            machine = self._machines.setdefault(key, Machine(GuestDisk(self.disks_dir / key)))
        with machine.booting:  # one boot of a VM at a time: two would both be "first boots" and make two host keys
            if not machine.disk.root.is_dir():
                machine.disk = GuestDisk.provision(self.cache, machine.disk.root)
            machine.disk.apply_cloud_init(hostname=settings.hostname, user=settings.user,
                                          ssh_authorized_keys=settings.ssh_authorized_keys, address=settings.address,
                                          prefix=settings.prefix, gateway=settings.gateway,
                                          nameservers=settings.nameservers, mac=settings.mac, dhcp=settings.dhcp)
            return machine.disk.host_key("ed25519")

    def start_sshd(self, key: str, address: str) -> None:
        with self._lock:
            machine = self._machines[key]
            if machine.sshd is not None and machine.sshd.running:
                return
            machine.sshd = GuestSshd(machine.disk, address, self.ssh_port)
        machine.sshd.start()

    def impersonate(self, key: str) -> None:
        """The fault "another machine answers at this VM's address": its sshd presents host keys other than the
        ones cloud-init wrote (and the guest agent reports)."""
        with self._lock:
            disk = self._machines[key].disk
        for kind in ("rsa", "ecdsa", "ed25519"):
            private = disk.root / f"etc/ssh/ssh_host_{kind}_key"
            private.unlink(missing_ok=True)
            Path(f"{private}.pub").unlink(missing_ok=True)
            subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "impostor", "-f", str(private)],
                           check=True, capture_output=True)

    def halt(self, key: str) -> None:
        """The VM stopped: its sshd and every session in it end; the disk stays."""
        with self._lock:
            machine = self._machines.get(key)
            sshd = machine.sshd if machine else None
            if machine:
                machine.sshd = None
        if sshd is not None:
            sshd.stop()

    def destroy(self, key: str) -> None:
        """The VM was destroyed: halt it and remove its disk."""
        self.halt(key)
        with self._lock:
            machine = self._machines.pop(key, None)
        if machine is not None:
            machine.disk.destroy()

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._machines)

    def halt_all(self) -> None:
        """The lab stops: no sshd survives it (the disks stay for leftovers() to report)."""
        for key in self.keys():
            try:
                self.halt(key)
            except Exception:  # stop the others anyway
                log.exception("stopping the sshd of lab VM disk %s failed", key)
