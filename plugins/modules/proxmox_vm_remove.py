#!/usr/bin/python
"""Delete worker VMs: stop (graceful, then hard), then DELETE with purge. Already gone is success."""

from __future__ import annotations

import concurrent.futures

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.agentkube.kamaji.plugins.module_utils.proxmox_api import (
    PveApiError,
    client_argument_spec,
    client_from_params,
)
from ansible_collections.agentkube.kamaji.plugins.module_utils.proxmox_vm_ops import (
    NotOwned,
    Owner,
    destroy,
    would_destroy,
)

DOCUMENTATION = r"""
module: proxmox_vm_remove
short_description: Stop and delete worker VMs with purge=1 and destroy-unreferenced-disks=1
description:
  - >-
    A VM is deleted only if its vmid still carries the expected name (an id reused by someone else is
    left alone) and, re-read from Proxmox right before it is stopped and again before it is deleted, its own
    config carries the owner tag and this service's tag (or, tagged for no service, this service's clone
    marker: a clone not configured yet). Any other VM fails the task naming its VMID and the tags found,
    untouched, whatever list of VMs the module was given.
  - >-
    In check mode nothing is stopped or deleted: the VMs that exist under their name and are the service's are
    reported as the ones a real run would delete (removed), the others fail as in a real run.
  - >-
    A VM that is already gone counts as success. Deleting frees its static address, since the allocation
    record is the VM's own config.
  - >-
    Why not community.proxmox.proxmox_kvm state=absent - it polls tasks once a second per VM, one VM per
    task invocation, and does not wait for a clone lock to clear.
options:
  vms: {description: "VMs: name, vmid", type: list, elements: dict, required: true}
  service_id: {description: Fulcrum service id whose VMs these must be (svc- tag)., type: str, required: true}
  owner_tag: {description: Tag marking the agent as the owner., type: str, default: agentkube}
  shutdown_timeout: {description: PVE seconds for the graceful shutdown before the hard stop., type: int, default: 120}
  lock_timeout: {description: Seconds to wait for a VM lock to clear., type: int, default: 1800}
  concurrency: {description: VMs deleted at once., type: int, default: 4}
extends_documentation_fragment: [agentkube.kamaji.proxmox_api]
author: AgentKube
"""


def main():
    spec = client_argument_spec()
    spec.update(
        vms={"type": "list", "elements": "dict", "required": True},
        service_id={"type": "str", "required": True},
        owner_tag={"type": "str", "default": "agentkube"},
        shutdown_timeout={"type": "int", "default": 120},
        lock_timeout={"type": "int", "default": 1800},
        concurrency={"type": "int", "default": 4},
    )
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    p = module.params
    try:
        client = client_from_params(p)
    except RuntimeError as e:
        module.fail_json(msg=str(e))

    if not p["service_id"]:
        module.fail_json(msg="service_id must not be empty")
    owner = Owner(p["service_id"], p["owner_tag"])

    def remove(vm):
        if module.check_mode:
            return would_destroy(client, int(vm["vmid"]), vm["name"], owner=owner)
        return destroy(client, int(vm["vmid"]), vm["name"], p["shutdown_timeout"], p["lock_timeout"], owner=owner)

    removed, errors = [], []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, p["concurrency"])) as ex:
        futures = {ex.submit(remove, vm): vm for vm in p["vms"]}
        for fut in concurrent.futures.as_completed(futures):
            vm = futures[fut]
            try:
                if fut.result():
                    removed.append(vm["name"])
            except NotOwned as e:
                errors.append(str(e))
            except PveApiError as e:
                errors.append(f"deleting {vm['name']} ({vm['vmid']}) failed: {e}")
    if errors:
        module.fail_json(msg="; ".join(sorted(errors)), changed=bool(removed), removed=sorted(removed))
    module.exit_json(changed=bool(removed), removed=sorted(removed))


if __name__ == "__main__":
    main()
