"""VM operations shared by the proxmox_vm_* modules: wait for a lock to clear, power, delete.

Every asynchronous call is awaited through its UPID; transient errors (config/storage lock timeouts,
`VM is locked`) are retried with backoff by PveClient.retrying.

Second line of defence: whatever list of VMs a module was given (a role's internal facts could be overridden),
every start, shutdown, stop and delete first re-reads that VM's config from Proxmox and refuses (NotOwned,
naming the VMID and the tags found) unless it carries the owner and service tags of the service the module
acts for (proxmox_vm_config.owned_by).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ansible_collections.agentkube.kamaji.plugins.module_utils.proxmox_api import PveApiError
from ansible_collections.agentkube.kamaji.plugins.module_utils.proxmox_vm_config import owned_by, split_tags


class VmGone(Exception):
    pass


@dataclass(frozen=True)
class Owner:
    """Who a module acts for: the Fulcrum service id and the agent's owner tag."""

    service_id: str
    tag: str = "agentkube"


class NotOwned(PveApiError):
    """A VM whose own config does not mark it as the service's: nothing is done to it."""

    def __init__(self, vmid, name, config: dict, owner: Owner):
        tags = ";".join(split_tags(config.get("tags"))) or "none"
        super().__init__(0, f"refusing to touch VM {vmid} ({name}): it is not owned by service {owner.service_id} "
                            f"(tags found: {tags}; expected {owner.tag} and the service's svc- tag)")
        self.vmid = vmid


def require_owned(client, vm: dict, owner: Owner) -> dict:
    """Re-read the VM's config from Proxmox and return it when the VM is the service's; NotOwned otherwise,
    VmGone when it no longer exists."""
    try:
        config = client.retrying(lambda: client.vm_config(vm["node"], vm["vmid"]))
    except PveApiError as e:
        if e.missing:
            raise VmGone(vm["vmid"]) from None
        raise
    if not owned_by(config, owner.tag, owner.service_id):
        raise NotOwned(vm["vmid"], vm.get("name") or config.get("name") or "?", config or {}, owner)
    return config


def locate(client, vmid: int, name: str | None = None) -> dict:
    """The VM's cluster entry (its node may have changed by migration, its `lock` is live) with its name read from
    its own config; VmGone if it no longer exists, or if the id now belongs to a VM with another name (never act
    on someone else's VM). /cluster/resources serves only as the list of VMIDs and nodes: its `name` and `status`
    come from pvestatd's broadcast, up to a cycle old (pve-manager PVE/API2Tools.pm extract_vm_stats).
    A clone still copying its disks has no name yet (its config is only `lock: clone`): it is returned with its
    lock and no name, for the caller to wait on."""
    vm = client.find_vm(vmid)
    if vm is None:
        raise VmGone(vmid)
    try:
        config = client.retrying(lambda: client.vm_config(vm["node"], vmid))
    except PveApiError as e:
        if e.missing:
            raise VmGone(vmid) from None
        raise
    own_name = config.get("name")
    if own_name is None and config.get("lock"):
        return dict(vm, name=None, lock=config["lock"])
    if name and own_name != name:
        raise VmGone(vmid)
    return dict(vm, name=own_name, lock=config.get("lock") or vm.get("lock") or "")


def wait_unlocked(client, vmid: int, name: str | None, timeout: float) -> dict:
    """Poll until the VM carries no lock (e.g. `clone` while its clone task runs); returns its entry."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        vm = locate(client, vmid, name)
        if not vm.get("lock"):
            return vm
        if time.monotonic() > deadline:
            raise PveApiError(0, f"VM {name or vmid} ({vmid}) still locked ({vm['lock']}) after {timeout}s")
        time.sleep(delay)
        delay = min(delay * 1.5, 2.0)


def wait_power(client, vm: dict, want: str, timeout: float) -> dict:
    """Poll status/current until the VM is `want` (running|stopped); returns that status, or the last one seen
    after `timeout` seconds. An HA-managed VM's start and stop tasks (hastart/hastop) end as soon as the request
    is queued; the HA manager changes the state later (qemu-server src/PVE/API2/Qemu.pm vm_start/vm_stop,
    pve-ha-manager), so the task's end says nothing about the VM."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        status = client.retrying(lambda: client.vm_status(vm["node"], vm["vmid"]))
        if status.get("status") == want or time.monotonic() > deadline:
            return status
        time.sleep(delay)
        delay = min(delay * 1.5, 2.0)


def ha_managed(status: dict) -> bool:
    return bool((status.get("ha") or {}).get("managed"))


def power_change_needed(client, vm: dict, owner: Owner, *, running: bool) -> bool:
    """Whether the VM's power state (status/current, live) differs from the one wanted; when it does, the VM must
    be the service's (NotOwned otherwise) before anything is done to it. Read only: check mode predicts with it."""
    status = client.retrying(lambda: client.vm_status(vm["node"], vm["vmid"]))
    if (status.get("status") == "running") == running:
        return False
    require_owned(client, vm, owner)
    return True


def start(client, vm: dict, attempts: int, delay: float, *, owner: Owner, state_timeout: float = 300) -> bool:
    """Start a stopped VM of the service and wait until status/current says running (an HA-managed VM's start
    is a request the HA manager carries out later); a failed start task is retried `attempts` times. True if it
    was started."""
    base = f"/nodes/{vm['node']}/qemu/{vm['vmid']}"
    if not power_change_needed(client, vm, owner, running=True):
        return False
    tries = 0
    while True:
        try:
            client.retrying(lambda: client.run_task("POST", base + "/status/start", vm["node"]))
        except PveApiError as e:
            tries += 1
            if "already running" in e.message:
                return True
            if tries > attempts:
                raise PveApiError(e.status, f"start of {vm.get('name')} ({vm['vmid']}) failed: {e.message}") from None
            time.sleep(delay * (2 ** (tries - 1)))
            continue
        now = wait_power(client, vm, "running", state_timeout)
        if now.get("status") != "running":
            raise PveApiError(0, f"start of {vm.get('name')} ({vm['vmid']}): still {now.get('status')} after "
                                 f"{state_timeout}s" + (" (HA-managed: see ha-manager status)"
                                                        if ha_managed(now) else ""))
        return True


def stop(client, vm: dict, shutdown_timeout: int, *, owner: Owner, state_timeout: float = 300) -> bool:
    """Graceful ACPI shutdown with a timeout, then a hard stop, of a VM of the service, each followed by a wait
    for status/current to say stopped (HA-managed VMs stop when the HA manager gets to it). True if the VM was
    running."""
    base = f"/nodes/{vm['node']}/qemu/{vm['vmid']}"
    if not power_change_needed(client, vm, owner, running=False):
        return False
    try:
        # The task itself gives up at `timeout` (PVE seconds); allow it that long plus the usual task wait.
        client.retrying(lambda: client.run_task(
            "POST", base + "/status/shutdown", vm["node"], {"timeout": shutdown_timeout, "forceStop": 0}))
        stopped = wait_power(client, vm, "stopped", shutdown_timeout + state_timeout).get("status") == "stopped"
    except PveApiError:
        stopped = False
    if not stopped:
        # The guest did not power off in time (or the shutdown failed): hard stop, still only the service's VM.
        require_owned(client, vm, owner)
        client.retrying(lambda: client.run_task("POST", base + "/status/stop", vm["node"]))
        now = wait_power(client, vm, "stopped", state_timeout)
        if now.get("status") != "stopped":
            raise PveApiError(0, f"stop of {vm.get('name')} ({vm['vmid']}): still {now.get('status')} after "
                                 f"{state_timeout}s")
    return True


def destroy(client, vmid: int, name: str, shutdown_timeout: int, lock_timeout: float, *, owner: Owner) -> bool:
    """Stop (and wait until status/current says stopped), then delete with purge, a VM of the service. purge=1
    also takes an HA-managed VM out of the HA resources, inside the destroy task before its config goes
    (qemu-server src/PVE/API2/Qemu.pm destroy_vm: without purge an HA resource cannot be destroyed; Sys.Console
    on / for the HA API is not needed). A VM that is already gone is success (returns False); one that is not the
    service's raises NotOwned before anything is done to it."""
    def delete() -> None:
        vm = wait_unlocked(client, vmid, name, lock_timeout)
        stop(client, vm, shutdown_timeout, owner=owner)  # checks ownership itself when the VM runs
        require_owned(client, vm, owner)
        client.retrying(lambda: client.run_task(
            "DELETE", f"/nodes/{vm['node']}/qemu/{vmid}", vm["node"],
            {"purge": 1, "destroy-unreferenced-disks": 1}))

    return unless_gone(delete)


def would_destroy(client, vmid: int, name: str, *, owner: Owner) -> bool:
    """destroy's prediction for check mode, read only: True when the VM exists under its name and is the
    service's (NotOwned when it is not, as destroy would raise); False when it is already gone."""
    return unless_gone(lambda: require_owned(client, locate(client, vmid, name), owner))


def unless_gone(action) -> bool:
    """Run action(): True when it ran, False when the VM was already gone (destroy and its prediction agree)."""
    try:
        action()
        return True
    except VmGone:
        return False
    except PveApiError as e:
        if e.missing:
            return False
        raise
