"""Jinja filters of the proxmox_vm role: thin wrappers over the collection's module_utils, so the role refuses bad
operator settings before anything is touched, with the rules its modules apply (no logic lives here)."""

from __future__ import annotations

from typing import Any

from ansible_collections.agentkube.kamaji.plugins.module_utils.plain_data import plain
from ansible_collections.agentkube.kamaji.plugins.module_utils.proxmox_vm_options import option_errors


def proxmox_vm_option_errors(options: Any, node_pools: Any = None) -> list[str]:
    """Every problem of the VM options {cpu_type, sockets, balloon, data_disk, extra_nets} as
    'proxmox_vm_<option>: <why>'; the balloon is checked against each node pool's memoryMiB. [] when valid."""
    if not isinstance(options, dict):
        return ["proxmox_vm options: expected a mapping of cpu_type, sockets, balloon, data_disk, extra_nets"]
    pools = node_pools if isinstance(node_pools, list) else []
    return option_errors(plain(options), plain(pools))


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"proxmox_vm_option_errors": proxmox_vm_option_errors}
