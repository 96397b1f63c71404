#!/usr/bin/python
"""Converge worker VMs' configs: sizing and tags, plus cloud-init before the first boot; disks only grow."""

from __future__ import annotations

import concurrent.futures
import time
import urllib.parse

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.agentkube.kamaji.plugins.module_utils.proxmox_api import (
    PveApiError,
    client_argument_spec,
    client_from_params,
)
from ansible_collections.agentkube.kamaji.plugins.module_utils.proxmox_vm_config import (
    agent_option,
    boot_disk,
    ipconfig,
    join_tags,
    marker,
    owned_by,
    parse_marker,
    split_tags,
    sshkeys_param,
)
from ansible_collections.agentkube.kamaji.plugins.module_utils.proxmox_vm_ops import VmGone, wait_unlocked
from ansible_collections.agentkube.kamaji.plugins.module_utils.proxmox_vm_options import (
    NIC_MODELS,
    balloon_problem,
    cpu_value,
    data_disk_action,
    extra_net_config,
    net_value,
    option_errors,
    same_cpu,
    same_net,
)

DOCUMENTATION = r"""
module: proxmox_vm_configure
short_description: Converge sizing, tags, onboot=1 and cloud-init (ciuser, sshkeys, ipconfig0, nameserver, ciupgrade=0)
description:
  - >-
    Reads every VM's config first and fails, naming the VM and the sizes, if a disk would have to
    shrink - before anything is changed.
  - >-
    Fails the same way, naming the VMID and the tags found, if a VM's own config does not carry the owner
    tag and this service's tag (or, tagged for no service, this service's clone marker): nothing is
    changed.
  - >-
    Waits for a VM's lock (e.g. C(clone)) to clear before touching it. Writes only what differs, through
    the asynchronous C(POST .../config) and C(PUT .../resize) whose UPIDs are awaited.
  - >-
    With O(cloud_init=false) only sizing and tags are converged (resize of existing VMs).
  - >-
    With O(ip_mode=dhcp) the QEMU guest agent option is enabled too (the address is learned through it).
  - >-
    The operator's options converge the same way - O(cpu_type), O(sockets), O(balloon), O(data_disk) and
    O(extra_nets) - each left as the VM has it when unset. A data disk is added as a new volume when missing and
    grown when smaller; a shrink, a bus holding the boot disk or a CD-ROM, and a balloon above the memory fail
    naming the VM before any VM is changed.
  - >-
    Why not community.proxmox.proxmox_kvm update / proxmox_disk - both act on one VM per task, re-send
    every option, and proxmox_disk waits on tasks with 1 s polling; here all VMs converge in parallel.
options:
  vms:
    description: "VMs: name, vmid, node, cores, memory, disk_gib, tags, ip."
    type: list
    elements: dict
    required: true
  cloud_init: {description: Also converge the cloud-init settings and net0., type: bool, default: true}
  service_id: {description: Fulcrum service id (ownership marker)., type: str, required: true}
  owner_tag: {description: Tag marking the agent as the owner., type: str, default: agentkube}
  ciuser: {description: Cloud-init user., type: str, default: ""}
  ssh_public_keys: {description: SSH public keys for the user., type: list, elements: str, default: []}
  ip_mode: {description: static or dhcp., type: str, choices: [static, dhcp], default: static}
  ip_prefix: {description: Prefix length of static addresses., type: int, default: 24}
  ip_gateway: {description: Gateway of static addresses., type: str, default: ""}
  nameservers: {description: DNS servers., type: list, elements: str, default: []}
  bridge: {description: Bridge of net0., type: str, default: ""}
  vlan: {description: VLAN tag of net0 (0 = none)., type: int, default: 0}
  cpu_type:
    description: >-
      CPU model (the C(cpu) option's cputype, e.g. host, x86-64-v2-AES, kvm64); its other properties are kept.
      Empty leaves the VM's.
    type: str
    default: ""
  sockets:
    description: CPU sockets; the VM's cores are per socket. Unset leaves the VM's.
    type: int
  balloon:
    description: >-
      Minimum memory in MiB the balloon driver may shrink the VM to, at most its memory; 0 disables ballooning.
      Unset leaves the VM's (which must then not exceed the memory either).
    type: int
  data_disk:
    description: >-
      A second disk (e.g. for container images), added when missing and grown when smaller, never shrunk nor
      removed. Unset for none.
    type: dict
    suboptions:
      size_gib: {description: Size in GiB., type: int, required: true}
      storage: {description: Storage of a new disk (empty = the boot disk's)., type: str, default: ""}
      bus: {description: Drive key (scsi1 ... scsi30, virtio0-15, sata0-5, ide0-3)., type: str, default: scsi1}
  extra_nets:
    description: >-
      NICs net1..netN, in order; a NIC above netN is removed, a changed one keeps its MAC. Unset leaves every NIC
      but net0 alone.
    type: list
    elements: dict
    suboptions:
      bridge: {description: Bridge., type: str, required: true}
      vlan: {description: VLAN tag (0 = untagged)., type: int, default: 0}
      model:
        description: NIC model.
        type: str
        default: virtio
        choices: [e1000, e1000-82540em, e1000-82544gc, e1000-82545em, e1000e, i82551, i82557b, i82559er, ne2k_isa,
                  ne2k_pci, pcnet, rtl8139, virtio, vmxnet3]
      firewall: {description: Proxmox firewall on this NIC., type: bool, default: false}
      dhcp:
        description: Cloud-init configures the NIC by DHCP (ipconfigN ip=dhcp); else the guest leaves it unconfigured.
        type: bool
        default: false
  concurrency: {description: VMs configured at once., type: int, default: 4}
  lock_timeout: {description: Seconds to wait for a VM lock to clear., type: int, default: 1800}
extends_documentation_fragment: [agentkube.kamaji.proxmox_api]
author: AgentKube
"""


def wanted_changes(vm: dict, config: dict, p: dict) -> dict:
    """What to write so the VM's (pending) config is the desired one; `delete` lists the options to remove."""
    # onboot=1: the workers come back after a host reboot.
    want = {"cores": str(vm["cores"]), "memory": str(vm["memory"]), "tags": join_tags(vm["tags"]), "onboot": "1"}
    if p["cloud_init"]:
        mark = parse_marker(config.get("description"))
        ip = vm.get("ip") or (mark["ip"] if mark and mark["ip"] != "dhcp" else "")
        want.update(
            ciuser=p["ciuser"],
            ipconfig0=ipconfig(ip if p["ip_mode"] == "static" else None, p["ip_prefix"], p["ip_gateway"]),
            ciupgrade="0",
            nameserver=" ".join(p["nameservers"]),
            description=marker(p["service_id"], ip if p["ip_mode"] == "static" else ""),
        )
        if p["ssh_public_keys"]:
            want["sshkeys"] = sshkeys_param(p["ssh_public_keys"])
        if p["ip_mode"] == "dhcp" and agent_option(config.get("agent")):
            # A DHCP address is learned through the guest agent: its channel must exist from first boot.
            want["agent"] = agent_option(config.get("agent"))
        if config.get("net0") and p["bridge"]:
            want["net0"] = net_value(config["net0"], p["bridge"], p["vlan"])
    # The operator's options, each only when set (unset leaves the VM's own).
    if p["cpu_type"]:
        want["cpu"] = cpu_value(config.get("cpu"), p["cpu_type"])
    if p["sockets"] is not None:
        want["sockets"] = str(p["sockets"])
    if p["balloon"] is not None:
        want["balloon"] = str(p["balloon"])
    changes = {}
    for key, value in want.items():
        if value == "" and key not in config:
            continue
        have = config.get(key)
        if key == "tags":
            same = split_tags(have) == split_tags(value)
        elif key == "sshkeys":
            same = urllib.parse.unquote(str(have or "")).strip() == urllib.parse.unquote(value).strip()
        elif key == "description":
            same = parse_marker(have) == parse_marker(value)
        elif key == "net0":
            same = same_net(have, value)
        elif key == "cpu":
            same = same_cpu(have, value)
        elif key == "sockets":
            same = str(have if have is not None else "1") == value  # PVE's default: 1
        else:
            same = str(have if have is not None else "") == value
        if not same:
            changes[key] = value
    if p["extra_nets"] is not None:
        nets, delete = extra_net_config(config, p["extra_nets"])
        changes.update(nets)
        if delete:
            changes["delete"] = ",".join(delete)
    return changes


def plan_vm(vm: dict, config: dict, p: dict) -> tuple[dict, dict, list, list[str], list[str]]:
    """(changes, new volumes {key: "<storage>:<GiB>"}, grows [(key, GiB)], boot disk shrinks, other refusals)
    of one VM."""
    data = p["data_disk"]
    disk = boot_disk(config, exclude=(data["bus"],) if data else ())
    grows, volumes, shrinks, refusals = [], {}, [], []
    if disk:
        key, have = disk
        if vm["disk_gib"] < have:
            shrinks.append(f"{vm['name']} (vmid {vm['vmid']}): disk {key} is {have:g} GiB, requested "
                           f"{vm['disk_gib']} GiB")
        elif vm["disk_gib"] > have:
            grows.append((key, vm["disk_gib"]))
    if data:
        action = data_disk_action(config, data, disk[0] if disk else None)
        if action and action[0] == "refuse":
            refusals.append(f"data_disk (proxmox_vm_data_disk) refused for {vm['name']} (vmid {vm['vmid']}): "
                            f"{action[1]}")
        elif action and action[0] == "add":
            volumes[action[1]] = action[2]
        elif action:
            grows.append((action[1], action[2]))
    problem = balloon_problem(config, p["balloon"], int(vm["memory"]))
    if problem:
        refusals.append(f"balloon (proxmox_vm_balloon) refused for {vm['name']} (vmid {vm['vmid']}, pool "
                        f"{vm.get('pool', '?')}): {problem}")
    return wanted_changes(vm, config, p), volumes, grows, shrinks, refusals


def main():
    spec = client_argument_spec()
    spec.update(
        vms={"type": "list", "elements": "dict", "required": True},
        cloud_init={"type": "bool", "default": True},
        service_id={"type": "str", "required": True},
        owner_tag={"type": "str", "default": "agentkube"},
        ciuser={"type": "str", "default": ""},
        ssh_public_keys={"type": "list", "elements": "str", "default": [], "no_log": False},
        ip_mode={"type": "str", "default": "static", "choices": ["static", "dhcp"]},
        ip_prefix={"type": "int", "default": 24},
        ip_gateway={"type": "str", "default": ""},
        nameservers={"type": "list", "elements": "str", "default": []},
        bridge={"type": "str", "default": ""},
        vlan={"type": "int", "default": 0},
        cpu_type={"type": "str", "default": ""},
        sockets={"type": "int"},
        balloon={"type": "int"},
        data_disk={"type": "dict", "options": {
            "size_gib": {"type": "int", "required": True},
            "storage": {"type": "str", "default": ""},
            "bus": {"type": "str", "default": "scsi1"},
        }},
        extra_nets={"type": "list", "elements": "dict", "options": {
            "bridge": {"type": "str", "required": True},
            "vlan": {"type": "int", "default": 0},
            "model": {"type": "str", "default": "virtio", "choices": list(NIC_MODELS)},
            "firewall": {"type": "bool", "default": False},
            "dhcp": {"type": "bool", "default": False},
        }},
        concurrency={"type": "int", "default": 4},
        lock_timeout={"type": "int", "default": 1800},
    )
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    p = module.params
    bad = option_errors(p, prefix="")
    if bad:
        module.fail_json(msg="; ".join(bad))
    try:
        client = client_from_params(p)
    except RuntimeError as e:
        module.fail_json(msg=str(e))

    def pending_config(node: str, vmid) -> dict:
        # The pending view: what the VM will run with after its next boot (a running VM takes most
        # changes as pending), so a re-run compares with what was already asked for.
        items = client.retrying(lambda: client.get(f"/nodes/{node}/qemu/{vmid}/pending"))
        return {i["key"]: i.get("pending", i.get("value")) for i in items or [] if not i.get("delete")}

    def read(vm):
        entry = wait_unlocked(client, int(vm["vmid"]), vm["name"], p["lock_timeout"])
        return dict(vm, node=entry["node"]), pending_config(entry["node"], entry["vmid"])

    workers = max(1, p["concurrency"])
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as ex:
            current = list(ex.map(read, p["vms"]))
    except VmGone as e:
        module.fail_json(msg=f"VM {e} disappeared before it could be configured")
    except PveApiError as e:
        module.fail_json(msg=f"reading VM configs failed: {e}")

    # Every check first, so a bad request changes nothing.
    foreign = [f"VM {vm['vmid']} ({vm['name']}): tags found: {';'.join(split_tags(config.get('tags'))) or 'none'}"
               for vm, config in current if not owned_by(config, p["owner_tag"], p["service_id"])]
    if foreign:
        module.fail_json(msg=f"refusing to touch VMs not owned by service {p['service_id']} "
                             f"(expected {p['owner_tag']} and the service's svc- tag): " + "; ".join(foreign))
    plans, shrinks, refusals = [], [], []
    for vm, config in current:
        changes, volumes, grows, shrunk, refused = plan_vm(vm, config, p)
        plans.append((vm, changes, volumes, grows))
        shrinks += shrunk
        refusals += refused
    if shrinks or refusals:
        module.fail_json(msg="; ".join(([f"disks only grow; shrink requested for {'; '.join(shrinks)}"]
                                        if shrinks else []) + refusals))

    if module.check_mode:
        module.exit_json(changed=any(any(plan[1:]) for plan in plans),
                         changed_vms=sorted(plan[0]["name"] for plan in plans if any(plan[1:])))

    def add_volume(vm: dict, key: str, value: str) -> None:
        """Every request allocates a new volume: one without an answer (a timeout) is looked for, never sent
        again blindly; errors Proxmox answered (a lock timeout) allocated nothing and are retried."""
        base = f"/nodes/{vm['node']}/qemu/{vm['vmid']}"
        attempt = 0
        while True:
            try:
                client.run_task("POST", base + "/config", vm["node"], {key: value})
                return
            except PveApiError as e:
                if e.unanswered:
                    deadline = time.monotonic() + max(5.0, 10 * client.retry_delay)
                    while time.monotonic() < deadline:
                        if pending_config(vm["node"], vm["vmid"]).get(key):
                            return
                        time.sleep(0.2)
                    raise PveApiError(e.status, f"adding the data disk {key} of {vm['name']} ({vm['vmid']}): "
                                                "no answer and no disk since; not asked again (a re-run converges)"
                                      ) from None
                attempt += 1
                if not e.transient or attempt > client.retries:
                    raise PveApiError(e.status, f"adding the data disk {key} of {vm['name']} ({vm['vmid']}): "
                                                f"{e.message}") from None
                time.sleep(client.retry_delay * (2 ** (attempt - 1)))

    def apply(plan):
        vm, changes, volumes, grows = plan
        base = f"/nodes/{vm['node']}/qemu/{vm['vmid']}"
        if changes:
            client.retrying(lambda: client.run_task("POST", base + "/config", vm["node"], changes),
                            what=f"configuring {vm['name']} ({vm['vmid']})")
        for key, value in volumes.items():
            add_volume(vm, key, value)
        for key, size in grows:
            client.retrying(lambda key=key, size=size: client.run_task("PUT", base + "/resize", vm["node"],
                                                                       {"disk": key, "size": f"{size}G"}),
                            what=f"growing the disk {key} of {vm['name']} ({vm['vmid']})")
        return vm["name"] if changes or volumes or grows else None

    changed, errors = [], []
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as ex:
        for fut in concurrent.futures.as_completed([ex.submit(apply, plan) for plan in plans]):
            try:
                name = fut.result()
                if name:
                    changed.append(name)
            except PveApiError as e:
                errors.append(str(e))
    if errors:
        module.fail_json(msg="; ".join(sorted(errors)), changed=bool(changed), changed_vms=sorted(changed))
    module.exit_json(changed=bool(changed), changed_vms=sorted(changed))


if __name__ == "__main__":
    main()
