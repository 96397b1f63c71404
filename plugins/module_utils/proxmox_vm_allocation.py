"""VMID and static IP allocation from the operator's ranges, with Proxmox itself as the record.

Used addresses are computed from the configs of ALL VMs of the cluster (any tenant, any owner): their
ipconfigN and the `agentkube: ... ip=` claim our clones carry in their description from the moment they
exist. Deleting a VM frees its address. Within one run a lock keeps parallel clones from getting the
same VMID or address; across runs, a VMID collision is retried with a fresh id by the caller and an
address claimed twice is detected after cloning (the lower vmid keeps it).
"""

from __future__ import annotations

import concurrent.futures
import threading
import time

from ansible_collections.agentkube.kamaji.plugins.module_utils.proxmox_api import PveApiError
from ansible_collections.agentkube.kamaji.plugins.module_utils.proxmox_vm_config import IpPool, claimed_ips


class AllocationError(Exception):
    pass


class Allocator:
    def __init__(self, client, vmid_min: int, vmid_max: int, ip_pool: IpPool | None = None):
        if vmid_min < 100 or vmid_max < vmid_min:
            raise AllocationError(f"proxmox_vm_vmid_min/max ({vmid_min}..{vmid_max}) is not a valid range >= 100")
        self.client = client
        self.vmid_min, self.vmid_max = vmid_min, vmid_max
        self.ip_pool = ip_pool
        self._lock = threading.Lock()
        self.used_vmids: set[int] = set()
        self.ip_claims: dict[str, set[int]] = {}  # address -> vmids claiming it
        self._handed_vmids: set[int] = set()
        self._handed_ips: set[str] = set()

    def refresh(self) -> Allocator:
        vms = self.client.cluster_vms()

        def config_of(vm):
            try:
                return int(vm["vmid"]), self.client.vm_config(vm["node"], vm["vmid"])
            except PveApiError as e:
                if e.missing:
                    return int(vm["vmid"]), {}
                raise

        claims: dict[str, set[int]] = {}
        if self.ip_pool is not None:
            with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
                for vmid, config in pool.map(config_of, vms):
                    for ip in claimed_ips(config):
                        claims.setdefault(ip, set()).add(vmid)
        with self._lock:
            self.used_vmids = {int(v["vmid"]) for v in vms}
            self.ip_claims = claims
        return self

    def wait_claims_visible(self, timeout: float) -> None:
        """Wait (up to `timeout` seconds) until no VM of the cluster is a clone still copying its disks: its config
        holds only `lock: clone` until then (qemu-server src/PVE/API2/Qemu.pm clone_vm), so its address claim
        cannot be seen. The lock is live in /cluster/resources; the config tells whether the claim is written."""
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            hidden = []
            for vm in self.client.cluster_vms():
                if vm.get("lock") != "clone":
                    continue
                try:
                    config = self.client.vm_config(vm["node"], vm["vmid"])
                except PveApiError as e:
                    if e.missing:
                        continue
                    raise
                if not config.get("name"):
                    hidden.append(int(vm["vmid"]))
            if not hidden or time.monotonic() > deadline:
                return
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)

    def next_vmid(self) -> int:
        with self._lock:
            for vmid in range(self.vmid_min, self.vmid_max + 1):
                if vmid not in self.used_vmids and vmid not in self._handed_vmids:
                    self._handed_vmids.add(vmid)
                    return vmid
        raise AllocationError(f"no free VMID left in proxmox_vm_vmid_min..max ({self.vmid_min}..{self.vmid_max})")

    def mark_vmid_taken(self, vmid: int) -> None:
        with self._lock:
            self.used_vmids.add(vmid)

    def next_ip(self) -> str:
        if self.ip_pool is None:
            return ""
        with self._lock:
            ip = self.ip_pool.first_free(set(self.ip_claims) | self._handed_ips)
            if ip is None:
                raise AllocationError(f"the static IP pool is exhausted ({self.ip_pool.size()} addresses)")
            self._handed_ips.add(ip)
            return ip

    def conflicts(self, mine: dict[int, str]) -> dict[int, str]:
        """Of {vmid: ip} just claimed, those another VM with a lower vmid claims too (refresh() first)."""
        lost = {}
        for vmid, ip in mine.items():
            others = self.ip_claims.get(ip, set()) - {vmid}
            if any(o < vmid for o in others):
                lost[vmid] = ip
        return lost
