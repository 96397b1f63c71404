"""The lab's Proxmox VE: fakepve (a pip-installed test/lab dependency, AGPL) served on loopback.

`PveLab(state_dir).start()` runs a FakePve in a background thread with its own asyncio loop, on
127.0.0.1 and a free port, with a certificate from the lab CA (clients verify TLS against it), one
template per supported Kubernetes minor, an API token for the agent, and simulated time: VM disks live
on a (fake) Ceph RBD storage whose I/O takes `clone_secs` PVE seconds, so clones hold `lock: clone`
and tasks really run for a while. `.fake` is the FakePve, for fault injection from tests.

Guest agents: a VM with `agent` enabled in its config gets a running QEMU guest agent `agent_delay` PVE
seconds after each start (the guest booting). Its network-get-interfaces reports eth0 with net0's MAC and
the address cloud-init gives the guest: the static one of `ipconfig0`, or, with `ip=dhcp` (or none), a
lease of the lab network's DHCP range (`LabDhcp`: one address per MAC, kept across restarts, free again
once no VM has that MAC). `lab.guests.agent_delay = None` (every VM) or `lab.guests.silent.add(name)` (one
VM) is the fault "the guest agent never comes up".

`PveLab(realistic=True)` (or `realism=Realism(...)`) adds what a real cluster does and fakepve does not:
pvestatd's lag in /cluster/resources, the two-step clone config, the cross-node VMID collision inside the
clone task, HA-managed VMs and a least-privileged token (pve_realism.py, each rule with its upstream source).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import secrets
import threading
from pathlib import Path
from typing import Any

from agentkube_lab.certs import LabCA
from agentkube_lab.lab_guest_machines import HOST_KEY_PATH, CloudInit
from agentkube_lab.pve_realism import (
    BROADCAST_FIELDS,
    Realism,
    cross_node_collision_message,
    role_privileges,
)

SUPPORTED_MINORS = ("1.33", "1.34", "1.35", "1.36")
TEMPLATE_VMID_BASE = 9000  # template of 1.35 is 9035
VM_STORAGE = "vmstore"
NODES = ("pve1", "pve2")
log = logging.getLogger(__name__)

TOKEN_USER = "agentkube@pve"  # noqa: S105 - a user name, not a secret
TOKEN_NAME = "agent"  # noqa: S105 - the token id; its secret is random per lab start
# The lab network: the static pool of group_vars() and, disjoint from it, the DHCP server's range.
# The lab network lies in 127.0.0.0/8 (all of it is local on Linux): each VM's sshd binds its own address there,
# and nothing in the lab connects outside loopback. The gateway and nameserver are only strings in the VM config.
# A lab whose VMs run sshds takes a /24 of its own (lab_guest_machines.LabNetwork), so that two labs on one machine
# never answer at each other's addresses.
LAB_NETWORK = "127.0.10"
DHCP_RANGE = f"{LAB_NETWORK}.200-{LAB_NETWORK}.250"
LAB_PREFIX = 24
# PVE seconds from a VM's start until its guest agent answers (the guest booting).
AGENT_DELAY = 30.0
MAC_RE = re.compile(r"=((?:[0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2})(?:,|$)")
STATIC_IP_RE = re.compile(r"(?:^|,)ip=([0-9.]+)/(\d+)")


def template_vmid(minor: str) -> int:
    return TEMPLATE_VMID_BASE + int(minor.split(".")[1])


def mac_of(net: object) -> str:
    """The MAC address of a netN value (`virtio=BC:24:11:..,bridge=vmbr0`), lowercase; "" if none."""
    m = MAC_RE.search(str(net or ""))
    return m.group(1).lower() if m else ""


def _lab_mib(value: object) -> int:
    """MiB of a `memory` option: `4096` or the property string `current=4096` (qemu-server Memory.pm
    get_current_memory)."""
    text = str(value)
    m = re.search(r"(?:^|,)(?:current=)?(\d+)(?:,|$)", text)
    return int(m.group(1)) if m else 0


def agent_enabled(value: object) -> bool:
    """PVE's `agent` option: `1`, or `enabled=1,...` (property string)."""
    for part in str(value or "0").split(","):
        key, _, val = part.rpartition("=")
        if key in ("", "enabled"):
            return val.strip() in ("1", "true", "on", "yes")
    return False


class LabDhcp:
    """The lab network's DHCP server: one address per MAC, lowest free first, kept across restarts.
    An address is free again once no VM has the MAC that leased it."""

    def __init__(self, spec: str = DHCP_RANGE, prefix: int = LAB_PREFIX):
        first, last = (ipaddress.IPv4Address(p.strip()) for p in spec.split("-", 1))
        if last < first:
            raise ValueError(f"DHCP range {spec!r} ends before it starts")
        self.addresses = [str(ipaddress.IPv4Address(i)) for i in range(int(first), int(last) + 1)]
        self.prefix = prefix
        self.leases: dict[str, str] = {}

    def lease(self, mac: str, live_macs: set[str]) -> str | None:
        """The address of `mac` (None when the range is exhausted)."""
        self.leases = {m: ip for m, ip in self.leases.items() if m in live_macs}
        if mac not in self.leases:
            taken = set(self.leases.values())
            free = next((ip for ip in self.addresses if ip not in taken), None)
            if free is None:
                return None
            self.leases[mac] = free
        return self.leases[mac]


class LabGuests:
    """What the guests of the lab's VMs do: their agent comes up `agent_delay` PVE seconds after a start
    (None: never), and reports the address cloud-init configured or a DHCP lease."""

    def __init__(self, agent_delay: float | None = AGENT_DELAY, dhcp: LabDhcp | None = None):
        self.agent_delay = agent_delay
        self.dhcp = dhcp or LabDhcp()
        # Names of VMs whose guest agent never comes up (a fault, like agent_delay None for all).
        self.silent: set[str] = set()
        # The VMs as machines (lab_guest_machines.GuestMachines): each booted guest gets cloud-init applied to its
        # disk and an sshd on its address. None: guests are only their agents.
        self.machines: Any = None
        # Wall-clock seconds between cloud-init's host keys and sshd answering (the fault "SSH comes late").
        self.ssh_delay = 0.0
        # Names of VMs whose sshd presents another host key than the one cloud-init wrote (the fault "someone
        # else answers at the VM's address").
        self.impostors: set[str] = set()

    def interfaces(self, vm: Any, vms: list) -> list[dict]:
        """network-get-interfaces of a booted guest: lo, and eth0 with net0's MAC and its address."""
        mac = mac_of(vm.config.get("net0"))
        addresses = []
        static = STATIC_IP_RE.search(str(vm.config.get("ipconfig0") or ""))
        if static:
            addresses.append({"ip-address": static.group(1), "ip-address-type": "ipv4",
                              "prefix": int(static.group(2))})
        elif mac:
            leased = self.dhcp.lease(mac, {mac_of(v.config.get("net0")) for v in vms})
            if leased:
                addresses.append({"ip-address": leased, "ip-address-type": "ipv4", "prefix": self.dhcp.prefix})
        if mac:
            octets = [int(x, 16) for x in mac.split(":")]
            eui = [octets[0] ^ 2, *octets[1:3], 0xFF, 0xFE, *octets[3:]]
            link_local = ipaddress.IPv6Address(bytes([0xFE, 0x80, *[0] * 6, *eui]))
            addresses.append({"ip-address": str(link_local), "ip-address-type": "ipv6", "prefix": 64})
        return [
            {"name": "lo", "hardware-address": "00:00:00:00:00:00",
             "ip-addresses": [{"ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8},
                              {"ip-address": "::1", "ip-address-type": "ipv6", "prefix": 128}]},
            {"name": "eth0", "hardware-address": mac or "bc:24:11:00:00:00", "ip-addresses": addresses},
        ]


def _lab_fake_class():
    """FakePve plus what the lab needs stateful that fakepve answers generically:
    - `PUT /nodes/{node}/qemu/{vmid}/resize` (grow only, takes the VM config lock, runs as a task);
    - config updates as qemu-server's update_vm makes them (`_apply_config`): a new disk is allocated, a NIC gets a
      MAC and is stored as Proxmox prints it, SDN.Use on its bridge is checked, a balloon above the memory refused;
    - guest agents that come up after a start (`LabGuests`), and PVE's `No QEMU guest agent configured`
      for a VM whose config does not enable the agent."""
    import json
    import time

    from aiohttp import web
    from fakepve import FakePve, PveError, TaskError
    from fakepve.qemu import DRIVE_KEY, NEW_DISK, is_cdrom, split_drive, with_mac

    class LabPve(FakePve):
        guests: LabGuests = LabGuests()
        realism: Realism = Realism()

        # ------------------------------------------------- realism (pve_realism.py explains each rule)

        def lab_broadcast(self) -> None:
            """One pvestatd cycle: what /cluster/resources shows of each VM until the next one
            (pve-manager PVE/Service/pvestatd.pm update_qemu_status; qemu-server vmstatus for the name)."""
            rrd = {}
            for vm in self.vms:
                running = vm.status == "running"
                entry = dict(self._vm_usage(vm))
                entry.update(name=vm.config.get("name") or f"VM {vm.vmid}",
                             status=(vm.qmpstatus or vm.status) if running else "stopped",
                             template=1 if vm.template else 0)
                rrd[vm.vmid] = entry
            self.__dict__["_lab_rrd"] = rrd

        async def lab_pvestatd(self, period: float, wall_clock: bool = True) -> None:
            """pvestatd: a broadcast every `period` seconds (wall-clock, or PVE seconds), the first one a cycle
            after start (its `$cycle` skips the update right after startup; the lab primes the templates' entries
            at start)."""
            while True:
                if wall_clock:
                    await asyncio.sleep(period)
                else:
                    await self.pause(period)
                self.lab_broadcast()

        async def _resources(self, request):
            response = await super()._resources(request)
            if not self.realism.status_period:
                return response
            data = json.loads(response.body)["data"]
            rrd = self.__dict__.get("_lab_rrd", {})
            for item in data:
                if item.get("type") != "qemu" or item.get("status") == "unknown":
                    continue  # an offline node: fakepve already shows unknown
                for key in BROADCAST_FIELDS:
                    item.pop(key, None)
                # PVE/API2Tools.pm extract_vm_stats: unknown, no name, no usage until the broadcast knows the VM.
                item["status"] = "unknown"
                item.update(rrd.get(int(item["vmid"]), {}))
            return web.json_response({"data": data})

        async def _qm_clone(self, v, user):
            newid = int(v["newid"])
            other = self.vm(newid)
            if self.realism.cross_node_collision and other is not None and other.node != v["node"]:
                return await self._lab_clone_elsewhere(v, user)
            upid = await super()._qm_clone(v, user)
            new = self.vm(newid)
            if new is not None and new.lock == "clone":
                if self.realism.two_step_clone:
                    # qemu-server clone_vm: the temporary config holds only the clone lock until a disk is copied.
                    self.__dict__.setdefault("_lab_staged", {})[newid] = (new, dict(new.config), new.name)
                    new.config = {"lock": "clone"}
                    new.name = f"VM {newid}"
                if self.realism.ha_managed:
                    self._lab_after_task(upid, lambda: self.lab_ha_add(newid, "stopped")
                                         if self.vm(newid) is new else None)
            lost = self.__dict__.get("_lab_lost_clone_answers")
            if lost and lost[0] > 0:
                # The fault "the answer is lost": the clone was forked, the client hears nothing (times out).
                lost[0] -= 1
                await asyncio.sleep(lost[1])
            return upid

        async def _lab_clone_elsewhere(self, v, user):
            """A newid registered on another node: clone_vm's early checks pass (they look at this node's
            config files only), the worker fails renaming its temporary config into place."""
            node, vmid, newid = v["node"], int(v["vmid"]), int(v["newid"])
            self._qm_check_pool(v.get("pool"))
            self._qm_perm(user, newid, v.get("pool"), "VM.Allocate")
            self.need_quorum()
            src = self.find(node, vmid)
            self._check_lock(src)

            async def body():
                raise TaskError(cross_node_collision_message(node, newid))
            return await self.task(node, "qmclone", vmid, user, body, lock=False,
                                   log=[f"creating a clone of VM {vmid} with ID {newid}"])

        async def ceph_io(self, vm, keys=None):
            staged = self.__dict__.get("_lab_staged", {}).get(vm.vmid)
            if not staged or staged[0] is not vm:
                return await super().ceph_io(vm, keys)
            # The clone's disk copy: the config stays `lock: clone` alone until it is done.
            copied = {k: val for k, val in vm.config.items() if k != "lock"}
            copying = self.__dict__.setdefault("_lab_copying", {})
            copying[vm.vmid] = {**staged[1], **copied, "lock": "clone"}
            vm.config = {"lock": "clone"}
            try:
                await super().ceph_io(vm, keys)
            finally:
                self.__dict__["_lab_staged"].pop(vm.vmid, None)
                full = copying.pop(vm.vmid)
            vm.config = full
            vm.name = staged[2]
            return None

        def on_ceph(self, vm, keys=None):
            copying = self.__dict__.get("_lab_copying", {}).get(vm.vmid)
            if copying is None:
                return super().on_ceph(vm, keys)
            rbd = self.ceph_storages()  # the disks being copied, not the temporary config's none
            return any(str(copying.get(k) or "").split(",")[0].split(":")[0] in rbd
                       for k in (keys if keys is not None else vm.devices(copying)))

        def _lab_after_task(self, upid, then) -> None:
            async def watch():
                record = self.tasks.get(upid) or {}
                while record.get("status") != "stopped":
                    await asyncio.sleep(0.01)
                if record.get("exitstatus") == "OK":
                    then()
            tasks = self.__dict__.setdefault("_lab_watchers", set())
            task = asyncio.ensure_future(watch())
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        def lab_ha_add(self, vmid: int, state: str = "started") -> None:
            """`ha-manager add vm:<vmid> --state <state>`: the HA manager brings the VM to `state` after
            ha_delay PVE seconds (pve-ha-manager: the CRM and LRM act on their next cycles)."""
            vm = self.vm(int(vmid))
            if vm is None:
                raise PveError(500, f"unable to find VM {vmid}")
            if vm.ha_state is not None:
                raise PveError(500, f"resource ID 'vm:{vmid}' already defined")
            vm.ha_state = "stopped" if vm.status != "running" else "started"

            async def crm():
                await self.pause(self.ha_delay)
                if vm not in self.vms or vm.ha_state is None:
                    return
                if state == "started" and vm.status != "running" and not vm.lock:
                    vm.apply_pending()
                    vm.status = vm.qmpstatus = "running"
                    vm.started_at = time.time()
                elif state == "stopped":
                    vm.status = vm.qmpstatus = "stopped"
                vm.ha_state = state
            tasks = self.__dict__.setdefault("_lab_watchers", set())
            task = asyncio.ensure_future(crm())
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        def _routes_lab_ha(self):
            if not self.realism.ha_managed:
                return []
            return [("GET", "/cluster/ha/resources", self._lab_ha_index),
                    ("POST", "/cluster/ha/resources", self._lab_ha_create),
                    ("DELETE", "/cluster/ha/resources/{sid}", self._lab_ha_delete)]

        @staticmethod
        def _lab_sid(sid) -> int:
            # pve-ha-manager src/PVE/HA/Config.pm parse_sid: "vm:<id>" or a bare id.
            text = str(sid)
            return int(text.split(":", 1)[1] if text.startswith("vm:") else text)

        async def _lab_ha_index(self, values, user):
            return [{"sid": f"vm:{vm.vmid}", "type": "vm", "state": vm.ha_state,
                     "digest": "0" * 40} for vm in self.vms if vm.ha_state is not None]

        async def _lab_ha_create(self, values, user):
            self.need_quorum()
            self.lab_ha_add(self._lab_sid(values["sid"]), str(values.get("state") or "started"))
            return None

        async def _lab_ha_delete(self, values, user):
            vm = self.vm(self._lab_sid(values["sid"]))
            if vm is None or vm.ha_state is None:
                raise PveError(500, f"cannot delete service 'vm:{self._lab_sid(values['sid'])}', not HA managed!")
            vm.ha_state = None
            return None

        def _config_priv(self, key):
            # qemu-server src/PVE/API2/Qemu.pm $check_vm_modify_config_perm: cloud-init options and ipconfigN need
            # VM.Config.Cloudinit or VM.Config.Network (fakepve asks VM.Config.HWType).
            if key in ("cicustom", "cipassword", "citype", "ciuser", "ciupgrade", "nameserver", "searchdomain",
                       "sshkeys") or re.fullmatch(r"ipconfig\d+", key):
                return "VM.Config.Cloudinit"
            return super()._config_priv(key)

        def require(self, user, path, priv):
            if priv == "VM.Config.Cloudinit" and self.allowed(user, path, "VM.Config.Network"):
                return None
            return super().require(user, path, priv)

        # ------------------------------------------------- config updates (update_vm)

        async def _apply_config(self, vm, user, p):
            """What qemu-server's update_vm (src/PVE/API2/Qemu.pm update_vm_api) does and fakepve's config update
            leaves out:
            - a NIC written without a MAC gets a fresh one, and every netN is stored as print_net prints it (the
              model=MAC first, the other keys sorted): `parse_net` + `print_net`;
            - check_bridge_access (src/PVE/QemuServer.pm; pve-guest-common GuestHelpers.pm check_vnet_access): SDN.Use
              on /sdn/zones/localnetwork/<bridge>, or on .../<bridge>/<tag> with a VLAN tag, for every NIC written,
              and for the NIC it replaces or deletes;
            - a new disk `<storage>:<GiB>` is allocated (create_disks, after check_storage_access:
              Datastore.AllocateSpace on the storage, which must hold images) and stored as `<volume>,size=<n>G`;
            - `balloon value too large (must be smaller than assigned memory)` ($load_and_check_config)."""
            p = dict(p)
            deletes = [k for k in str(p.get("delete") or "").split(",") if k]
            current = {**vm.config, **{k: v for k, v in vm.pending.items() if v is not None}}
            for key in sorted(p):
                if re.fullmatch(r"net\d+", key):
                    p[key] = with_mac(str(p[key]))
                    self._lab_check_bridge(user, p[key])
            for key in [k for k in deletes + sorted(p) if re.fullmatch(r"net\d+", k) and current.get(k)]:
                self._lab_check_bridge(user, current[key])
            new_disks = [k for k in sorted(p) if DRIVE_KEY.match(k) and NEW_DISK.match(split_drive(str(p[k]))[0])
                         and not is_cdrom(*split_drive(str(p[k])))]
            for key in new_disks:
                self._qm_check_drive(user, vm.vmid, None, key, str(p[key]), None)
            if p.get("memory") or p.get("balloon") not in (None, ""):
                memory = _lab_mib(p.get("memory") or current.get("memory") or 512)
                balloon = p.get("balloon") if p.get("balloon") not in (None, "") else current.get("balloon")
                if balloon and int(balloon) > memory:
                    raise PveError(500, "balloon value too large (must be smaller than assigned memory)")
            made: list[str] = []
            try:
                for key in new_disks:
                    p[key], volumes = self._qm_new_drive(vm.vmid, key, str(p[key]), None)
                    made += volumes
                return await super()._apply_config(vm, user, p)
            except BaseException:
                for volid in made:
                    self._qm_free(volid)
                raise

        def _lab_check_bridge(self, user, net: str) -> None:
            props = dict(part.partition("=")[::2] for part in net.split(",") if "=" in part)
            if props.get("bridge"):
                tag = f"/{props['tag']}" if props.get("tag") else ""
                self.require(user, f"/sdn/zones/localnetwork/{props['bridge']}{tag}", "SDN.Use")

        # ------------------------------------------------------------------ guests

        async def _do_start(self, vm, user, p):
            managed = agent_enabled(vm.config.get("agent")) and vm.status != "running"
            if managed:
                vm.agent = None  # a stopped guest's agent is down until the guest has booted again
            upid = await super()._do_start(vm, user, p)
            if managed:
                boots = self.__dict__.setdefault("_lab_boots", set())
                boot = asyncio.ensure_future(self._lab_guest_boots(vm, upid))
                boots.add(boot)
                boot.add_done_callback(boots.discard)
            return upid

        async def _lab_guest_boots(self, vm, upid):
            record = self.tasks.get(upid) or {}
            while record.get("status") != "stopped":
                await asyncio.sleep(0.01)
            if record.get("exitstatus") != "OK":
                return
            if vm.ha_managed:
                # hastart ended at the request: the HA manager starts the VM ha_delay PVE seconds later.
                waited = 0.0
                while vm.status != "running" and waited < self.ha_delay * 3:
                    await self.pause(1.0)
                    waited += 1.0
            if vm.status != "running":
                return
            boot = vm.started_at
            delay = self.guests.agent_delay
            if delay is None or vm.name in self.guests.silent:
                return  # the fault: this guest's agent never comes up
            await self.pause(delay)
            if vm.__dict__.get("_lab_booted") == boot:
                return  # a second start request while this boot was pending (HA: hastart queued twice): one boot
            if vm.status == "running" and vm.started_at == boot and vm in self.vms:
                vm.__dict__["_lab_booted"] = boot
                vm.agent = {"interfaces": self.guests.interfaces(vm, list(self.vms)), "files": {}}
                if self.guests.machines is not None:
                    await self._lab_machine_boots(vm, boot)

        def _lab_same_boot(self, vm, boot) -> bool:
            return vm.status == "running" and vm.started_at == boot and vm in self.vms

        async def _lab_machine_boots(self, vm, boot):
            """The guest's cloud-init, then its sshd (lab_guest_machines.py). The agent answers before cloud-init
            has written the host keys, as qemu-guest-agent starts before cloud-init's ssh module runs."""
            machines = self.guests.machines
            loop = asyncio.get_running_loop()
            eth0 = next((i for i in vm.agent["interfaces"] if i["name"] == "eth0"), {})
            ipv4 = next((a for a in eth0.get("ip-addresses", []) if a["ip-address-type"] == "ipv4"), None)
            if ipv4 is None:
                return  # no address (the DHCP range is exhausted): cloud-init's network never came up
            key = vm.__dict__.setdefault("_lab_disk", f"{vm.name}-{vm.vmid}-{secrets.token_hex(3)}")
            self.__dict__.setdefault("_lab_disks", {})[key] = vm
            settings = CloudInit.from_vm_config(vm.config, vm.name, ipv4["ip-address"], ipv4["prefix"])
            try:
                host_key = await loop.run_in_executor(None, machines.boot, key, settings)
            except Exception:  # a guest that fails to boot stays without sshd, as a real one
                log.exception("lab VM %s: cloud-init failed", vm.name)
                return
            if not self._lab_same_boot(vm, boot):
                return
            vm.agent["files"][HOST_KEY_PATH] = host_key + "\n"
            if self.guests.ssh_delay:
                await asyncio.sleep(self.guests.ssh_delay)
            if self._lab_same_boot(vm, boot):
                if vm.name in self.guests.impostors:
                    await loop.run_in_executor(None, machines.impersonate, key)
                await loop.run_in_executor(None, machines.start_sshd, key, ipv4["ip-address"])
                vm.__dict__["_lab_sshd_boot"] = boot

        async def lab_reap_machines(self, period: float = 0.2) -> None:
            """A stopped VM's sshd ends with it; a destroyed VM's disk is removed (polls the VMs' state)."""
            machines = self.guests.machines
            loop = asyncio.get_running_loop()
            while True:
                await asyncio.sleep(period)
                for key, vm in list(self.__dict__.get("_lab_disks", {}).items()):
                    try:
                        if vm not in self.vms:
                            self._lab_disks.pop(key, None)
                            await loop.run_in_executor(None, machines.destroy, key)
                        elif vm.__dict__.get("_lab_sshd_boot") is not None and not self._lab_same_boot(
                                vm, vm.__dict__["_lab_sshd_boot"]):
                            vm.__dict__["_lab_sshd_boot"] = None
                            await loop.run_in_executor(None, machines.halt, key)
                    except Exception:  # one disk that cannot go (left for leftovers() to report) stops no other
                        log.exception("lab VM disk %s: halting or removing it failed", key)

        async def _agent_call(self, match, values):
            vm = self.find(values["node"], values["vmid"])
            if not agent_enabled(vm.config.get("agent")):
                raise PveError(500, "No QEMU guest agent configured")
            if match.template.endswith("/file-read") and vm.status == "running" and vm.agent is not None:
                # qemu-server src/PVE/API2/Qemu/Agent.pm file-read: agent_cmd(file-open, ..., "can't open file")
                # dies with "Agent error: <the guest agent's error>"; qemu-ga's guest-file-open error for a missing
                # file is "failed to open file '<path>' (mode: 'r'): No such file or directory".
                path = str(values.get("file", ""))
                if path not in (vm.agent.get("files") or {}):
                    raise PveError(500, f"Agent error: failed to open file '{path}' (mode: 'r'): "
                                        "No such file or directory")
            return await super()._agent_call(match, values)

        def _routes_lab_qemu_resize(self):
            return [("PUT", "/nodes/{node}/qemu/{vmid}/resize", self._lab_resize)]

        async def _lab_resize(self, values, user):
            vm = self.find(values["node"], values["vmid"])
            disk, size = str(values["disk"]), str(values["size"])
            current = str(vm.config.get(disk) or "")
            if not current:
                raise PveError(500, f"disk '{disk}' does not exist")
            parts = current.split(",")
            old = next((p[5:] for p in parts if p.startswith("size=")), "0G")
            unit = {"K": 1 / 1048576, "M": 1 / 1024, "G": 1, "T": 1024}
            old_gib = float(old[:-1]) * unit[old[-1]] if old[-1] in unit else float(old) / 2**30
            want = size.lstrip("+")
            want_gib = float(want[:-1]) * unit[want[-1]] if want[-1] in unit else float(want) / 2**30
            new_gib = old_gib + want_gib if size.startswith("+") else want_gib
            if new_gib < old_gib:
                raise PveError(500, "shrinking disks is not supported")

            async def body():
                await self.ceph_io(vm, [disk])
                kept = [p for p in vm.config[disk].split(",") if not p.startswith("size=")]
                vm.config[disk] = ",".join([*kept, f"size={int(new_gib)}G"])

            if vm.lock:
                raise PveError(500, f"VM is locked ({vm.lock})")
            # qemu-server src/PVE/API2/Qemu.pm resize_vm: Datastore.AllocateSpace on the disk's storage.
            self.require(user, "/storage/" + current.split(":", 1)[0], "Datastore.AllocateSpace")
            return await self.task(vm.node, "resize", vm.vmid, user, body, vm=vm)

    return LabPve


class PveLab:
    """A FakePve on 127.0.0.1 for the lab, the tests and the benchmark."""

    def __init__(self, state_dir: Path | str, time_scale: float = 0.01, clone_secs: float = 20.0,
                 nodes: tuple[str, ...] = NODES, agent_delay: float | None = AGENT_DELAY,
                 dhcp_range: str | None = None, realistic: bool = False, realism: Realism | None = None,
                 network: str = LAB_NETWORK):
        self.state_dir = Path(state_dir)
        # Real-cluster behaviours (pve_realism.py): all off unless asked for; realistic=True turns all on.
        self.realism = realism or (Realism.realistic() if realistic else Realism())
        # The guests' behaviour; `guests.agent_delay` may be changed while the lab runs.
        # The lab network's first three octets: gateway .1, static pool .60-.199, DHCP .200-.250.
        self.network = network
        self.guests = LabGuests(agent_delay, LabDhcp(dhcp_range or f"{network}.200-{network}.250"))
        self.time_scale = time_scale
        self.clone_secs = clone_secs
        self.nodes = nodes
        self.host = "127.0.0.1"
        self.port = 0
        self.token_id = f"{TOKEN_USER}!{TOKEN_NAME}"
        self.token_secret = ""
        self.ca_file = ""
        self.fake: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pvestatd: asyncio.Task | None = None

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> PveLab:
        if self._thread:
            return self
        cert = LabCA(self.state_dir / "ca").issue("pve")
        self.ca_file = str(cert.ca_file)
        self.token_secret = secrets.token_hex(16)
        fake = _lab_fake_class()(host=self.host, port=0)
        fake.guests = self.guests
        fake.time_scale = self.time_scale
        fake.shutdown_default_timeout = 60
        for node in self.nodes:
            fake.add_node(node)
        fake.add_ceph_storage(VM_STORAGE, pool="vms")
        fake.ceph_slow(self.clone_secs, health="HEALTH_OK")
        fake.pools.setdefault("agentkube", set())
        fake.apitokens[self.token_id] = self.token_secret
        fake.realism = self.realism
        if self.realism.least_privilege:
            for path, privs in role_privileges(VM_STORAGE, "vmbr0").items():
                fake.grant(self.token_id, path, *privs)
        for minor in SUPPORTED_MINORS:
            vmid = template_vmid(minor)
            fake.add_vm(vmid, f"k8s-{minor.replace('.', '-')}-template", node=self.nodes[0], template=True,
                        config={
                            "scsi0": f"{VM_STORAGE}:base-{vmid}-disk-0,size=10G",
                            "ide2": f"{VM_STORAGE}:vm-{vmid}-cloudinit,media=cdrom",
                            "boot": "order=scsi0",
                            "net0": "virtio=BC:24:11:00:00:01,bridge=vmbr0",
                            "agent": "1",
                            "cores": 2,
                            "memory": 2048,
                            "tags": f"k8s-{minor.replace('.', '-')};template",
                            "template": 1,
                        })
        self.fake = fake
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(fake.start(str(cert.cert_file), str(cert.key_file)))
            except Exception as e:  # noqa: BLE001 - reported to start()
                errors.append(e)
                ready.set()
                return
            self.port = fake.port
            if self.realism.status_period:
                fake.lab_broadcast()  # the templates are known to pvestatd already
                self._pvestatd = loop.create_task(
                    fake.lab_pvestatd(self.realism.status_period, self.realism.status_wall_clock))
            reaper = loop.create_task(fake.lab_reap_machines()) if self.guests.machines is not None else None
            ready.set()
            loop.run_forever()
            if self._pvestatd:
                self._pvestatd.cancel()
            if reaper:
                reaper.cancel()
            loop.run_until_complete(fake.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="fakepve", daemon=True)
        self._thread.start()
        ready.wait(30)
        if errors:
            self._thread = None
            raise RuntimeError(f"fakepve did not start: {errors[0]}")
        return self

    def stop(self) -> None:
        if self._loop and self._thread:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._thread = None
        self._loop = None
        if self.guests.machines is not None:
            self.guests.machines.halt_all()  # no VM's sshd outlives the lab

    def __enter__(self) -> PveLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ helpers

    def call(self, coro_or_fn, *args, timeout: float = 30):
        """Run a FakePve coroutine (e.g. fake.hold_config_lock) or function in the fake's loop thread."""
        assert self._loop is not None, "lab not started"

        async def invoke():
            result = coro_or_fn(*args)
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(invoke(), self._loop).result(timeout)

    def lose_clone_answers(self, times: int, hang: float = 5.0) -> None:
        """The next `times` clone requests are carried out, but their answers come only after `hang` wall-clock
        seconds: a client with a shorter timeout never hears that its clone was started."""
        self.call(lambda: self.fake.__dict__.__setitem__("_lab_lost_clone_answers", [times, hang]))

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def group_vars(self, ip_mode: str = "static") -> dict:
        """proxmox_vm_* operator settings pointing at this lab (TLS verified against the lab CA).
        ip_mode "dhcp": addresses from the lab's DHCP server, learned through the guest agents."""
        if ip_mode not in ("static", "dhcp"):
            raise ValueError(f"ip_mode must be static or dhcp, not {ip_mode!r}")
        return {
            "proxmox_vm_api_host": self.host,
            "proxmox_vm_api_port": self.port,
            "proxmox_vm_api_token_id": self.token_id,
            "proxmox_vm_api_token_secret": self.token_secret,
            "proxmox_vm_validate_certs": True,
            "proxmox_vm_ca_file": self.ca_file,
            "proxmox_vm_node": self.nodes[0],
            "proxmox_vm_target_nodes": list(self.nodes),
            "proxmox_vm_storage": VM_STORAGE,
            "proxmox_vm_pool": "agentkube",
            "proxmox_vm_bridge": "vmbr0",
            "proxmox_vm_templates": {m: {"vmid": template_vmid(m)} for m in SUPPORTED_MINORS},
            "proxmox_vm_vmid_min": 4100,
            "proxmox_vm_vmid_max": 4999,
            "proxmox_vm_full_clone": True,
            "proxmox_vm_ip_mode": ip_mode,
            "proxmox_vm_ip_pool": f"{self.network}.60-{self.network}.199",
            "proxmox_vm_ip_prefix": LAB_PREFIX,
            "proxmox_vm_ip_gateway": f"{self.network}.1",
            "proxmox_vm_nameservers": [f"{self.network}.1"],
            "proxmox_vm_ciuser": "agentkube",
            "proxmox_vm_ssh_public_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAgentKubeLabKeyOnly lab"],
            # Lab time is scaled: PVE seconds pass time_scale times faster, so waits stay short.
            "proxmox_vm_shutdown_timeout": 60,
            "proxmox_vm_retry_delay": 0.2,
            # Wall-clock seconds to wait for a guest agent's address (the agent answers after
            # agent_delay PVE seconds, agent_delay * time_scale real ones).
            "proxmox_vm_dhcp_timeout": 60,
        }


def main(argv: list[str] | None = None) -> int:
    """`python -m agentkube_lab.pve_lab --state-dir D --vars-file F`: serve until SIGTERM/SIGINT, with the
    proxmox_vm_* settings pointing at the lab written to F (0600, it holds the lab token secret)."""
    import argparse
    import json
    import os
    import signal

    parser = argparse.ArgumentParser(description="Serve the lab's fakepve on 127.0.0.1")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--vars-file", required=True)
    parser.add_argument("--pidfile", help="written once the lab serves; removed on exit")
    parser.add_argument("--time-scale", type=float, default=0.01)
    parser.add_argument("--realistic", action="store_true",
                        help="behave like a real cluster (pve_realism.py): lag, two-step clones, HA, least privilege")
    args = parser.parse_args(argv)
    lab = PveLab(args.state_dir, time_scale=args.time_scale, realistic=args.realistic).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    fd = os.open(args.vars_file + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(lab.group_vars(), fh)
    os.replace(args.vars_file + ".tmp", args.vars_file)
    if args.pidfile:
        Path(args.pidfile).write_text(f"{os.getpid()}\n")
    print(f"fakepve lab on {lab.url}", flush=True)
    stop.wait()
    lab.stop()
    Path(args.vars_file).unlink(missing_ok=True)
    if args.pidfile:
        Path(args.pidfile).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
