#!/usr/bin/python
"""The result list of worker VMs: name, pool, vmid, node, ip, status (DHCP address from the guest agent)."""

from __future__ import annotations

import concurrent.futures
import ipaddress
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.proxmox_api import PveApiError, client_argument_spec, client_from_params
from ansible.module_utils.proxmox_vm_config import claimed_ips, ip_of_ipconfig

DOCUMENTATION = r"""
module: proxmox_vm_describe
short_description: Describe worker VMs for the playbooks above the role
description:
  - Static addresses come from the VM's ipconfig0. With DHCP and O(wait_for_ip), the address of a running
    VM is learned from the guest agent (network-get-interfaces), polled until O(dhcp_timeout).
options:
  vms: {description: "VMs: name, pool, vmid", type: list, elements: dict, required: true}
  ip_mode: {description: static or dhcp., type: str, choices: [static, dhcp], default: static}
  wait_for_ip: {description: With DHCP, wait for running VMs to report an address., type: bool, default: false}
  dhcp_timeout: {description: Seconds to wait for the guest agent to report an address., type: int, default: 300}
author: AgentKube
"""


def agent_ipv4(interfaces) -> str:
    """The first global IPv4 address the guest agent reports (loopback and link-local skipped)."""
    for iface in (interfaces or {}).get("result", interfaces) or []:
        for addr in iface.get("ip-addresses") or []:
            if addr.get("ip-address-type") != "ipv4":
                continue
            ip = ipaddress.IPv4Address(addr["ip-address"])
            if not (ip.is_loopback or ip.is_link_local):
                return str(ip)
    return ""


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

    def learn_ip(node, vmid, name):
        deadline = time.monotonic() + p["dhcp_timeout"]
        while True:
            try:
                ip = agent_ipv4(client.get(f"/nodes/{node}/qemu/{vmid}/agent/network-get-interfaces"))
                if ip:
                    return ip
            except PveApiError as e:
                if "guest agent is not running" not in e.message and not e.transient and "got timeout" not in e.message:
                    raise
            if time.monotonic() > deadline:
                raise PveApiError(0, f"{name} ({vmid}): no address from the guest agent after {p['dhcp_timeout']}s")
            time.sleep(1)

    def describe(vm):
        vmid = int(vm["vmid"])
        entry = cluster.get(vmid)
        if entry is None or entry.get("name") != vm["name"]:
            return None
        config = client.retrying(lambda: client.vm_config(entry["node"], vmid))
        ip = ip_of_ipconfig(config.get("ipconfig0")) or ""
        if p["ip_mode"] == "static" and not ip:
            claims = sorted(claimed_ips(config))
            ip = claims[0] if claims else ""
        if p["ip_mode"] == "dhcp" and entry.get("status") == "running" and p["wait_for_ip"]:
            ip = learn_ip(entry["node"], vmid, vm["name"])
        return {"name": vm["name"], "pool": vm.get("pool", ""), "vmid": vmid, "node": entry["node"],
                "ip": ip, "status": entry.get("status", "unknown")}

    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as ex:
            nodes = [n for n in ex.map(describe, p["vms"]) if n]
    except PveApiError as e:
        module.fail_json(msg=str(e))
    module.exit_json(changed=False, nodes=sorted(nodes, key=lambda n: n["name"]))


if __name__ == "__main__":
    main()
