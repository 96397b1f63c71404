#!/usr/bin/python
"""Find the worker VMs a Fulcrum service owns in a Proxmox VE cluster."""

from __future__ import annotations

import concurrent.futures

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.proxmox_api import PveApiError, client_argument_spec, client_from_params
from ansible.module_utils.proxmox_vm_config import (
    claimed_ips,
    index_of,
    parse_marker,
    pool_of,
    service_tag,
    split_tags,
    tag_token,
)

DOCUMENTATION = r"""
module: proxmox_vm_inventory
short_description: Find the worker VMs a service owns, by tags and by the clone-time ownership marker
description:
  - Lists every QEMU VM of the cluster (one C(/cluster/resources) call) and reads the config of the
    candidates: VMs tagged with the owner and service tags, and VMs named C(<tenant>-*) whose clone
    description carries this service's marker (a clone interrupted before its tags were set).
  - Why not community.proxmox.proxmox_vm_info: it cannot see the description marker without reading
    every VM's config one by one, and half-made clones must be found so re-runs never duplicate them.
options:
  tenant: {description: Tenant name (prefix of every worker name)., type: str, required: true}
  service_id: {description: Fulcrum service id., type: str, required: true}
  owner_tag: {description: Tag marking the owner., type: str, default: agentkube}
author: AgentKube
"""


def owned_vms(client, tenant: str, service_id: str, owner: str) -> list[dict]:
    svc, own = service_tag(service_id), tag_token(owner)
    candidates = []
    for vm in client.cluster_vms():
        if vm.get("template"):
            continue
        tags = split_tags(vm.get("tags"))
        tagged = svc in tags and own in tags
        if tagged or str(vm.get("name", "")).startswith(tenant + "-"):
            candidates.append((vm, tagged))

    def describe(item):
        vm, tagged = item
        try:
            config = client.vm_config(vm["node"], vm["vmid"])
        except PveApiError as e:
            if e.missing:  # deleted meanwhile
                return None
            raise
        mark = parse_marker(config.get("description"))
        if not tagged and not (mark and mark["service"] == service_id):
            return None
        ips = sorted(claimed_ips(config))
        return {
            "vmid": int(vm["vmid"]),
            "name": vm["name"],
            "node": vm["node"],
            "status": vm.get("status", "unknown"),
            "lock": vm.get("lock") or config.get("lock") or "",
            "pool": pool_of(vm, tenant),
            "index": index_of(vm["name"]),
            "ip": ips[0] if ips else "",
            "tagged": tagged,
        }

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        found = [v for v in pool.map(describe, candidates) if v]
    return sorted(found, key=lambda v: (v["name"], v["vmid"]))


def main():
    spec = client_argument_spec()
    spec.update(
        tenant={"type": "str", "required": True},
        service_id={"type": "str", "required": True},
        owner_tag={"type": "str", "default": "agentkube"},
    )
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    p = module.params
    try:
        client = client_from_params(p)
        vms = owned_vms(client, p["tenant"], p["service_id"], p["owner_tag"])
    except (PveApiError, RuntimeError, ValueError) as e:
        module.fail_json(msg=f"listing the VMs of service {p['service_id']} failed: {e}")
    module.exit_json(changed=False, vms=vms)


if __name__ == "__main__":
    main()
