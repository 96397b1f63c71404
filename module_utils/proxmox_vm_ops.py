"""VM operations shared by the proxmox_vm_* modules: wait for a lock to clear, power, delete.

Every asynchronous call is awaited through its UPID; transient errors (config/storage lock timeouts,
`VM is locked`) are retried with backoff by PveClient.retrying.
"""

from __future__ import annotations

import time

from ansible.module_utils.proxmox_api import PveApiError


class VmGone(Exception):
    pass


def locate(client, vmid: int, name: str | None = None) -> dict:
    """The VM's cluster entry (its node may have changed by migration); VmGone if it no longer exists,
    or if the id now belongs to a VM with another name (never act on someone else's VM)."""
    vm = client.find_vm(vmid)
    if vm is None or (name and vm.get("name") != name):
        raise VmGone(vmid)
    return vm


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


def start(client, vm: dict, attempts: int, delay: float) -> bool:
    """Start a stopped VM; a failed start task is retried `attempts` times. True if it was started."""
    base = f"/nodes/{vm['node']}/qemu/{vm['vmid']}"
    status = client.retrying(lambda: client.vm_status(vm["node"], vm["vmid"]))
    if status.get("status") == "running":
        return False
    tries = 0
    while True:
        try:
            client.retrying(lambda: client.run_task("POST", base + "/status/start", vm["node"]))
            return True
        except PveApiError as e:
            tries += 1
            if "already running" in e.message:
                return True
            if tries > attempts:
                raise PveApiError(e.status, f"start of {vm.get('name')} ({vm['vmid']}) failed: {e.message}") from None
            time.sleep(delay * (2 ** (tries - 1)))


def stop(client, vm: dict, shutdown_timeout: int) -> bool:
    """Graceful ACPI shutdown with a timeout, then a hard stop. True if the VM was running."""
    base = f"/nodes/{vm['node']}/qemu/{vm['vmid']}"
    status = client.retrying(lambda: client.vm_status(vm["node"], vm["vmid"]))
    if status.get("status") != "running":
        return False
    try:
        # The task itself gives up at `timeout` (PVE seconds); allow it that long plus the usual task wait.
        client.retrying(lambda: client.run_task(
            "POST", base + "/status/shutdown", vm["node"], {"timeout": shutdown_timeout, "forceStop": 0}))
    except PveApiError:
        # The guest did not power off in time (or the shutdown failed): hard stop.
        client.retrying(lambda: client.run_task("POST", base + "/status/stop", vm["node"]))
    return True


def destroy(client, vmid: int, name: str, shutdown_timeout: int, lock_timeout: float) -> bool:
    """Stop, then delete with purge. A VM that is already gone is success (returns False)."""
    try:
        vm = wait_unlocked(client, vmid, name, lock_timeout)
        stop(client, vm, shutdown_timeout)
        client.retrying(lambda: client.run_task(
            "DELETE", f"/nodes/{vm['node']}/qemu/{vmid}", vm["node"],
            {"purge": 1, "destroy-unreferenced-disks": 1}))
        return True
    except VmGone:
        return False
    except PveApiError as e:
        if e.missing:
            return False
        raise
