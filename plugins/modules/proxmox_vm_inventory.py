#!/usr/bin/python
"""Find the worker VMs a Fulcrum service owns in a Proxmox VE cluster."""

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
    index_of,
    owned_by,
    pool_of,
    service_tag,
    split_tags,
)

DOCUMENTATION = r"""
module: proxmox_vm_inventory
short_description: Find the worker VMs a service owns, by tags and by the clone-time ownership marker
description:
  - >-
    Takes the list of VMIDs (and their nodes and live tags) from one C(/cluster/resources) call, then reads
    every candidate's own config - each VM not tagged for another service - for its identity, and its
    C(status/current) for its state. C(/cluster/resources)' C(name) and C(status) come from pvestatd's broadcast,
    up to 10 s old (pve-manager PVE/API2Tools.pm): a fresh clone has no name there, a VM just started shows
    stopped. They are never used here.
  - >-
    Owned means the owner and service tags, or, tagged for no service, this service's marker in the description
    (a clone interrupted before it was configured). A clone still copying its disks holds only C(lock: clone)
    (qemu-server clone_vm): it is waited on up to O(clone_wait) seconds until its name and marker show.
  - >-
    Each VM reports C(configured) (it carries the service tag and the cloud-init user written by
    proxmox_vm_configure), so of two VMs with one name the configured one is kept.
  - >-
    Why not community.proxmox.proxmox_vm_info: it cannot see the description marker without reading
    every VM's config one by one, and half-made clones must be found so re-runs never duplicate them.
options:
  tenant: {description: Tenant name (prefix of every worker name)., type: str, required: true}
  service_id: {description: Fulcrum service id., type: str, required: true}
  owner_tag: {description: Tag marking the owner., type: str, default: agentkube}
  clone_wait: {description: Seconds to wait for a clone still copying to show its name., type: int, default: 1800}
extends_documentation_fragment: [agentkube.kamaji.proxmox_api]
author: AgentKube
"""


def read_identity(client, vm: dict, clone_wait: float) -> dict | None:
    """The VM's own config, once it shows who it is (a clone still copying has only its lock); None if gone."""
    deadline = time.monotonic() + clone_wait
    delay = 0.05
    while True:
        try:
            config = client.retrying(lambda: client.vm_config(vm["node"], vm["vmid"]))
        except PveApiError as e:
            if e.missing:  # deleted meanwhile
                return None
            raise
        if config.get("name") or config.get("lock") != "clone" or time.monotonic() > deadline:
            return config
        time.sleep(delay)
        delay = min(delay * 1.5, 2.0)


def owned_vms(client, tenant: str, service_id: str, owner: str, clone_wait: float = 1800) -> list[dict]:
    svc = service_tag(service_id)
    candidates = []
    for vm in client.cluster_vms():  # the VMIDs, nodes and live tags; name/status lag, unused
        tags = split_tags(vm.get("tags"))
        if any(t.startswith("svc-") for t in tags) and svc not in tags:
            continue  # another service's VM
        candidates.append(vm)

    def describe(vm):
        config = read_identity(client, vm, clone_wait)
        if config is None or not owned_by(config, owner, service_id):
            return None
        try:
            status = client.retrying(lambda: client.vm_status(vm["node"], vm["vmid"]))
        except PveApiError as e:
            if e.missing:
                return None
            raise
        name = str(config.get("name") or "")
        tagged = svc in split_tags(config.get("tags"))
        ips = sorted(claimed_ips(config))
        return {
            "vmid": int(vm["vmid"]),
            "name": name,
            "node": vm["node"],
            "status": status.get("status", "unknown"),
            "lock": config.get("lock") or "",
            "pool": pool_of({"name": name, "tags": config.get("tags")}, tenant),
            "index": index_of(name),
            "ip": ips[0] if ips else "",
            "tagged": tagged,
            "configured": tagged and bool(config.get("ciuser") or config.get("ipconfig0")),
        }

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        found = [v for v in pool.map(describe, candidates)
                 if v and (v["tagged"] or v["name"].startswith(tenant + "-"))]
    return sorted(found, key=lambda v: (v["name"], v["vmid"]))


def main():
    spec = client_argument_spec()
    spec.update(
        tenant={"type": "str", "required": True},
        service_id={"type": "str", "required": True},
        owner_tag={"type": "str", "default": "agentkube"},
        clone_wait={"type": "int", "default": 1800},
    )
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    p = module.params
    try:
        client = client_from_params(p)
        vms = owned_vms(client, p["tenant"], p["service_id"], p["owner_tag"], p["clone_wait"])
    except (PveApiError, RuntimeError, ValueError) as e:
        module.fail_json(msg=f"listing the VMs of service {p['service_id']} failed: {e}")
    module.exit_json(changed=False, vms=vms)


if __name__ == "__main__":
    main()
