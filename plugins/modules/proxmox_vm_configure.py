#!/usr/bin/python
"""Converge worker VMs' configs: sizing and tags, plus cloud-init before the first boot; disks only grow."""

from __future__ import annotations

import concurrent.futures
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
    Why not community.proxmox.proxmox_kvm update / proxmox_disk - both act on one VM per task, re-send
    every option, and proxmox_disk waits on tasks with 1 s polling; here all VMs converge in parallel.
options:
  vms:
    description: "VMs: name, vmid, node, cores, memory, disk_gib, tags, ip."
    type: list
    elements: dict
    required: true
  cloud_init: {description: Also converge the cloud-init settings and the NIC., type: bool, default: true}
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
  concurrency: {description: VMs configured at once., type: int, default: 4}
  lock_timeout: {description: Seconds to wait for a VM lock to clear., type: int, default: 1800}
extends_documentation_fragment: [agentkube.kamaji.proxmox_api]
author: AgentKube
"""


def net0_value(current: str, bridge: str, vlan: int) -> str:
    parts = [x for x in str(current).split(",") if x and not x.startswith(("bridge=", "tag="))]
    if bridge:
        parts.append(f"bridge={bridge}")
    if vlan:
        parts.append(f"tag={vlan}")
    return ",".join(parts)


def wanted_changes(vm: dict, config: dict, p: dict) -> dict:
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
            want["net0"] = net0_value(config["net0"], p["bridge"], p["vlan"])
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
        else:
            same = str(have if have is not None else "") == value
        if not same:
            changes[key] = value
    return changes


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
        concurrency={"type": "int", "default": 4},
        lock_timeout={"type": "int", "default": 1800},
    )
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    p = module.params
    try:
        client = client_from_params(p)
    except RuntimeError as e:
        module.fail_json(msg=str(e))

    def read(vm):
        entry = wait_unlocked(client, int(vm["vmid"]), vm["name"], p["lock_timeout"])
        # The pending view: what the VM will run with after its next boot (a running VM takes most
        # changes as pending), so a re-run compares with what was already asked for.
        items = client.retrying(lambda: client.get(f"/nodes/{entry['node']}/qemu/{entry['vmid']}/pending"))
        config = {i["key"]: i.get("pending", i.get("value")) for i in items or [] if not i.get("delete")}
        return dict(vm, node=entry["node"]), config

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
    plans, shrinks = [], []
    for vm, config in current:
        disk = boot_disk(config)
        grow = None
        if disk:
            key, have = disk
            if vm["disk_gib"] < have:
                shrinks.append(f"{vm['name']} (vmid {vm['vmid']}): disk {key} is {have:g} GiB, requested "
                               f"{vm['disk_gib']} GiB")
            elif vm["disk_gib"] > have:
                grow = (key, vm["disk_gib"])
        plans.append((vm, wanted_changes(vm, config, p), grow))
    if shrinks:
        module.fail_json(msg="disks only grow; shrink requested for " + "; ".join(shrinks))

    if module.check_mode:
        module.exit_json(changed=any(c or g for _, c, g in plans),
                         changed_vms=sorted(vm["name"] for vm, c, g in plans if c or g))

    def apply(plan):
        vm, changes, grow = plan
        base = f"/nodes/{vm['node']}/qemu/{vm['vmid']}"
        if changes:
            client.retrying(lambda: client.run_task("POST", base + "/config", vm["node"], changes),
                            what=f"configuring {vm['name']} ({vm['vmid']})")
        if grow:
            client.retrying(lambda: client.run_task("PUT", base + "/resize", vm["node"],
                                                    {"disk": grow[0], "size": f"{grow[1]}G"}),
                            what=f"growing the disk of {vm['name']} ({vm['vmid']})")
        return vm["name"] if changes or grow else None

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
