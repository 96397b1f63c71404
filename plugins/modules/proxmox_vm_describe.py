#!/usr/bin/python
"""The result list of worker VMs: name, pool, vmid, node, ip, status (DHCP address from the guest agent)."""

from __future__ import annotations

import concurrent.futures
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.agentkube.kamaji.plugins.module_utils.proxmox_api import (
    PveApiError,
    client_argument_spec,
    client_from_params,
)
from ansible_collections.agentkube.kamaji.plugins.module_utils.proxmox_vm_config import (
    claimed_ips,
    guest_ipv4,
    ip_of_ipconfig,
    mac_of,
)

DOCUMENTATION = r"""
module: proxmox_vm_describe
short_description: Describe worker VMs for the playbooks above the role
description:
  - >-
    Static addresses come from the VM's ipconfig0. With DHCP and O(wait_for_ip), the address of a running
    VM is learned from the guest agent (network-get-interfaces, the interface with net0's MAC), polled
    until O(dhcp_timeout) seconds after the module started (one deadline for all VMs).
  - >-
    Fails naming every VM without an address and the timeout; a VM whose agent is not enabled in its
    config fails at once.
options:
  vms: {description: "VMs: name, pool, vmid", type: list, elements: dict, required: true}
  ip_mode: {description: static or dhcp., type: str, choices: [static, dhcp], default: static}
  wait_for_ip: {description: With DHCP, wait for running VMs to report an address., type: bool, default: false}
  dhcp_timeout: {description: Seconds to wait for the guest agents to report an address., type: int, default: 300}
extends_documentation_fragment: [agentkube.kamaji.proxmox_api]
author: AgentKube
"""

# Answers meaning "the guest has not booted its agent yet" (or the agent does not answer yet): keep polling.
AGENT_WAITING_MARKERS = ("guest agent is not running", "not running", "got timeout")
AGENT_MISSING_MARKER = "no qemu guest agent configured"


class NoAddress(Exception):
    """A running VM whose guest agent reported no address before the deadline."""


def agent_waiting(error: PveApiError) -> bool:
    text = error.message.lower()
    return error.transient or any(m in text for m in AGENT_WAITING_MARKERS)


def main():
    spec = client_argument_spec()
    spec.update(
        vms={"type": "list", "elements": "dict", "required": True},
        ip_mode={"type": "str", "default": "static", "choices": ["static", "dhcp"]},
        wait_for_ip={"type": "bool", "default": False},
        dhcp_timeout={"type": "int", "default": 300},
    )
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    p = module.params
    try:
        client = client_from_params(p)
        cluster = {int(v["vmid"]): v for v in client.cluster_vms()}
    except (RuntimeError, PveApiError) as e:
        module.fail_json(msg=f"listing VMs failed: {e}")
    # The VMs were started together, so one deadline bounds the whole wait, however many VMs there are.
    deadline = time.monotonic() + p["dhcp_timeout"]

    def learn_ip(node: str, vmid: int, name: str, mac: str) -> str:
        path = f"/nodes/{node}/qemu/{vmid}/agent/network-get-interfaces"
        delay = 0.2
        while True:
            try:
                ip = guest_ipv4(client.get(path), mac)
                if ip:
                    return ip
            except PveApiError as e:
                if AGENT_MISSING_MARKER in e.message.lower():
                    why = "no QEMU guest agent configured (VM option 'agent'); dhcp addresses are learned through it"
                    raise PveApiError(e.status, f"{name} ({vmid}): {why}") from None
                if not agent_waiting(e):
                    why = f"asking its guest agent failed: {e.message}"
                    raise PveApiError(e.status, f"{name} ({vmid}): {why}") from None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NoAddress(f"{name} ({vmid})")
            time.sleep(min(delay, remaining))
            delay = min(delay * 1.5, 2.0)

    def describe(vm):
        vmid = int(vm["vmid"])
        entry = cluster.get(vmid)  # the node; name and status there lag behind (pvestatd): read them live
        if entry is None:
            return None
        try:
            config = client.retrying(lambda: client.vm_config(entry["node"], vmid))
            entry = dict(entry, status=client.retrying(lambda: client.vm_status(entry["node"], vmid)).get("status"))
        except PveApiError as e:
            if e.missing:
                return None
            raise
        if config.get("name") != vm["name"]:
            return None
        ip = ip_of_ipconfig(config.get("ipconfig0")) or ""
        if p["ip_mode"] == "static" and not ip:
            claims = sorted(claimed_ips(config))
            ip = claims[0] if claims else ""
        if p["ip_mode"] == "dhcp":
            ip = ""
            if entry.get("status") == "running" and p["wait_for_ip"]:
                ip = learn_ip(entry["node"], vmid, vm["name"], mac_of(config.get("net0")))
        return {"name": vm["name"], "pool": vm.get("pool", ""), "vmid": vmid, "node": entry["node"],
                "ip": ip, "status": entry.get("status", "unknown")}

    nodes, silent, errors = [], [], []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(16, len(p["vms"])))) as ex:
        for fut in [ex.submit(describe, vm) for vm in p["vms"]]:
            try:
                node = fut.result()
                if node:
                    nodes.append(node)
            except NoAddress as e:
                silent.append(str(e))
            except PveApiError as e:
                errors.append(str(e))
    if silent:
        errors.append(f"no address from the QEMU guest agent within proxmox_vm_dhcp_timeout={p['dhcp_timeout']}s "
                      f"for {', '.join(sorted(silent))}")
    if errors:
        module.fail_json(msg="; ".join(errors))
    module.exit_json(changed=False, nodes=sorted(nodes, key=lambda n: n["name"]))


if __name__ == "__main__":
    main()
