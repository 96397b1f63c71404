"""Pure helpers for worker-VM configs: tags, ownership markers, ipconfig0, disk sizes, the IP pool.

No I/O here, so the unit tests exercise them directly.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse

TAG_RE = re.compile(r"[a-z0-9_][a-z0-9_\-+.]*")  # whole strings only: fullmatch
# The ownership marker written in the clone request's description: present from the moment the clone
# exists (before its task finishes and before tags can be set), so a half-made VM is still recognised,
# and its IP claim is visible to every other run at once.
MARKER_RE = re.compile(r"agentkube:\s*service=(?P<service>\S+)\s+ip=(?P<ip>\S+)")
SIZE_UNITS = {"K": 1 / (1024 * 1024), "M": 1 / 1024, "G": 1, "T": 1024}
DISK_KEY_RE = re.compile(r"(scsi|virtio|sata|ide)\d+")  # whole strings only: fullmatch


def tag_token(text: str) -> str:
    """A Proxmox tag token: lowercase, characters outside [a-z0-9_-+.] become '-'."""
    token = re.sub(r"[^a-z0-9_\-+.]+", "-", str(text).lower()).strip("-")
    if not token or not TAG_RE.fullmatch(token):
        raise ValueError(f"cannot make a Proxmox tag from {text!r}")
    return token


def service_tag(service_id: str) -> str:
    return "svc-" + tag_token(service_id)


def vm_tags(owner: str, service_id: str, tenant: str, pool: str) -> list[str]:
    """The tags every worker VM carries: owner, service, tenant and pool."""
    return sorted({tag_token(owner), service_tag(service_id), "tenant-" + tag_token(tenant), "pool-" + tag_token(pool)})


def split_tags(value) -> list[str]:
    return sorted({t for t in re.split(r"[;,\s]+", str(value or "").lower()) if t})


def join_tags(tags) -> str:
    return ";".join(sorted(set(tags)))


def marker(service_id: str, ip: str) -> str:
    return f"agentkube: service={service_id} ip={ip or 'dhcp'}"


def parse_marker(description) -> dict | None:
    m = MARKER_RE.search(urllib.parse.unquote(str(description or "")))
    return m.groupdict() if m else None


def owned_by(config: dict, owner: str, service_id: str) -> bool:
    """Whether a VM's own config (read from Proxmox just now) marks it as this service's, by this owner.

    A VM tagged for a service (any `svc-` tag) is ours only when it carries the owner tag and this service's tag.
    A VM tagged for no service is ours only when the clone-time marker in its description names this service: a
    clone not configured yet, still carrying its template's tags. A template is never ours."""
    if not isinstance(config, dict) or not service_id or config.get("template") in (1, "1", True):
        return False
    tags = split_tags(config.get("tags"))
    if any(t.startswith("svc-") for t in tags):
        return tag_token(owner) in tags and service_tag(service_id) in tags
    mark = parse_marker(config.get("description"))
    return bool(mark) and mark["service"] == service_id


def pool_of(vm: dict, tenant: str) -> str:
    """The node pool of an owned VM: its pool- tag, else parsed from its '<tenant>-<pool>-<index>' name."""
    for tag in split_tags(vm.get("tags")):
        if tag.startswith("pool-"):
            return tag[len("pool-"):]
    rest = str(vm.get("name", ""))[len(tenant) + 1:]
    return rest.rsplit("-", 1)[0]


def index_of(name: str) -> int:
    tail = name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


# ------------------------------------------------------------------- network


def ipconfig(ip: str | None, prefix: int | None, gateway: str | None) -> str:
    if not ip:
        return "ip=dhcp"
    value = f"ip={ip}/{prefix}"
    if gateway:
        value += f",gw={gateway}"
    return value


def ip_of_ipconfig(value) -> str | None:
    m = re.search(r"(?:^|,)ip=([0-9.]+)(?:/\d+)?", str(value or ""))
    return m.group(1) if m else None


MAC_RE = re.compile(r"=((?:[0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2})(?:,|$)")


def mac_of(net) -> str:
    """The MAC address of a netN value (`virtio=BC:24:11:AA:BB:CC,bridge=vmbr0`), lowercase; "" if none."""
    m = MAC_RE.search(str(net or ""))
    return m.group(1).lower() if m else ""


def guest_ipv4(interfaces, mac: str = "") -> str:
    """The guest's address from the agent's network-get-interfaces: the first global IPv4 address of the
    interface with net0's MAC (when known: a Kubernetes node also has cni0, flannel.1, docker0 ...),
    else of any interface. Loopback and link-local addresses are skipped; "" if there is none yet."""
    if isinstance(interfaces, dict):
        interfaces = interfaces.get("result") or []
    for iface in interfaces or []:
        if mac and str(iface.get("hardware-address", "")).lower() != mac.lower():
            continue
        for addr in iface.get("ip-addresses") or []:
            if addr.get("ip-address-type") != "ipv4":
                continue
            try:
                ip = ipaddress.IPv4Address(str(addr.get("ip-address", "")))
            except ValueError:
                continue
            # lo's 127.0.0.1 is never the VM's address; on the NIC matched by its MAC a loopback address is (the
            # lab's network lies in 127.0.0.0/8).
            if not (ip.is_link_local or ip.is_unspecified or (ip.is_loopback and not mac)):
                return str(ip)
    return ""


def agent_option(current) -> str | None:
    """The `agent` option enabling the QEMU guest agent (other properties kept), or None when it is
    enabled already. DHCP addresses are learned through the agent, so it must be on before first boot."""
    parts = [p for p in str(current or "").split(",") if p]
    rest = []
    for part in parts:
        key, _, value = part.rpartition("=")
        if key in ("", "enabled"):
            if value.strip() in ("1", "true", "on", "yes"):
                return None
            continue
        rest.append(part)
    return ",".join(["enabled=1", *rest]) if rest else "1"


def claimed_ips(config: dict) -> set[str]:
    """Every address a VM config holds or claims: ipconfigN (current and pending) and our marker."""
    found = set()
    for key, value in config.items():
        if re.fullmatch(r"ipconfig\d+", key):
            ip = ip_of_ipconfig(value)
            if ip:
                found.add(ip)
    mark = parse_marker(config.get("description"))
    if mark and mark["ip"] != "dhcp":
        found.add(mark["ip"])
    return found


class IpPool:
    """The operator's static pool: 'a.b.c.d/nn' (hosts of the network) or 'a.b.c.d-a.b.c.e'.

    The gateway, nameservers and explicitly reserved addresses are never handed out.
    """

    def __init__(self, spec: str, gateway: str | None = None, reserved=()):
        spec = str(spec).strip()
        try:
            if "-" in spec:
                first, last = (ipaddress.IPv4Address(p.strip()) for p in spec.split("-", 1))
                if last < first:
                    raise ValueError("range end before its start")
                self._addresses = [ipaddress.IPv4Address(i) for i in range(int(first), int(last) + 1)]
            else:
                net = ipaddress.IPv4Network(spec, strict=False)
                self._addresses = list(net.hosts())
        except ValueError as e:
            raise ValueError(f"proxmox_vm_ip_pool {spec!r} is not an IPv4 CIDR or range: {e}") from None
        self.excluded = {str(ipaddress.IPv4Address(a)) for a in reserved if a}
        if gateway:
            self.excluded.add(str(ipaddress.IPv4Address(gateway)))

    def __contains__(self, ip: str) -> bool:
        return ipaddress.IPv4Address(ip) in set(self._addresses)

    def first_free(self, used) -> str | None:
        used = set(used) | self.excluded
        for addr in self._addresses:
            if str(addr) not in used:
                return str(addr)
        return None

    def size(self) -> int:
        return len(self._addresses)


# ---------------------------------------------------------------------- disks


def size_gib(text) -> float:
    """'10G' / '512M' / '1T' -> GiB (a bare number is GiB, as PVE's resize takes it)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT])?", str(text).strip())
    if not m:
        raise ValueError(f"unrecognised size {text!r}")
    return float(m.group(1)) * SIZE_UNITS[m.group(2) or "G"]


def is_removable(drive) -> bool:
    """A CD-ROM or the cloud-init drive: not a disk whose size counts."""
    value = str(drive or "")
    return "media=cdrom" in value or "cloudinit" in value


def boot_disk(config: dict, exclude=()) -> tuple[str, float] | None:
    """(key, size in GiB) of the boot disk: the first in the boot order, else the first non-CD-ROM disk.
    Keys in `exclude` (the operator's data disk) are passed over unless the boot order names them."""
    order = []
    boot = str(config.get("boot", ""))
    if boot.startswith("order="):
        order = [d for d in boot[len("order="):].split(";") if DISK_KEY_RE.fullmatch(d)]
    candidates = order + sorted(k for k in config if DISK_KEY_RE.fullmatch(k) and k not in order)
    for key in candidates:
        if key in exclude and key not in order:
            continue
        value = str(config.get(key, ""))
        if not value or is_removable(value):
            continue
        return key, drive_size(value)
    return None


def drive_size(drive) -> float:
    """GiB of a drive value's `size=` (`vmstore:vm-100-disk-0,size=10G` -> 10.0); 0.0 without one."""
    m = re.search(r"(?:^|,)size=([0-9.]+[KMGT]?)", str(drive or ""))
    return size_gib(m.group(1)) if m else 0.0


def sshkeys_param(keys) -> str:
    """PVE wants `sshkeys` URL-encoded by the caller (and then form-encoded by the HTTP client)."""
    text = "\n".join(k.strip() for k in keys if k and k.strip())
    return urllib.parse.quote(text, safe="")
