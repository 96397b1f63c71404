#!/usr/bin/python
"""Clone worker VMs from a template in parallel, bounded per storage, with fresh VMIDs and IP claims."""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.agentkube.kamaji.plugins.module_utils.proxmox_api import (
    PveApiError,
    client_argument_spec,
    client_from_params,
)
from ansible_collections.agentkube.kamaji.plugins.module_utils.proxmox_vm_allocation import AllocationError, Allocator
from ansible_collections.agentkube.kamaji.plugins.module_utils.proxmox_vm_config import IpPool, marker, parse_marker
from ansible_collections.agentkube.kamaji.plugins.module_utils.proxmox_vm_ops import (
    Owner,
    VmGone,
    destroy,
    wait_unlocked,
)

DOCUMENTATION = r"""
module: proxmox_vm_clone
short_description: Clone the missing worker VMs in parallel (bounded per storage) and wait for each clone
description:
  - >-
    Each VM gets a VMID from the operator's range (never a hash, never /cluster/nextid) and, with a static
    pool, an address no VM of the cluster holds or claims. The clone request writes an ownership marker
    with the claimed address into the new VM's description, so the claim is visible at once.
  - >-
    Every clone UPID is awaited (OK or WARNINGS is success). Transient errors (storage/config lock
    timeouts, locked template) are retried with backoff; a VMID collision (config file already exists, or,
    for an id held on another node, the clone task's `File exists`) is retried with a fresh id. A clone request
    whose answer was lost (a timeout) is never simply sent again: the VM is looked for first, and adopted when it
    is this service's clone of that name.
  - >-
    With a static pool, the claims of concurrent clones are compared once every clone of the cluster shows its
    config (a clone's config holds only its lock until its disk is copied); of two VMs claiming one address, the
    lower vmid keeps it and the other claims a new one.
  - >-
    Nothing else touches a VM here, and nothing touches it before its clone task has finished.
  - >-
    Why not community.proxmox.proxmox_kvm clone - it clones one VM per task invocation, waits with a
    30 s default and 1 s polling, and neither bounds concurrency per storage nor retries collisions.
options:
  vms: {description: VMs to create (name, pool, index)., type: list, elements: dict, required: true}
  service_id: {description: Fulcrum service id (ownership marker)., type: str, required: true}
  owner_tag: {description: Owner tag (checked before a failed clone is removed)., type: str, default: agentkube}
  template_vmid: {description: Template VMID., type: int, required: true}
  template_node: {description: Node holding the template., type: str, required: true}
  target_nodes: {description: Nodes to spread VMs over (round-robin by index)., type: list, elements: str, default: []}
  storage: {description: Target storage of full clones., type: str, default: ""}
  resource_pool: {description: PVE resource pool to put VMs in., type: str, default: ""}
  full_clone: {description: Full (true) or linked clone., type: bool, default: true}
  concurrency_per_storage: {description: Parallel clones per storage., type: int, default: 4}
  vmid_min: {description: First VMID of the operator's range., type: int, required: true}
  vmid_max: {description: Last VMID of the operator's range., type: int, required: true}
  ip_mode: {description: static or dhcp., type: str, choices: [static, dhcp], default: static}
  ip_pool: {description: Static pool (CIDR or a-b range)., type: str, default: ""}
  ip_gateway: {description: Gateway (never handed out)., type: str, default: ""}
  ip_reserved: {description: Addresses never handed out., type: list, elements: str, default: []}
extends_documentation_fragment: [agentkube.kamaji.proxmox_api]
author: AgentKube
"""

MAX_VMID_ATTEMPTS = 20


class Cloner:
    def __init__(self, client, allocator: Allocator, p: dict):
        self.client = client
        self.alloc = allocator
        self.p = p
        key = p["storage"] if p["full_clone"] and p["storage"] else "template-storage"
        self._slots = {key: threading.BoundedSemaphore(max(1, p["concurrency_per_storage"]))}
        self._slot_key = key

    def target_node(self, vm: dict) -> str:
        nodes = self.p["target_nodes"] or [self.p["template_node"]]
        return nodes[int(vm.get("index", 0)) % len(nodes)]

    def clone_one(self, vm: dict) -> dict:
        ip = self.alloc.next_ip() if self.p["ip_mode"] == "static" else ""
        target = self.target_node(vm)
        src = f"/nodes/{self.p['template_node']}/qemu/{self.p['template_vmid']}/clone"
        with self._slots[self._slot_key]:
            for _ in range(MAX_VMID_ATTEMPTS):
                vmid = self.alloc.next_vmid()
                data = {"newid": vmid, "name": vm["name"], "full": 1 if self.p["full_clone"] else 0,
                        "description": marker(self.p["service_id"], ip)}
                if target != self.p["template_node"]:
                    data["target"] = target
                if self.p["full_clone"] and self.p["storage"]:
                    data["storage"] = self.p["storage"]
                if self.p["resource_pool"]:
                    data["pool"] = self.p["resource_pool"]
                done = {"name": vm["name"], "pool": vm.get("pool", ""), "vmid": vmid, "node": target, "ip": ip}
                outcome, upid = self._post_clone(src, data, vm["name"])
                if outcome == "ours":  # an earlier answer was lost, but the clone was made: it is this one
                    self._wait_adopted(vmid, vm["name"])
                    return dict(done, node=self._node_of(vmid, target))
                if outcome == "taken":
                    self.alloc.mark_vmid_taken(vmid)
                    continue
                try:
                    self.client.wait_task(self.p["template_node"], upid)
                except PveApiError as e:
                    if e.vmid_taken:
                        # Held on another node (the error comes from inside the task); PVE removed the
                        # temporary config itself, and the id is someone else's: nothing of ours to remove.
                        self.alloc.mark_vmid_taken(vmid)
                        continue
                    if not e.transient:
                        raise PveApiError(e.status, f"clone of {vm['name']} ({vmid}) failed: {e.message}") from None
                    # The task failed late: remove what is left of it, then retry with a fresh id.
                    self.alloc.mark_vmid_taken(vmid)
                    self._remove_leftover(vmid, vm["name"])
                    time.sleep(self.client.retry_delay)
                    continue
                return done
        raise PveApiError(0, f"clone of {vm['name']}: no VMID worked after {MAX_VMID_ATTEMPTS} attempts")

    def _post_clone(self, src: str, data: dict, name: str) -> tuple[str, str]:
        """POST the clone once, and again only when that is safe: ("started", upid), ("taken", "") when the id
        belongs to another VM, ("ours", "") when a request whose answer was lost did make our clone.
        A clone POST is not idempotent: after an unanswered request (a timeout) the VM is looked for first; an
        error the server answered (a lock timeout, no quorum) started nothing and is retried with backoff."""
        vmid = int(data["newid"])
        unanswered = False
        attempt = 0
        while True:
            try:
                return "started", self.client.post(src, **data)
            except PveApiError as e:
                if e.vmid_taken:
                    if unanswered and self._look_for(vmid, name, grace=0) == "ours":
                        return "ours", ""
                    return "taken", ""
                if e.unanswered:
                    unanswered = True
                    found = self._look_for(vmid, name, grace=max(5.0, 10 * self.client.retry_delay))
                    if found:
                        return found, ""
                elif not e.transient:
                    raise PveApiError(e.status, f"clone of {name} failed: {e.message}") from None
                attempt += 1
                if attempt > self.client.retries:
                    raise PveApiError(e.status, f"clone of {name} failed: {e.message}") from None
                time.sleep(self.client.retry_delay * (2 ** (attempt - 1)))

    def _look_for(self, vmid: int, name: str, grace: float) -> str:
        """After a clone request without an answer: "ours" when VM `vmid` exists and, once its clone lock is gone,
        is named `name` with this service's marker; "taken" when it is another VM; "" when it did not appear
        within `grace` seconds (the request was not done: it may be sent again)."""
        deadline = time.monotonic() + grace
        while self.client.find_vm(vmid) is None:  # the VMID list is live (pmxcfs' vmlist)
            if time.monotonic() > deadline:
                return ""
            time.sleep(0.1)
        try:
            entry = wait_unlocked(self.client, vmid, None, self.client.task_timeout)
            config = self.client.vm_config(entry["node"], vmid)
        except VmGone:
            return ""  # the clone failed and PVE removed it: nothing was made
        mark = parse_marker(config.get("description"))
        ours = config.get("name") == name and bool(mark) and mark["service"] == self.p["service_id"]
        return "ours" if ours else "taken"

    def _wait_adopted(self, vmid: int, name: str) -> None:
        wait_unlocked(self.client, vmid, name, self.client.task_timeout)

    def _node_of(self, vmid: int, default: str) -> str:
        entry = self.client.find_vm(vmid)
        return entry["node"] if entry else default

    def _remove_leftover(self, vmid: int, name: str) -> None:
        with contextlib.suppress(PveApiError, VmGone):
            # Ownership is re-checked there too: only our own half-made clone (its marker) is removed.
            destroy(self.client, vmid, name, 30, self.client.task_timeout,
                    owner=Owner(self.p["service_id"], self.p["owner_tag"]))

    def resolve_ip_conflicts(self, created: list[dict]) -> None:
        """A concurrent run may have claimed an address too: the lower vmid keeps it, we re-claim."""
        if self.p["ip_mode"] != "static" or not created:
            return
        for _ in range(5):
            # Claims of clones still copying are invisible (their config is only `lock: clone`): wait for them
            # before comparing, so every run decides on the same claims (the lower vmid keeps an address).
            self.alloc.wait_claims_visible(self.client.task_timeout)
            self.alloc.refresh()
            lost = self.alloc.conflicts({c["vmid"]: c["ip"] for c in created})
            if not lost:
                return
            for c in created:
                if c["vmid"] in lost:
                    c["ip"] = self.alloc.next_ip()
                    path = f"/nodes/{c['node']}/qemu/{c['vmid']}/config"
                    self.client.retrying(lambda p=path, c=c: self.client.put(
                        p, description=marker(self.p["service_id"], c["ip"])))
        raise PveApiError(0, "could not settle static IP claims after 5 rounds")


def main():
    spec = client_argument_spec()
    spec.update(
        vms={"type": "list", "elements": "dict", "required": True},
        service_id={"type": "str", "required": True},
        owner_tag={"type": "str", "default": "agentkube"},
        template_vmid={"type": "int", "required": True},
        template_node={"type": "str", "required": True},
        target_nodes={"type": "list", "elements": "str", "default": []},
        storage={"type": "str", "default": ""},
        resource_pool={"type": "str", "default": ""},
        full_clone={"type": "bool", "default": True},
        concurrency_per_storage={"type": "int", "default": 4},
        vmid_min={"type": "int", "required": True},
        vmid_max={"type": "int", "required": True},
        ip_mode={"type": "str", "default": "static", "choices": ["static", "dhcp"]},
        ip_pool={"type": "str", "default": ""},
        ip_gateway={"type": "str", "default": ""},
        ip_reserved={"type": "list", "elements": "str", "default": []},
    )
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    p = module.params
    if not p["vms"]:
        module.exit_json(changed=False, created=[])
    if module.check_mode:
        module.exit_json(changed=True, created=[])
    try:
        pool = IpPool(p["ip_pool"], p["ip_gateway"], p["ip_reserved"]) if p["ip_mode"] == "static" else None
        client = client_from_params(p)
        allocator = Allocator(client, p["vmid_min"], p["vmid_max"], pool).refresh()
        cloner = Cloner(client, allocator, p)
    except (ValueError, AllocationError, PveApiError, RuntimeError) as e:
        module.fail_json(msg=f"preparing clones failed: {e}")
    created, errors = [], []
    workers = max(1, p["concurrency_per_storage"]) * 2
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as ex:
        futures = {ex.submit(cloner.clone_one, vm): vm for vm in p["vms"]}
        for fut in concurrent.futures.as_completed(futures):
            try:
                created.append(fut.result())
            except (PveApiError, AllocationError) as e:
                errors.append(str(e))
    created.sort(key=lambda c: c["name"])
    try:
        cloner.resolve_ip_conflicts(created)
    except PveApiError as e:
        errors.append(str(e))
    if errors:
        module.fail_json(msg="; ".join(sorted(errors)), changed=bool(created), created=created)
    module.exit_json(changed=True, created=created)


if __name__ == "__main__":
    main()
