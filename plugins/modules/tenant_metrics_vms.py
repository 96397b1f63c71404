#!/usr/bin/python
"""Usage of every tenant VM of a Proxmox VE cluster from one /cluster/resources call."""

from __future__ import annotations

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.agentkube.kamaji.plugins.module_utils.proxmox_api import (
    PveApiError,
    client_argument_spec,
    client_from_params,
)
from ansible_collections.agentkube.kamaji.plugins.module_utils.proxmox_vm_config import split_tags, tag_token

DOCUMENTATION = r"""
module: tenant_metrics_vms
short_description: Usage of every tenant VM from one GET /cluster/resources?type=vm
description:
  - >-
    One API call per run, whatever the number of VMs (not one call per VM).
  - >-
    Keeps the QEMU VMs (templates excluded) tagged with the owner tag and a C(tenant-<name>) tag, as
    proxmox_vm tags them, with their status and the usage counters Proxmox reports.
  - >-
    A Proxmox failure (connection, TLS, HTTP error) does not fail the task: the result says C(ok=false)
    and why, so the other metrics of the interval are still reported.
options:
  owner_tag: {description: Tag marking the VMs agentkube owns., type: str, default: agentkube}
extends_documentation_fragment: [agentkube.kamaji.proxmox_api]
author: AgentKube
"""

RETURN = r"""
proxmox:
  description: ok, error, sampledAt (epoch seconds of the answer), vms (vmid, name, node, status, tenant,
    serviceId, cpu, maxcpu, mem, maxmem, disk, maxdisk, netin, netout).
  type: dict
  returned: always
"""

USAGE_FIELDS = ("cpu", "maxcpu", "mem", "maxmem", "disk", "maxdisk", "netin", "netout")


def tenant_vm(item: dict, owner: str) -> dict | None:
    """The metrics view of one /cluster/resources entry, or None when it is not a tenant VM."""
    if item.get("type") != "qemu" or item.get("template"):
        return None
    tags = split_tags(item.get("tags"))
    if owner not in tags:
        return None
    tenant = next((t[len("tenant-"):] for t in tags if t.startswith("tenant-")), "")
    if not tenant:
        return None
    service = next((t[len("svc-"):] for t in tags if t.startswith("svc-")), "")
    vm = {"vmid": int(item["vmid"]), "name": str(item.get("name") or item["vmid"]), "node": item.get("node", ""),
          "status": item.get("status", "unknown"), "tenant": tenant, "serviceId": service}
    for key in USAGE_FIELDS:
        value = item.get(key)
        vm[key] = value if isinstance(value, int | float) and not isinstance(value, bool) else 0
    return vm


def collect(client, owner: str) -> dict:
    try:
        resources = client.get("/cluster/resources", type="vm") or []
    except PveApiError as e:
        return {"ok": False, "error": f"GET /cluster/resources failed: {e}", "sampledAt": time.time(), "vms": []}
    sampled_at = time.time()
    vms = [vm for vm in (tenant_vm(item, owner) for item in resources if isinstance(item, dict)) if vm]
    return {"ok": True, "error": "", "sampledAt": sampled_at, "vms": sorted(vms, key=lambda v: v["vmid"])}


def main():
    spec = client_argument_spec()
    spec.update(owner_tag={"type": "str", "default": "agentkube"})
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    p = module.params
    try:
        owner = tag_token(p["owner_tag"])
        client = client_from_params(p)
    except (RuntimeError, ValueError) as e:
        module.fail_json(msg=f"owner_tag/connection settings: {e}")
    module.exit_json(changed=False, proxmox=collect(client, owner))


if __name__ == "__main__":
    main()
