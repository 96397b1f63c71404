"""LAB EMULATOR: the guest OS of a lab worker VM: its root filesystem (the "disk"), what cloud-init does when
the VM boots from a Proxmox VE config with ciuser/sshkeys/ipconfig0, and the VM's own sshd.

A lab VM shares the host's kernel and network: its "address" is one of 127.0.0.0/8 (all of it is local on
Linux), owned by the VM's sshd binding it. Ansible reaches the VM as in production: plain ssh to that address as
the cloud-init user, `become` (sudo) for root work.

- `GuestDisk.provision(cache, root)` makes the disk from the cached Debian 12 root filesystem. Measured on this
  machine (ext4: no reflink; 3 runs, the page cache warm, each followed by sync): `cp -al` of usr/ and the rest
  with real copies of the trees written in place takes 0.9-1.1 s and writes 63 MB per VM; a full `cp -a` takes
  2.5-4 s and writes 363 MB. Hard links are used only for files nothing writes in place: dpkg, apt and Ansible
  replace files under usr/ by rename (a new inode). etc/, var/ (dpkg's status, the logs apt/dpkg and sshd
  append to), root/, home/, tmp/, run/, dev/ are real copies. Caveat: a chmod/chown/in-place write of a
  hard-linked file under usr/ would reach the cache; the product does none (it installs by package or rename).
- `GuestDisk.apply_cloud_init(...)` is one boot's cloud-init run for that config (see its docstring).
- `GuestSshd(disk, address).start()` runs the disk's /usr/sbin/sshd in private mount, PID, UTS and IPC
  namespaces (the VM's own /proc, /dev, /run and hostname), chrooted into the disk, listening on the VM's
  address only. `.stop()` kills the namespace (every session in it) and waits until none of it is left.
- `python -m agentkube_lab.vm_guest_os boot|halt|destroy` does the same from a separate process (pidfile and
  sshd log next to the disk: <root>.sshd.pid, <root>.sshd.log).

Upstream sources transcribed: proxmox/qemu-server src/PVE/QemuServer/Cloudinit.pm (what PVE puts on the
NoCloud drive), canonical/cloud-init (cloudinit/config/cc_*.py, cloudinit/distros/__init__.py and debian.py,
cloudinit/ssh_util.py, cloudinit/net/eni.py, config/cloud.cfg.tmpl, templates/hosts.debian.tmpl).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import errno
import fnmatch
import hashlib
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOTFS_MARKERS = ("usr/bin/python3", "usr/sbin/sshd", "usr/bin/sudo")
# Top-level trees of the disk that are real copies (written in place); everything else is hard-linked.
COPIED_TREES = frozenset({"etc", "var", "root", "home", "tmp", "run", "dev"})
GUEST_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
STOP_TIMEOUT = 10.0

# pve-common src/PVE/JSONSchema.pm pve_verify_dns_name: the format of a VM's `name` (its hostname).
DNS_NAME_RE = re.compile(r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?\.)*[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?$")
# PVE takes any `ciuser`; useradd then decides. The lab takes what Debian's adduser allows by default
# (adduser.conf NAME_REGEX "^[a-z][-a-z0-9_]*$"), 32 characters at most (useradd's limit).
USER_RE = re.compile(r"^[a-z][-a-z0-9_]{0,31}$")
SSH_KEY_TYPES = frozenset({
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
})

# cloud-init config/cloud.cfg.tmpl, variant debian: the default user that PVE's `user: <ciuser>` renames.
DEFAULT_USER_GECOS = "Debian"
DEFAULT_USER_GROUPS = ("adm", "audio", "cdrom", "dialout", "dip", "floppy", "netdev", "plugdev", "sudo", "video")
DEFAULT_USER_SHELL = "/bin/bash"
DEFAULT_USER_SUDO = "ALL=(ALL) NOPASSWD:ALL"
CLOUD_INIT_VERSION = "22.4.2"  # Debian 12's cloud-init, named in the headers cloud-init writes
SUDOERS_FILE = "/etc/sudoers.d/90-cloud-init-users"  # cloudinit/distros/__init__.py ci_sudoers_fn
# cloudinit/distros/debian.py network_conf_fn["eni"]: Debian 12's cloud images have ifupdown, not netplan, so
# cloud-init's renderer list (netplan, eni, networkd) picks eni.
ENI_FILE = "/etc/network/interfaces.d/50-cloud-init"
ENI_HEADER = (  # cloudinit/distros/debian.py NETWORK_FILE_HEADER
    "# This file is generated from information provided by the datasource.  Changes\n"
    "# to it will not persist across an instance reboot.  To disable cloud-init's\n"
    "# network configuration capabilities, write a file\n"
    "# /etc/cloud/cloud.cfg.d/99-disable-network-config.cfg with the following:\n"
    "# network: {config: disabled}\n"
)
# templates/hosts.debian.tmpl (manage_etc_hosts: true, which PVE always sets), its comment lines kept.
HOSTS_TEMPLATE = (
    "# Your system has configured 'manage_etc_hosts' as True.\n"
    "# As a result, if you wish for changes to this file to persist\n"
    "# then you will need to either\n"
    "# a.) make changes to the master file in /etc/cloud/templates/hosts.debian.tmpl\n"
    "# b.) change or remove the value of 'manage_etc_hosts' in\n"
    "#     /etc/cloud/cloud.cfg or cloud-config from user-data\n"
    "#\n"
    "127.0.1.1 {fqdn} {hostname}\n"
    "127.0.0.1 localhost\n"
    "\n"
    "# The following lines are desirable for IPv6 capable hosts\n"
    "::1 localhost ip6-localhost ip6-loopback\n"
    "ff02::1 ip6-allnodes\n"
    "ff02::2 ip6-allrouters\n"
)
# cloudinit/config/cc_ssh.py GENERATE_KEY_NAMES (ssh_genkeytypes default) and KEY_FILE_TPL.
HOST_KEY_TYPES = ("rsa", "ecdsa", "ed25519")
HOST_KEY_FILE = "/etc/ssh/ssh_host_{}_key"
# cloudinit/ssh_util.py DISABLE_USER_OPTS (disable_root defaults to true): root's keys only print this.
DISABLE_ROOT_OPTS = (
    "no-port-forwarding,no-agent-forwarding,no-X11-forwarding,"
    "command=\"echo 'Please login as the user \\\"{user}\\\" rather than the user \\\"root\\\".';echo;sleep 10;"
    "exit 142\""
)
NOCLOUD_SEED = "/var/lib/cloud/seed/nocloud"  # where cloud-init's NoCloud datasource also looks for its files


class GuestConfigError(ValueError):
    """Input refused before anything is touched (names the field)."""


class GuestStateError(RuntimeError):
    """The disk or the sshd is not in a state that allows the operation."""


# ---------------------------------------------------------------- validation

def loopback_address(value: str, field: str = "address") -> ipaddress.IPv4Address:
    """`value` as an IPv4 address of 127.0.0.0/8, else GuestConfigError: the lab never binds or connects outside
    loopback."""
    try:
        ip = ipaddress.IPv4Address(value)
    except ValueError:
        raise GuestConfigError(f"{field}: {value!r} is not an IPv4 address") from None
    if ip not in LOOPBACK:
        raise GuestConfigError(f"{field}: {ip} is outside 127.0.0.0/8 (a lab VM lives on loopback only)")
    return ip


def interface_address(address: str, prefix: int) -> ipaddress.IPv4Interface:
    """The VM's address/prefix: a host address of a network inside 127.0.0.0/8."""
    ip = loopback_address(address)
    if isinstance(prefix, bool) or not isinstance(prefix, int) or not 8 <= prefix <= 32:
        raise GuestConfigError(f"prefix: {prefix!r} must be an integer from 8 to 32 (the network stays in 127/8)")
    iface = ipaddress.IPv4Interface(f"{ip}/{prefix}")
    if prefix < 31 and ip in (iface.network.network_address, iface.network.broadcast_address):
        raise GuestConfigError(f"address: {ip} is the network or broadcast address of {iface.network}")
    return iface


def parse_public_key(line: str, field: str = "ssh_authorized_keys") -> tuple[str, str, str, str]:
    """(options, type, base64, comment) of an authorized_keys line whose key blob really is of its type."""
    if not isinstance(line, str) or "\n" in line.strip("\n") or "\r" in line or "\0" in line:
        raise GuestConfigError(f"{field}: a key must be one line of text")
    tokens = line.strip().split(None)
    for i, token in enumerate(tokens[:-1]):
        if token in SSH_KEY_TYPES:
            blob = tokens[i + 1]
            try:
                raw = base64.b64decode(blob, validate=True)
            except (binascii.Error, ValueError):
                break
            name_len = int.from_bytes(raw[:4], "big")
            if raw[4:4 + name_len].decode(errors="replace") != token:
                break
            options = " ".join(tokens[:i])
            comment = " ".join(tokens[i + 2:])
            return options, token, blob, comment
    raise GuestConfigError(f"{field}: not an OpenSSH public key line: {line[:40]!r}...")


def key_line(options: str, kind: str, blob: str, comment: str) -> str:
    return " ".join(part for part in (options, kind, blob, comment) if part)


def validate_hostname(hostname: str) -> tuple[str, str]:
    """(hostname, fqdn) as qemu-server's get_hostname_fqdn splits a dotted VM name."""
    if not isinstance(hostname, str) or len(hostname) > 253 or not DNS_NAME_RE.match(hostname):
        raise GuestConfigError(f"hostname: {hostname!r} is not a DNS name (pve-common pve_verify_dns_name)")
    short = hostname.split(".", 1)[0]
    if len(short) > 63:
        raise GuestConfigError(f"hostname: {short!r} is longer than 63 characters")
    return short, hostname


def validate_user(user: str) -> str:
    if not isinstance(user, str) or not USER_RE.match(user):
        raise GuestConfigError(f"user: {user!r} must match {USER_RE.pattern} (Debian's adduser NAME_REGEX)")
    if user == "root":
        raise GuestConfigError("user: root is refused: the lab's VMs are reached as a cloud-init user with sudo")
    return user


@dataclass(frozen=True)
class CloudInitConfig:
    """A VM's cloud-init settings (PVE's ciuser, sshkeys, ipconfig0, nameserver), checked."""

    hostname: str
    fqdn: str
    user: str
    keys: list[tuple[str, str, str, str]]
    iface: ipaddress.IPv4Interface
    gateway: str | None
    nameservers: list[str]
    mac: str | None
    dhcp: bool

    @classmethod
    def checked(cls, *, hostname: str, user: str, ssh_authorized_keys: list[str], address: str, prefix: int,
                gateway: str | None, nameservers: list[str], mac: str | None = None,
                dhcp: bool = False) -> CloudInitConfig:
        short, fqdn = validate_hostname(hostname)
        if isinstance(ssh_authorized_keys, str):
            raise GuestConfigError("ssh_authorized_keys: a list of key lines, not a string")
        if mac is not None and not re.fullmatch(r"(?:[0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}", mac):
            raise GuestConfigError(f"mac: {mac!r} is not a MAC address")
        # The gateway and nameservers are only written to files, yet kept in 127/8 too: nothing in a lab VM may
        # ever be pointed outside loopback.
        return cls(hostname=short, fqdn=fqdn, user=validate_user(user),
                   keys=[parse_public_key(k) for k in ssh_authorized_keys],
                   iface=interface_address(address, prefix),
                   gateway=None if gateway is None else str(loopback_address(gateway, "gateway")),
                   nameservers=[str(loopback_address(ns, "nameservers")) for ns in nameservers],
                   mac=mac, dhcp=bool(dhcp))


# ---------------------------------------------------------------- what PVE puts on the NoCloud drive

def nocloud_user_data(hostname: str, fqdn: str, user: str, keys: list[str]) -> str:
    """qemu-server Cloudinit.pm cloudinit_userdata for ciuser + sshkeys, no cipassword, ciupgrade=0 (what the
    proxmox_vm role sets: no package_upgrade line; the lab has no Debian mirror to upgrade from anyway)."""
    text = f"#cloud-config\nhostname: {hostname}\nmanage_etc_hosts: true\nfqdn: {fqdn}\nuser: {user}\n"
    if keys:
        text += "ssh_authorized_keys:\n" + "".join(f"  - {k}\n" for k in keys)
    return text + "chpasswd:\n  expire: False\nusers:\n  - default\n"


def nocloud_network_config(iface: ipaddress.IPv4Interface, gateway: str | None, nameservers: list[str],
                           mac: str | None, dhcp: bool) -> str:
    """qemu-server Cloudinit.pm nocloud_network (v1) for net0/ipconfig0. PVE always has net0's MAC; the lab's
    caller may not, and then the mac_address line is left out (only the instance id depends on it)."""
    text = "version: 1\nconfig:\n    - type: physical\n      name: eth0\n"
    if mac:
        text += f"      mac_address: '{mac.lower()}'\n"
    text += "      subnets:\n"
    if dhcp:
        text += "      - type: dhcp4\n"
    else:
        text += (f"      - type: static\n        address: '{iface.ip}'\n"
                 f"        netmask: '{iface.network.netmask}'\n")
        if gateway:
            text += f"        gateway: '{gateway}'\n"
    # get_dns_conf returns array refs, so the nameserver entry is always written (search: no searchdomain).
    text += "    - type: nameserver\n"
    if nameservers:
        text += "      address:\n" + "".join(f"      - '{ns}'\n" for ns in nameservers)
    return text


def eni_config(iface: ipaddress.IPv4Interface, gateway: str | None, nameservers: list[str], dhcp: bool) -> str:
    """What cloud-init's eni renderer (cloudinit/net/eni.py _render_interfaces) writes for that config: the
    global nameservers go on lo, the subnet's attributes sorted, `address` in CIDR form, the MAC not rendered
    for a physical interface."""
    lo = ["auto lo", "iface lo inet loopback"]
    if nameservers:
        lo.append("    dns-nameservers " + " ".join(nameservers))
    if dhcp:
        eth = ["auto eth0", "iface eth0 inet dhcp"]
    else:
        attrs = [f"    address {iface.with_prefixlen}"] + ([f"    gateway {gateway}"] if gateway else [])
        eth = ["auto eth0", "iface eth0 inet static", *sorted(attrs)]
    return ENI_HEADER + "\n\n".join("\n".join(s) for s in (lo, eth)) + "\n"


# ---------------------------------------------------------------- files of the guest, never through a symlink

class GuestFiles:
    """Reads and writes files of a root filesystem from the host without following any symlink in the path (a
    guest's symlink means a path of the guest's /, never of the host's): such a path is refused."""

    def __init__(self, root: Path):
        self.root = root

    def _refuse(self, path: str, exc: OSError) -> GuestStateError:
        return GuestStateError(f"{self.root}: {path} goes through a symlink or a non-directory ({exc.strerror})")

    @contextlib.contextmanager
    def directory(self, path: str, create: bool = False, mode: int = 0o755) -> Iterator[int]:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
        fd = os.open(self.root, flags)
        try:
            for part in filter(None, path.split("/")):
                try:
                    nfd = os.open(part, flags, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(part, mode, dir_fd=fd)
                    nfd = os.open(part, flags, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise self._refuse(path, exc) from None
                    raise
                os.close(fd)
                fd = nfd
            yield fd
        finally:
            os.close(fd)

    def read(self, path: str) -> str | None:
        parent, name = os.path.split(path)
        try:
            with self.directory(parent) as dfd:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise self._refuse(path, exc) from None
            raise
        with open(fd, encoding="utf-8", errors="replace") as f:
            return f.read()

    def write(self, path: str, text: str, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
        """Replace `path` by rename (a new inode; a symlink in its place is replaced, not followed)."""
        parent, name = os.path.split(path)
        tmp = f".{name}.lab-tmp"
        with self.directory(parent, create=True) as dfd:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600, dir_fd=dfd)
            with open(fd, "w", encoding="utf-8") as f:
                f.write(text)
                os.fchown(f.fileno(), uid, gid)
                os.fchmod(f.fileno(), mode)
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)

    def remove_matching(self, directory: str, pattern: str) -> None:
        with self.directory(directory) as dfd:
            for name in os.listdir(dfd):
                if fnmatch.fnmatch(name, pattern):
                    os.unlink(name, dir_fd=dfd)


def passwd_entry(files: GuestFiles, user: str) -> tuple[int, int, str] | None:
    """(uid, gid, home) of `user` in the guest's /etc/passwd."""
    for line in (files.read("/etc/passwd") or "").splitlines():
        fields = line.split(":")
        if len(fields) >= 7 and fields[0] == user:
            return int(fields[2]), int(fields[3]), fields[5]
    return None


def guest_groups(files: GuestFiles) -> dict[str, int]:
    groups = {}
    for line in (files.read("/etc/group") or "").splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[2].isdigit():
            groups[fields[0]] = int(fields[2])
    return groups


def merged_authorized_keys(old_text: str | None, keys: list[tuple[str, str, str, str]]) -> str:
    """cloudinit/ssh_util.py update_authorized_keys: an existing entry with the same key blob is replaced by the
    new one, other existing lines are kept, new keys appended; keys are never removed."""
    lines = (old_text or "").splitlines()
    to_add = list(keys)
    for i, line in enumerate(lines):
        try:
            _, _, blob, _ = parse_public_key(line)
        except GuestConfigError:
            continue
        for key in keys:
            if key[2] == blob:
                lines[i] = key_line(*key)
                if key in to_add:
                    to_add.remove(key)
    return "\n".join(lines + [key_line(*k) for k in to_add] + [""])


# ---------------------------------------------------------------- the disk

def mounts_under(root: Path) -> list[str]:
    """Mount points at or under `root` in this process's mount namespace (/proc/self/mountinfo)."""
    base = str(root)
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
            if point == base or point.startswith(base + "/"):
                found.append(point)
    return found


def processes_rooted_in(root: Path) -> list[int]:
    """Live processes whose root directory is `root` (a VM's processes: they are chrooted into its disk)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry}/root") == str(root):
                    pids.append(int(entry))
    return pids


def run_in_guest(root: Path, *argv: str) -> None:
    """Run the guest's own tool in a chroot, as cloud-init runs it inside the VM."""
    out = subprocess.run(["chroot", str(root), *argv], env=GUEST_ENV, stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=120)
    if out.returncode:
        raise GuestStateError(f"{argv[0]} failed in {root} (exit {out.returncode}): {out.stderr.strip()}")


class GuestDisk:
    """One lab VM's root filesystem directory."""

    def __init__(self, root: Path):
        self.root = Path(os.path.abspath(root))
        self.files = GuestFiles(self.root)

    @classmethod
    def provision(cls, cache: Path, root: Path) -> GuestDisk:
        """The VM's disk made from `cache` (kept as it is when it already exists: a restarted VM keeps its disk).
        Hard links for usr/ and the rest, real copies of COPIED_TREES; a full copy when `root` is on another
        filesystem than the cache. Built in a sibling `.partial` directory, renamed when complete."""
        disk = cls(root)
        cache = Path(os.path.abspath(cache))
        if disk.root.is_dir():
            return disk
        missing = [m for m in ROOTFS_MARKERS if not (cache / m).exists()]
        if missing:
            raise GuestStateError(f"{cache} is not a complete Debian 12 rootfs cache (missing {', '.join(missing)}; "
                                  "build it with roles/kubeadm_node/molecule/default/build_rootfs.sh)")
        disk.root.parent.mkdir(parents=True, exist_ok=True)
        partial = disk.root.with_name(f".{disk.root.name}.partial")
        if partial.exists():
            cls(partial).destroy()
        partial.mkdir(mode=0o755)
        entries = sorted(os.listdir(cache))
        same_fs = os.stat(cache).st_dev == os.stat(partial).st_dev
        linked = [str(cache / e) for e in entries if e not in COPIED_TREES] if same_fs else []
        copied = [str(cache / e) for e in entries if e in COPIED_TREES or not same_fs]
        for flags, sources in (("-al", linked), ("-a", copied)):
            if sources:
                subprocess.run(["cp", flags, "-t", str(partial), *sources], check=True, timeout=600)
        shutil.copystat(cache, partial)
        # The lab's worker image reaches no Debian mirror (nothing in the lab leaves 127.0.0.0/8): its packages
        # come only from the repositories the role adds (the lab's pkgs.k8s.io on loopback, k8s_apt_repo.py).
        (partial / "etc/apt/sources.list").unlink(missing_ok=True)
        (partial / "etc/apt/sources.list").write_text(
            "# agentkube lab worker image: no Debian mirror is reachable from the lab\n")
        os.rename(partial, disk.root)
        return disk

    @property
    def instance_id(self) -> str | None:
        text = self.files.read("/var/lib/cloud/data/instance-id") if self.root.is_dir() else None
        return text.strip() if text else None

    def apply_cloud_init(self, *, hostname: str, user: str, ssh_authorized_keys: list[str], address: str,
                         prefix: int, gateway: str | None, nameservers: list[str], mac: str | None = None,
                         dhcp: bool = False) -> bool:
        """What cloud-init does on a boot of this VM, its NoCloud drive made by PVE from that config.

        The instance id is PVE's: sha1 of the user-data and network-config it generated (Cloudinit.pm
        nocloud_gen_metadata), so changing the hostname, user, keys or address makes a new instance, as on PVE.
        Per instance (cloud-init runs these once per instance id; a restart of the same config skips them):
        the network file (cloud-init renders network config on a new instance), cc_users_groups (useradd of
        the default user renamed by `user:`, missing groups added, password locked, sudo rule), cc_ssh (host
        keys deleted and regenerated; the keys merged into the user's authorized_keys and, behind cloud-init's
        "Please login as the user" command, root's). Per boot: cc_update_hostname (/etc/hostname) and
        cc_update_etc_hosts (/etc/hosts). Returns True when the per-instance modules ran (a new instance).
        `mac` (net0's) only enters the instance id; `dhcp` writes `inet dhcp` (`address` is then the lease)."""
        c = CloudInitConfig.checked(hostname=hostname, user=user, ssh_authorized_keys=ssh_authorized_keys,
                                    address=address, prefix=prefix, gateway=gateway, nameservers=nameservers,
                                    mac=mac, dhcp=dhcp)
        if not (self.root / "usr/sbin/sshd").exists():
            raise GuestStateError(f"{self.root} is not a provisioned disk (GuestDisk.provision first)")
        user_data = nocloud_user_data(c.hostname, c.fqdn, c.user, [key_line(*k) for k in c.keys])
        network = nocloud_network_config(c.iface, c.gateway, c.nameservers, c.mac, c.dhcp)
        iid = hashlib.sha1((user_data + network).encode(), usedforsecurity=False).hexdigest()
        for name, text in (("user-data", user_data), ("meta-data", f"instance-id: {iid}\n"),
                           ("network-config", network)):
            self.files.write(f"{NOCLOUD_SEED}/{name}", text, 0o600)
        previous = self.instance_id
        new_instance = previous != iid
        if new_instance:
            self.files.write(ENI_FILE, eni_config(c.iface, c.gateway, c.nameservers, c.dhcp))
        self.files.write("/etc/hostname", c.hostname + "\n")  # cc_set_hostname, cc_update_hostname
        self.files.write("/etc/hosts", HOSTS_TEMPLATE.format(fqdn=c.fqdn, hostname=c.hostname))
        if new_instance:
            self._users_groups(c.user)
            self._ssh(c.hostname, c.user, c.keys)
            if previous:
                self.files.write("/var/lib/cloud/data/previous-instance-id", previous + "\n")
            self.files.write(f"/var/lib/cloud/instances/{iid}/user-data.txt", user_data, 0o600)
            self.files.write("/var/lib/cloud/data/instance-id", iid + "\n")
        return new_instance

    def _users_groups(self, user: str) -> None:
        """cloudinit/distros/__init__.py create_user/add_user for the Debian default user."""
        existing = guest_groups(self.files)
        for group in DEFAULT_USER_GROUPS:
            if group not in existing:  # add_user: create_groups, with the guest's groupadd
                run_in_guest(self.root, "groupadd", group)
        if passwd_entry(self.files, user) is None:  # add_user skips a user that exists
            run_in_guest(self.root, "useradd", user, "--comment", DEFAULT_USER_GECOS,
                         "--groups", ",".join(DEFAULT_USER_GROUPS), "--shell", DEFAULT_USER_SHELL, "-m")
        run_in_guest(self.root, "passwd", "-l", user)  # lock_passwd: True (lock_passwd tries passwd -l first)
        # write_sudo_rules: a header, then the user's rule; appended when the file exists without it.
        # Debian's /etc/sudoers already has "@includedir /etc/sudoers.d" (ensure_sudo_dir finds it).
        rule = f"\n# User rules for {user}\n{user} {DEFAULT_USER_SUDO}\n"
        current = self.files.read(SUDOERS_FILE)
        if current is None:
            stamp = time.strftime("%a, %d %b %Y %H:%M:%S %z")
            current = f"# Created by cloud-init v. {CLOUD_INIT_VERSION} on {stamp}\n"
        if rule not in current:
            self.files.write(SUDOERS_FILE, current + rule, 0o440)

    def _ssh(self, hostname: str, user: str, keys: list[tuple[str, str, str, str]]) -> None:
        """cloudinit/config/cc_ssh.py handle: delete the image's host keys, generate rsa, ecdsa, ed25519 with the
        guest's ssh-keygen; then apply_credentials."""
        self.files.remove_matching("/etc/ssh", "ssh_host_*key*")
        # cc_ssh runs after cc_set_hostname set the kernel's hostname, so ssh-keygen's default comment is
        # root@<hostname>; the chroot shares the host's UTS namespace, hence the explicit -C.
        procs = [subprocess.Popen(["chroot", str(self.root), "ssh-keygen", "-q", "-t", kind, "-N", "",
                                   "-C", f"root@{hostname}", "-f", HOST_KEY_FILE.format(kind)],
                                  env=GUEST_ENV, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for kind in HOST_KEY_TYPES]
        outputs = [p.communicate(timeout=120)[0] for p in procs]
        failed = {kind: out.strip() for kind, p, out in zip(HOST_KEY_TYPES, procs, outputs, strict=True)
                  if p.returncode}
        if failed:
            raise GuestStateError(f"ssh-keygen failed in {self.root}: {failed}")
        entry = passwd_entry(self.files, user)
        if entry is None:
            raise GuestStateError(f"user {user} is missing from {self.root}/etc/passwd after useradd")
        uid, gid, home = entry
        self._authorize(home, uid, gid, keys)
        root_opts = DISABLE_ROOT_OPTS.format(user=user)
        self._authorize("/root", 0, 0, [(root_opts, kind, blob, comment) for _, kind, blob, comment in keys])

    def _authorize(self, home: str, uid: int, gid: int, keys: list[tuple[str, str, str, str]]) -> None:
        """ssh_util.setup_user_keys: ~/.ssh 0700 and authorized_keys 0600, both owned by the user."""
        with self.files.directory(f"{home}/.ssh", create=True, mode=0o700) as sfd:
            os.fchown(sfd, uid, gid)
            os.fchmod(sfd, 0o700)
        path = f"{home}/.ssh/authorized_keys"
        self.files.write(path, merged_authorized_keys(self.files.read(path), keys), 0o600, uid, gid)

    def host_key(self, kind: str = "ed25519") -> str:
        """The public host key line (`ssh-ed25519 AAAA... root@<hostname>`), as in the .pub file."""
        if kind not in HOST_KEY_TYPES:
            raise GuestConfigError(f"kind: {kind!r} is not one of {', '.join(HOST_KEY_TYPES)}")
        text = self.files.read(HOST_KEY_FILE.format(kind) + ".pub")
        if not text:
            raise GuestStateError(f"{self.root} has no {kind} host key yet (apply_cloud_init first)")
        return text.strip()

    def destroy(self) -> None:
        """Remove the disk. Refused while anything is mounted under it or a process runs chrooted in it."""
        if not self.root.exists():
            return
        mounted = mounts_under(self.root)
        if mounted:
            raise GuestStateError(f"refusing to remove {self.root}: mounted under it: {', '.join(mounted)}")
        running = processes_rooted_in(self.root)
        if running:
            raise GuestStateError(f"refusing to remove {self.root}: processes run in it ({running}); halt it first")
        shutil.rmtree(self.root)
        self.root.with_name(self.root.name + ".sshd.pid").unlink(missing_ok=True)


# ---------------------------------------------------------------- the sshd

# The namespace's first process: the VM's /proc (of the new PID namespace), a minimal /dev with its own devpts
# instance (ptys for `ssh -tt` and sudo's use_pty), /run as a boot leaves it (tmpfs, /run/sshd the privilege
# separation directory, /run/utmp as systemd-tmpfiles creates it), the hostname of /etc/hostname in the VM's
# UTS namespace; then sshd of the disk, chrooted, becomes PID 1 of the namespace.
NAMESPACE_INIT = r"""
set -eu
root=$1 listen=$2 utmp_gid=$3
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t tmpfs -o nosuid,mode=0755,size=512k dev "$root/dev"
for spec in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
  name=${spec%%:*} nums=${spec#*:}
  mknod -m 0666 "$root/dev/$name" c "${nums%:*}" "${nums#*:}"
done
mkdir -m 0755 "$root/dev/pts"
mkdir -m 1777 "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"
ln -s /proc/self/fd/1 "$root/dev/stdout"
ln -s /proc/self/fd/2 "$root/dev/stderr"
mount -t tmpfs -o nosuid,nodev,mode=0755,size=16m run "$root/run"
mkdir -m 0755 "$root/run/sshd" "$root/run/lock"
chmod 1777 "$root/run/lock"
install -m 0664 -o 0 -g "$utmp_gid" /dev/null "$root/run/utmp"
hostname "$(head -n1 "$root/etc/hostname")"
exec chroot "$root" /usr/sbin/sshd -D -e -o "ListenAddress=$listen"
"""
# The same /run, to ask the disk's sshd which addresses its configuration makes it listen on.
LISTEN_CHECK = r"""
set -eu
mount -t tmpfs -o mode=0755,size=1m run "$1/run"
mkdir -m 0755 "$1/run/sshd"
exec chroot "$1" /usr/sbin/sshd -T -o "ListenAddress=$2"
"""
# PAM (Debian's UsePAM yes, /etc/pam.d/sshd): pam_systemd is not in the minbase image (common-session has no line
# for it); pam_motd and pam_mail are optional; privilege separation runs as the image's `sshd` user in /run/sshd.
# pam_loginuid ("session required") writes the session's loginuid; the kernel lets a process without
# CAP_AUDIT_CONTROL do so only while its loginuid is unset (torvalds/linux kernel/audit.c
# audit_set_loginuid_perm). A lab running as root with that capability, or started with no loginuid (a service),
# logs in with the image unchanged. Otherwise every login would fail ("PAM: pam_open_session(): Cannot make/remove
# an entry for the specified session"), and the lab makes the line optional, as container images of sshd do.
PAM_LOGINUID_RE = re.compile(r"^(session\s+)required(\s+pam_loginuid\.so.*)$", re.MULTILINE)
CAP_AUDIT_CONTROL = 30  # linux/capability.h


def loginuid_settable() -> bool:
    """Whether a process started from this one may set its loginuid (pam_loginuid)."""
    status = Path("/proc/self/status").read_text()
    cap_eff = int(re.search(r"^CapEff:\s*([0-9a-f]+)$", status, re.MULTILINE).group(1), 16)
    try:
        unset = Path("/proc/self/loginuid").read_text().strip() == "4294967295"
    except OSError:
        unset = True  # a kernel without audit: pam_loginuid finds no loginuid file and ignores it
    return unset or bool(cap_eff >> CAP_AUDIT_CONTROL & 1)


def relax_pam_loginuid(disk: GuestDisk) -> None:
    text = disk.files.read("/etc/pam.d/sshd") or ""
    if PAM_LOGINUID_RE.search(text):
        note = ("# agentkube lab: optional as in sshd container images: the lab cannot set the loginuid "
                "(no CAP_AUDIT_CONTROL, loginuid already set)\n")
        disk.files.write("/etc/pam.d/sshd", PAM_LOGINUID_RE.sub(lambda m: note + m[1] + "optional" + m[2], text))


class GuestSshd:
    """The VM's sshd on `address`:`port`, in namespaces of its own (see NAMESPACE_INIT)."""

    def __init__(self, disk: GuestDisk, address: str, port: int = 22):
        self.address = str(loopback_address(address))
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise GuestConfigError(f"port: {port!r} is not a TCP port")
        self.disk, self.port = disk, port
        self.pidfile = sshd_pidfile(disk)
        self.log_path = disk.root.with_name(disk.root.name + ".sshd.log")
        self._proc: subprocess.Popen | None = None

    @property
    def listen(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def running(self) -> bool:
        if self._proc is not None:
            if self._proc.poll() is None:
                return True
            self._proc = None  # reaped: it ended by itself (e.g. the address was taken)
        return namespace_pid(self.disk) is not None

    def check_listen_addresses(self) -> None:
        """Refuse a guest sshd configuration that adds a listen address (sshd adds a config file's
        ListenAddress to the command line's): the lab never binds outside the VM's own address."""
        out = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", LISTEN_CHECK,
                              "listen-check", str(self.disk.root), self.listen], env=GUEST_ENV,
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
        if out.returncode:
            raise GuestStateError(f"sshd -T of {self.disk.root} failed: {out.stderr.strip()}")
        listens = [line.split(None, 1)[1] for line in out.stdout.splitlines() if line.startswith("listenaddress ")]
        extra = [a for a in listens if a != self.listen]
        if extra:
            raise GuestStateError(f"{self.disk.root}: the guest's sshd configuration adds listen addresses "
                                  f"{extra} besides {self.listen}; the lab binds the VM's address only")

    def start(self) -> GuestSshd:
        """Start sshd (returns once the process runs; it does not wait for the port). Idempotent."""
        if self.running:
            return self
        root = self.disk.root
        if not (root / "etc/ssh/ssh_host_ed25519_key").exists():
            raise GuestStateError(f"{root} has no host keys (apply_cloud_init before starting sshd)")
        for mount_point in ("proc", "dev", "run"):  # mounted in the namespace: never through a guest's symlink
            if (root / mount_point).is_symlink() or not (root / mount_point).is_dir():
                raise GuestStateError(f"{root}/{mount_point} is not a directory")
        self.check_listen_addresses()
        if not loginuid_settable():
            relax_pam_loginuid(self.disk)
        utmp_gid = guest_groups(self.disk.files).get("utmp", 0)
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                ["unshare", "--mount", "--pid", "--uts", "--ipc", "--fork", "--kill-child",
                 "--propagation", "private", "sh", "-c", NAMESPACE_INIT, "vm-init", str(root),
                 self.listen, str(utmp_gid)],
                env=GUEST_ENV, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        tmp = self.pidfile.with_name(self.pidfile.name + ".tmp")
        tmp.write_text(f"{self._proc.pid}\n")
        os.replace(tmp, self.pidfile)
        return self

    def stop(self) -> None:
        """Kill the namespace (sshd and every session in it) and wait until none of it is left. Idempotent."""
        halt(self.disk, self._proc)
        self._proc = None


def sshd_pidfile(disk: GuestDisk) -> Path:
    return disk.root.with_name(disk.root.name + ".sshd.pid")


def namespace_pid(disk: GuestDisk) -> int | None:
    """The pid of the VM's `unshare` process from the pidfile, when that process still runs for this disk."""
    try:
        pid = int(sshd_pidfile(disk).read_text().strip())
        for _ in range(50):  # an empty cmdline: the process is still inside execve
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if argv[0]:
                break
            time.sleep(0.01)
    except (OSError, ValueError):
        return None
    ours = os.path.basename(argv[0]) == b"unshare" and str(disk.root).encode() in argv
    return pid if ours and _alive(pid) else None


def halt(disk: GuestDisk, proc: subprocess.Popen | None = None) -> None:
    """Kill the VM's namespace and wait until none of its processes is left; remove the pidfile. `proc` is the
    unshare process when this process started it (it is then reaped)."""
    pid = proc.pid if proc is not None and proc.poll() is None else namespace_pid(disk)
    if pid is not None:
        try:
            namespace = os.readlink(f"/proc/{pid}/ns/pid_for_children")
        except OSError:
            namespace = None
        # unshare blocks SIGTERM while it waits for its child: SIGKILL it and its process group (the namespace's
        # PID 1 is in it); --kill-child covers a PID 1 that left the group. When PID 1 dies the kernel kills
        # every other process of the namespace.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        if proc is not None:
            proc.wait(timeout=STOP_TIMEOUT)
        deadline = time.monotonic() + STOP_TIMEOUT
        while _alive(pid) or (namespace is not None and _namespace_alive(namespace)):
            if time.monotonic() > deadline:
                raise GuestStateError(f"the sshd namespace of {disk.root} did not end in {STOP_TIMEOUT:.0f} s")
            time.sleep(0.02)
    elif proc is not None:
        proc.wait(timeout=STOP_TIMEOUT)
    sshd_pidfile(disk).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _namespace_alive(namespace: str) -> bool:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry}/ns/pid") == namespace and _alive(int(entry)):
                    return True
    return False


# ---------------------------------------------------------------- command line

def _boot(args: argparse.Namespace) -> int:
    keys = [line for line in args.ssh_key_file.read_text().splitlines() if line.strip()]
    settings = dict(hostname=args.hostname, user=args.user, ssh_authorized_keys=keys, address=args.address,
                    prefix=args.prefix, gateway=args.gateway, nameservers=args.nameserver or [], mac=args.mac)
    CloudInitConfig.checked(**settings)  # every input checked before the disk is made
    disk = GuestDisk(args.root)
    sshd = GuestSshd(disk, args.address, args.port)
    GuestDisk.provision(args.cache, args.root)
    disk.apply_cloud_init(**settings)
    sshd.start()  # detached (its own session): it outlives this process; `halt` finds it by the pidfile
    print(disk.host_key("ed25519"))
    return 0


def _halt(args: argparse.Namespace) -> int:
    halt(GuestDisk(args.root))
    return 0


def _destroy(args: argparse.Namespace) -> int:
    disk = GuestDisk(args.root)
    halt(disk)
    disk.destroy()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentkube_lab.vm_guest_os",
                                     description="A lab worker VM's guest OS: boot, halt, destroy.")
    sub = parser.add_subparsers(dest="command", required=True)
    boot = sub.add_parser("boot", help="provision, apply cloud-init, start sshd detached; print the ed25519 host key")
    boot.add_argument("--cache", required=True, type=Path, help="the cached Debian 12 root filesystem")
    boot.add_argument("--root", required=True, type=Path, help="the VM's disk (kept if it exists)")
    boot.add_argument("--hostname", required=True)
    boot.add_argument("--user", required=True, help="the cloud-init user (ciuser)")
    boot.add_argument("--ssh-key-file", required=True, type=Path, help="public keys, one a line (sshkeys)")
    boot.add_argument("--address", required=True, help="the VM's address, in 127.0.0.0/8")
    boot.add_argument("--prefix", type=int, default=24)
    boot.add_argument("--gateway")
    boot.add_argument("--nameserver", action="append")
    boot.add_argument("--mac", help="net0's MAC (enters the instance id, as on PVE)")
    boot.add_argument("--port", type=int, default=22)
    boot.set_defaults(func=_boot)
    for name, func, text in (("halt", _halt, "kill the VM's sshd namespace"),
                             ("destroy", _destroy, "halt, then remove the disk")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--root", required=True, type=Path)
        cmd.set_defaults(func=func)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (GuestConfigError, GuestStateError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
