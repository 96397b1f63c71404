#!/usr/bin/python
"""Start or stop worker VMs in parallel: start retried when its task fails; stop = graceful, then hard."""

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
    VmGone,
    locate,
    power_change_needed,
    start,
    stop,
    wait_unlocked,
)

DOCUMENTATION = r"""
module: proxmox_vm_power
short_description: Start worker VMs, or stop them with a graceful shutdown and then a hard stop
description:
  - >-
    Waits for a VM's lock (e.g. C(clone)) to clear first. Every task's UPID is awaited.
  - >-
    Right before a VM is started, shut down or hard-stopped its config is re-read from Proxmox; unless it
    carries the owner tag and this service's tag (or, tagged for no service, this service's clone marker)
    the task fails naming its VMID and the tags found, and nothing is done to it, whatever list of VMs the
    module was given.
  - >-
    A start task that ends in an error is retried O(start_retries) times with backoff.
  - >-
    In check mode nothing is started or stopped: each VM's power state is read (and, when it would change, its
    ownership checked as a real run would) and the VMs a real run would start or stop are reported as changed.
  - >-
    Why not community.proxmox.proxmox_kvm state=started/stopped - it does not notice a start task that
    ended in TASK ERROR (it keeps polling until its timeout), polls once a second and acts on one VM per
    task invocation.
options:
  vms: {description: "VMs: name, vmid (node is looked up)", type: list, elements: dict, required: true}
  state: {description: started or stopped., type: str, choices: [started, stopped], required: true}
  service_id: {description: Fulcrum service id whose VMs these must be (svc- tag)., type: str, required: true}
  owner_tag: {description: Tag marking the agent as the owner., type: str, default: agentkube}
  shutdown_timeout: {description: PVE seconds for a graceful shutdown before the hard stop., type: int, default: 120}
  start_retries: {description: Retries of a failed start task., type: int, default: 2}
  lock_timeout: {description: Seconds to wait for a VM lock to clear., type: int, default: 1800}
  concurrency: {description: VMs acted on at once., type: int, default: 8}
extends_documentation_fragment: [agentkube.kamaji.proxmox_api]
author: AgentKube
"""


def main():
    spec = client_argument_spec()
    spec.update(
        vms={"type": "list", "elements": "dict", "required": True},
        state={"type": "str", "required": True, "choices": ["started", "stopped"]},
        service_id={"type": "str", "required": True},
        owner_tag={"type": "str", "default": "agentkube"},
        shutdown_timeout={"type": "int", "default": 120},
        start_retries={"type": "int", "default": 2},
        lock_timeout={"type": "int", "default": 1800},
        concurrency={"type": "int", "default": 8},
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

    def predict(vm):
        # Check mode: read only. A locked VM is not waited for; its power state is what it is now.
        entry = locate(client, int(vm["vmid"]), vm["name"])
        return vm["name"] if power_change_needed(client, entry, owner, running=p["state"] == "started") else None

    def act(vm):
        if module.check_mode:
            return predict(vm)
        entry = wait_unlocked(client, int(vm["vmid"]), vm["name"], p["lock_timeout"])
        if p["state"] == "started":
            done = start(client, entry, p["start_retries"], client.retry_delay, owner=owner)
        else:
            done = stop(client, entry, p["shutdown_timeout"], owner=owner)
        return vm["name"] if done else None

    changed, errors = [], []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, p["concurrency"])) as ex:
        futures = {ex.submit(act, vm): vm for vm in p["vms"]}
        for fut in concurrent.futures.as_completed(futures):
            vm = futures[fut]
            try:
                name = fut.result()
                if name:
                    changed.append(name)
            except VmGone:
                errors.append(f"VM {vm['name']} ({vm['vmid']}) no longer exists")
            except NotOwned as e:
                errors.append(str(e))
            except PveApiError as e:
                errors.append(f"{vm['name']} ({vm['vmid']}): {e}")
    if errors:
        module.fail_json(msg="; ".join(sorted(errors)), changed=bool(changed), changed_vms=sorted(changed))
    module.exit_json(changed=bool(changed), changed_vms=sorted(changed))


if __name__ == "__main__":
    main()
