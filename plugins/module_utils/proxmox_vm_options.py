"""Pure helpers for the operator's VM options: CPU type, sockets, ballooning, a data disk, extra NICs.

Values are written the way qemu-server prints them and compared by meaning (a property string's keys in any
order, booleans as 1/0), so a re-run against what Proxmox wrote back changes nothing. The config keys and their
rules, from qemu-server (src/PVE/QemuServer.pm $confdesc unless said):
- `cpu`: property string `pve-vm-cpu-conf`, default key `cputype` (src/PVE/QemuServer/CPUConfig.pm $cpu_fmt);
- `sockets`: integer >= 1, default 1; `cores` is per socket (vCPUs = sockets x cores);
- `balloon`: integer MiB >= 0, 0 disables the balloon device; update_vm refuses one above `memory`
  (src/PVE/API2/Qemu.pm: "balloon value too large (must be smaller than assigned memory)");
- `scsiN` (0-30), `virtioN` (0-15), `sataN` (0-5), `ideN` (0-3): drives (src/PVE/QemuServer/Drive.pm MAX_*_DISKS);
  `<storage>:<GiB>` allocates a new volume ($NEW_DISK_RE);
- `netN` (0-31, $MAX_NETS = 32): property string, default key `model`, `<model>=<MAC>` an alias pair, `bridge`
  (pve-common src/PVE/JSONSchema.pm parse_bridge_id `^[-_.\\w\\d]+$`), `tag` 1-4094, `firewall` boolean
  (src/PVE/QemuServer/Network.pm $net_fmt); a NIC written without a MAC gets a fresh one (parse_net);
- `ipconfigN`: cloud-init addressing of netN; a NIC without one is left out of cloud-init's network
  configuration (src/PVE/QemuServer/Cloudinit.pm nocloud_network).
Property strings print the default key first, then the other keys sorted (pve-common print_property_string).
No I/O here, so the unit tests exercise them directly.
"""

from __future__ import annotations

import re

from ansible_collections.agentkube.kamaji.plugins.module_utils.proxmox_vm_config import drive_size, is_removable

# src/PVE/QemuServer/Network.pm $nic_model_list
NIC_MODELS = ("e1000", "e1000-82540em", "e1000-82544gc", "e1000-82545em", "e1000e", "i82551", "i82557b",
              "i82559er", "ne2k_isa", "ne2k_pci", "pcnet", "rtl8139", "virtio", "vmxnet3")
MAX_NETS = 32  # net0..net31
# Drive buses and how many of each (src/PVE/QemuServer/Drive.pm $MAX_IDE_DISKS etc.).
DISK_BUSES = {"ide": 4, "sata": 6, "scsi": 31, "virtio": 16}
# pve-common parse_bridge_id (`\w` taken as ASCII: Linux interface names are).
BRIDGE_RE = re.compile(r"[-_.A-Za-z0-9]+")
# pve-common parse_id (storage IDs): at least 2 characters.
STORAGE_RE = re.compile(r"[A-Za-z][A-Za-z0-9\-_.]*[A-Za-z0-9]")
# A CPU model name (QEMU's, PVE's x86-64-v2-AES ..., `host`, or `custom-<name>`): the `cputype` only, no
# other property of the cpu option (those stay the template's). PVE checks the model exists on the node.
CPU_TYPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+\-]{0,63}")
BOOLEAN_KEYS = {"firewall", "link_down", "host-tunnel"}  # $net_fmt booleans, printed 1/0
MAC_RE = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}")


def as_int(value) -> int | None:
    """An integer setting (an int, or digits from a string such as `-e x=2`); None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    return None


def is_unset(value) -> bool:
    return value is None or value == ""


def disk_bus_ok(bus) -> bool:
    m = re.fullmatch(r"(ide|sata|scsi|virtio)(\d+)", str(bus))
    return bool(m) and str(int(m.group(2))) == m.group(2) and int(m.group(2)) < DISK_BUSES[m.group(1)]


# ------------------------------------------------------------------ settings


def option_errors(opts: dict, pools=(), prefix: str = "proxmox_vm_") -> list[str]:
    """Every problem of the options as '<variable>: <why>' ([] when valid). `opts` holds cpu_type, sockets,
    balloon, data_disk and extra_nets (unset ones are skipped); `pools` the tenant's node pools, whose
    memoryMiB the balloon must not exceed. Variables are named `<prefix><option>`."""
    errors = []

    def bad(name: str, why: str) -> None:
        errors.append(f"{prefix}{name}: {why}")

    cpu = opts.get("cpu_type")
    if not is_unset(cpu) and not (isinstance(cpu, str) and CPU_TYPE_RE.fullmatch(cpu)):
        bad("cpu_type", f"{cpu!r} is not a CPU model name (host, x86-64-v2-AES, kvm64, custom-<name> ...: letters, "
                        "digits, '.', '_', '-', '+'; at most 64, no options)")
    sockets = opts.get("sockets")
    if not is_unset(sockets) and (as_int(sockets) is None or as_int(sockets) < 1):
        bad("sockets", f"{sockets!r} is not an integer >= 1")
    balloon = opts.get("balloon")
    if not is_unset(balloon):
        mib = as_int(balloon)
        if mib is None or mib < 0:
            bad("balloon", f"{balloon!r} is not a size in MiB >= 0 (0 disables ballooning)")
        else:
            for i, pool in enumerate(pools or []):
                memory = as_int(pool.get("memoryMiB")) if isinstance(pool, dict) else None
                if memory is not None and mib > memory:
                    bad("balloon", f"{mib} MiB is more than the memory of agentkube_tenant.nodePools[{i}] "
                                   f"({pool.get('name', '?')}): {memory} MiB")
    errors += _data_disk_errors(opts.get("data_disk"), prefix)
    errors += _extra_net_errors(opts.get("extra_nets"), prefix)
    return errors


def _data_disk_errors(disk, prefix: str) -> list[str]:
    name = f"{prefix}data_disk"
    if is_unset(disk) or disk == {}:
        return []
    if not isinstance(disk, dict):
        return [f"{name}: must be a mapping {{size_gib, storage, bus}} or {{}} for none"]
    errors = []
    unknown = sorted(set(disk) - {"size_gib", "storage", "bus"})
    if unknown:
        errors.append(f"{name}: unknown keys {', '.join(map(str, unknown))} (size_gib, storage, bus)")
    size = as_int(disk.get("size_gib"))
    if size is None or size < 1:
        errors.append(f"{name}.size_gib: {disk.get('size_gib')!r} is not a size in GiB >= 1")
    storage = disk.get("storage")
    if not is_unset(storage) and not (isinstance(storage, str) and STORAGE_RE.fullmatch(storage)):
        errors.append(f"{name}.storage: {storage!r} is not a Proxmox storage ID")
    bus = disk.get("bus")
    if not is_unset(bus) and not disk_bus_ok(bus):
        errors.append(f"{name}.bus: {bus!r} is not a drive key (scsi0-30, virtio0-15, sata0-5, ide0-3)")
    return errors


def _extra_net_errors(nets, prefix: str) -> list[str]:
    name = f"{prefix}extra_nets"
    if nets is None:
        return []
    if not isinstance(nets, list):
        return [f"{name}: must be a list of {{bridge, vlan, model, firewall, dhcp}} (or null to leave NICs alone)"]
    errors = []
    if len(nets) > MAX_NETS - 1:
        errors.append(f"{name}: {len(nets)} NICs, at most {MAX_NETS - 1} (net1..net{MAX_NETS - 1})")
    for i, net in enumerate(nets):
        where = f"{name}[{i}]"
        if not isinstance(net, dict):
            errors.append(f"{where}: must be a mapping {{bridge, vlan, model, firewall, dhcp}}")
            continue
        unknown = sorted(set(net) - {"bridge", "vlan", "model", "firewall", "dhcp"})
        if unknown:
            errors.append(f"{where}: unknown keys {', '.join(map(str, unknown))} (bridge, vlan, model, firewall, dhcp)")
        bridge = net.get("bridge")
        if not (isinstance(bridge, str) and BRIDGE_RE.fullmatch(bridge)):
            errors.append(f"{where}.bridge: {bridge!r} is not a bridge name (letters, digits, '-', '_', '.')")
        vlan = net.get("vlan", 0)
        if not is_unset(vlan) and (as_int(vlan) is None or not (as_int(vlan) == 0 or 1 <= as_int(vlan) <= 4094)):
            errors.append(f"{where}.vlan: {vlan!r} is not a VLAN tag 1-4094 (0 = untagged)")
        model = net.get("model")
        if not is_unset(model) and model not in NIC_MODELS:
            errors.append(f"{where}.model: {model!r} is not one of {', '.join(NIC_MODELS)}")
        for flag in ("firewall", "dhcp"):
            if flag in net and not isinstance(net[flag], bool):
                errors.append(f"{where}.{flag}: {net[flag]!r} is not a boolean")
    return errors


# ------------------------------------------------------------ property strings


def parse_props(value, default_key: str) -> dict[str, str]:
    """A property string as {key: value}: `a=1,b` -> {'a': '1', default_key: 'b'}."""
    props: dict[str, str] = {}
    for part in str(value or "").split(","):
        if not part:
            continue
        key, eq, val = part.partition("=")
        if eq:
            props[key] = val
        else:
            props[default_key] = part
    return props


def print_props(props: dict[str, str], default_key: str) -> str:
    rest = [f"{k}={props[k]}" for k in sorted(props) if k != default_key]
    return ",".join(([props[default_key]] if props.get(default_key) else []) + rest)


def net_props(value) -> dict[str, str]:
    """A netN value as {model, macaddr?, ...}: `virtio=BC:24:...` is the model with its MAC (keyAlias), `model=`
    and `macaddr=` the long form; booleans as 1/0, the MAC in capitals."""
    props: dict[str, str] = {}
    for part in str(value or "").split(","):
        if not part:
            continue
        key, eq, val = part.partition("=")
        if key in NIC_MODELS:
            props["model"] = key
            if val:
                props["macaddr"] = val
        elif not eq:
            props["model"] = part
        else:
            props[key] = val
    for key in BOOLEAN_KEYS & set(props):
        props[key] = "1" if props[key].lower() in ("1", "true", "yes", "on") else "0"
    if "macaddr" in props:
        props["macaddr"] = props["macaddr"].upper()
    return props


def print_net(props: dict[str, str]) -> str:
    """A netN value as qemu-server's print_net writes it: `<model>=<MAC>` (or the model alone), then the rest sorted."""
    head = props["model"] + (f"={props['macaddr']}" if props.get("macaddr") else "")
    return ",".join([head] + [f"{k}={props[k]}" for k in sorted(props) if k not in ("model", "macaddr")])


def net_value(current, bridge: str, vlan: int = 0, model: str | None = None, firewall: bool | None = None) -> str:
    """netN with this bridge and VLAN (and, when given, model and firewall), the rest of the current NIC kept: its
    MAC (Proxmox would make a new one for a NIC written without), queues, mtu, rate ... None keeps a property."""
    props = net_props(current)
    props["model"] = model or props.get("model") or "virtio"
    if bridge:
        props["bridge"] = bridge
    else:
        props.pop("bridge", None)
    if vlan:
        props["tag"] = str(int(vlan))
    else:
        props.pop("tag", None)
    if firewall is not None:
        if firewall:
            props["firewall"] = "1"
        else:
            props.pop("firewall", None)
    return print_net(props)


def same_net(have, want) -> bool:
    """Whether two netN values mean the same NIC; a want without a MAC matches any MAC, firewall=0 means none."""
    a, b = net_props(have), net_props(want)
    if "macaddr" not in b:
        a.pop("macaddr", None)
    for props in (a, b):
        if props.get("firewall") == "0":
            props.pop("firewall")
    return bool(have) and a == b


def cpu_value(current, cputype: str) -> str:
    """The cpu option with this CPU type, its other properties (flags, hidden ...) kept."""
    props = parse_props(current, "cputype")
    props["cputype"] = cputype
    return print_props(props, "cputype")


def same_cpu(have, want) -> bool:
    return parse_props(have, "cputype") == parse_props(want, "cputype")


# ------------------------------------------------------------------- the plan


def volume_storage(drive) -> str:
    """The storage ID of a drive value (`vmstore:vm-100-disk-0,size=10G` -> vmstore); "" for none."""
    volume = str(drive or "").split(",")[0]
    return volume.split(":", 1)[0] if ":" in volume else ""


def data_disk_action(config: dict, disk: dict, boot_key: str | None):
    """What the data disk needs on this VM: None (as wanted), ("add", key, "<storage>:<GiB>"),
    ("grow", key, GiB), or ("refuse", why) for a shrink, or a bus that holds the boot disk, a CD-ROM
    or the cloud-init drive. The storage defaults to the boot disk's."""
    bus, size = str(disk.get("bus") or "scsi1"), int(disk["size_gib"])
    if bus == boot_key:
        return "refuse", f"{bus} is the boot disk"
    have = config.get(bus)
    if not have:
        storage = disk.get("storage") or volume_storage(config.get(boot_key) if boot_key else "")
        if not storage:
            return "refuse", "no storage given and the boot disk's storage is unknown"
        return "add", bus, f"{storage}:{size}"
    if is_removable(have):
        return "refuse", f"{bus} holds a CD-ROM or the cloud-init drive ({have})"
    current = drive_size(have)
    if size < current:
        return "refuse", f"{bus} is {current:g} GiB, requested {size} GiB (a data disk only grows)"
    if size > current:
        return "grow", bus, size
    return None


def extra_net_config(config: dict, nets: list[dict]) -> tuple[dict, list[str]]:
    """(values to write, keys to delete) so that net1..netN are the extra NICs, in order, each with ipconfigN
    `ip=dhcp` when asked (none otherwise), and no NIC above netN is left. A NIC that only changes keeps its MAC."""
    want: dict[str, str] = {}
    for i, net in enumerate(nets, start=1):
        key = f"net{i}"
        value = net_value(config.get(key), net["bridge"], int(net.get("vlan") or 0), net.get("model") or "virtio",
                          bool(net.get("firewall")))
        if not same_net(config.get(key), value):
            want[key] = value
        if net.get("dhcp") and config.get(f"ipconfig{i}") != "ip=dhcp":
            want[f"ipconfig{i}"] = "ip=dhcp"
    delete = [f"ipconfig{i}" for i in range(1, MAX_NETS)
              if f"ipconfig{i}" in config and (i > len(nets) or not nets[i - 1].get("dhcp"))]
    delete += [f"net{i}" for i in range(len(nets) + 1, MAX_NETS) if f"net{i}" in config]
    return want, sorted(delete, key=lambda k: (k.rstrip("0123456789"), int(re.sub(r"\D", "", k))))


def balloon_problem(config: dict, balloon: int | None, memory: int) -> str | None:
    """Why the VM's balloon (the one asked for, else its own) cannot go with `memory` MiB; None when it can."""
    effective = balloon if balloon is not None else as_int(config.get("balloon"))
    if effective and effective > memory:
        whose = "requested" if balloon is not None else "the VM's own (set proxmox_vm_balloon)"
        return f"balloon {effective} MiB ({whose}) is more than memory {memory} MiB"
    return None
