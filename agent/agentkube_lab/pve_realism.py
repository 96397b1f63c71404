"""Proxmox VE as a real cluster behaves, where fakepve answers more kindly: options of the lab's FakePve.

Each rule is transcribed from Proxmox's own sources (cited beside it; nothing is copied). All are off by
default (`Realism()`), so existing callers keep fakepve's behaviour and speed; `Realism.realistic()` (what
`PveLab(realistic=True)` uses) turns them all on:

- `status_period` (seconds, None = off; wall-clock unless `status_wall_clock=False`): pvestatd's lag.
  `/cluster/resources` takes `name`, `status`, `template`, `uptime` and the usage fields from the status
  broadcast that pvestatd refreshes every 10 s (pve-manager `PVE/Service/pvestatd.pm`: `$updatetime = 10`,
  `update_qemu_status` -> `broadcast_rrd`);
  `PVE/API2Tools.pm` `extract_vm_stats` answers `status: unknown` and no name for a VM the broadcast does not
  know yet. The VM list itself, `node`, and `lock`/`tags` are live (`PVE/API2/Cluster.pm` resources:
  `get_vmlist`, `get_guest_config_properties([lock tags])`). The broadcast is keyed by VMID only, so a VMID
  reused after a delete shows the old VM's name until the next cycle.
- `two_step_clone`: during a clone's disk copy the new VM's config is only `lock: clone` (qemu-server
  `src/PVE/API2/Qemu.pm` clone_vm: the temporary `# qmclone temporary file\\nlock: clone` config; name,
  description and the rest are written with the first copied disk), and its name reads `VM <vmid>`
  (qemu-server `src/PVE/QemuServer.pm` vmstatus: `$conf->{name} || "VM $vmid"`).
- `cross_node_collision`: the early check of clone_vm only sees config files of the node the request went to
  (`-f $conffile`); a VMID held on another node fails inside the clone task, when the temporary config is
  renamed into place and pmxcfs refuses a VMID registered elsewhere (pve-cluster `src/pmxcfs/memdb.c`:
  `vmlist_different_vm_exists` -> EEXIST; pve-common `src/PVE/File.pm` file_set_contents:
  `close (rename) atomic file '<file>' failed: File exists`).
- `ha_managed`: every VM whose clone finished is put under HA with state `stopped` (an operator's automation,
  like `ha-manager add vm:<id> --state stopped`). Start, stop and shutdown of an HA-managed VM then return
  `hastart`/`hastop` tasks that end at once while the HA manager changes the state `ha_delay` PVE seconds later
  (qemu-server `src/PVE/API2/Qemu.pm` vm_start/vm_stop/vm_shutdown; pve-ha-manager); destroy of a still-running
  VM fails (`VM <id> is running - destroy failed`), and destroy without `purge` fails for an HA resource
  (qemu-server `src/PVE/API2/Qemu.pm` destroy_vm). fakepve models those once a VM has an HA state; the lab adds
  the HA resources API (pve-ha-manager `src/PVE/API2/HA/Resources.pm`: index/read need Sys.Audit on /,
  create/delete Sys.Console on /; `resource ID '<sid>' already defined`; `cannot delete service '<sid>', not HA
  managed!`).
- `least_privilege`: the agent's token holds exactly `ROLE_PRIVILEGES`, the privileges roles/proxmox_vm/README.md
  documents (fakepve ACLs), so a call needing more fails with PVE's 403.
"""

from __future__ import annotations

from dataclasses import dataclass

# The privileges the proxmox_vm role needs (roles/proxmox_vm/README.md lists the same), by ACL path; each from the
# permission check of the call that needs it in qemu-server src/PVE/API2/Qemu.pm and pve-manager PVE/API2/Cluster.pm.
# On /vms (propagated) rather than on the pool: a clone joins its pool only when its task ends (clone_vm:
# add_vm_to_pool last), and the allocator must audit every VM of the cluster (resources leaves out the VMs the token
# cannot audit) to see their VMIDs and address claims.
VM_PRIVILEGES = (
    "VM.Audit",             # /cluster/resources (VM.Audit per VM), .../config, .../status/current, .../pending
    "VM.Clone",             # clone_vm: perm /vms/{vmid} VM.Clone (the template)
    "VM.Allocate",          # clone_vm: /vms/{newid} VM.Allocate; destroy_vm: VM.Allocate
    "VM.Config.CPU",        # update_vm: cores, sockets, cpu ($cpuoptions)
    "VM.Config.Memory",     # update_vm: memory, balloon ($memoryoptions)
    "VM.Config.Disk",       # resize_vm; update_vm: disks (scsiN of a data disk), boot
    "VM.Config.Network",    # update_vm: netN
    "VM.Config.Cloudinit",  # update_vm: ciuser, sshkeys, nameserver, ciupgrade, ipconfigN ($cloudinitoptions)
    "VM.Config.Options",    # update_vm: description, onboot, agent, tags ($generaloptions, assert_tag_permissions)
    "VM.PowerMgmt",         # vm_start, vm_stop, vm_shutdown
    "VM.GuestAgent.Audit",  # agent/network-get-interfaces (DHCP addresses)
    # agent/file-read of the SSH host key (src/PVE/API2/Qemu/Agent.pm file-read: VM.GuestAgent.FileRead or
    # VM.GuestAgent.Unrestricted on PVE 9; VM.Monitor on PVE 8)
    "VM.GuestAgent.FileRead",
)


def role_privileges(storage: str, bridge: str) -> dict[str, tuple[str, ...]]:
    """ACL path -> privileges of the agent's token for a role that clones onto `storage` with NICs on `bridge`."""
    return {
        "/vms": VM_PRIVILEGES,
        # clone_vm, update_vm (new disks), resize_vm: Datastore.AllocateSpace on every storage used.
        f"/storage/{storage}": ("Datastore.AllocateSpace",),
        # clone_vm, update_vm: check_bridge_access, SDN.Use on the bridge (the local zone of a plain bridge).
        f"/sdn/zones/localnetwork/{bridge}": ("SDN.Use",),
    }


@dataclass
class Realism:
    """Which real-cluster behaviours the lab's FakePve shows; everything off by default."""

    status_period: float | None = None
    # pvestatd's period is wall-clock time: the lab's simulated seconds run time_scale times faster, but
    # Ansible's own pace between two API calls does not, so a scaled period would hide the lag from the roles.
    status_wall_clock: bool = True
    two_step_clone: bool = False
    cross_node_collision: bool = False
    ha_managed: bool = False
    least_privilege: bool = False

    @classmethod
    def realistic(cls, status_period: float = 10.0) -> Realism:
        return cls(status_period=status_period, status_wall_clock=True, two_step_clone=True,
                   cross_node_collision=True, ha_managed=True, least_privilege=True)

    def describe(self) -> str:
        """The behaviours on, for the lab's banner."""
        parts = [f"pvestatd lag {self.status_period:g} s" if self.status_period else "",
                 "two-step clones" if self.two_step_clone else "",
                 "cross-node VMID collisions" if self.cross_node_collision else "",
                 "HA-managed VMs" if self.ha_managed else "",
                 "least-privileged token" if self.least_privilege else ""]
        return ", ".join(p for p in parts if p) or "fakepve's model only"

    @property
    def any(self) -> bool:
        return bool(self.status_period or self.two_step_clone or self.cross_node_collision
                    or self.ha_managed or self.least_privilege)


def cross_node_collision_message(node: str, vmid: int) -> str:
    """The clone task's error when `vmid` is held on another node than `node` (pve-common src/PVE/File.pm
    file_set_contents, on the path of PVE::QemuConfig->config_file)."""
    return f"close (rename) atomic file '/etc/pve/nodes/{node}/qemu-server/{vmid}.conf' failed: File exists"


# Fields of a /cluster/resources VM entry that come from pvestatd's broadcast (pve-manager PVE/API2Tools.pm
# extract_vm_stats); the others (id, vmid, node, type, lock, tags, pool, hastate) are read live.
BROADCAST_FIELDS = ("name", "status", "template", "uptime", "maxcpu", "cpu", "maxmem", "mem", "maxdisk", "disk",
                    "netin", "netout", "diskread", "diskwrite", "memhost")
