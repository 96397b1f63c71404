#!/usr/bin/python
"""Read worker VMs' SSH host public keys through the QEMU guest agent, before anything connects to them."""

from __future__ import annotations

import concurrent.futures
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.agentkube.kamaji.plugins.module_utils.proxmox_api import (
    PveApiError,
    client_argument_spec,
    client_from_params,
)
from ansible_collections.agentkube.kamaji.plugins.module_utils.ssh_host_keys import HostKeyError, parse_public_key

DOCUMENTATION = r"""
module: proxmox_vm_host_keys
short_description: Read worker VMs' SSH host public keys through the QEMU guest agent
description:
  - >-
    For each VM, C(GET /nodes/{node}/qemu/{vmid}/agent/file-read) of O(path) (the host key cloud-init generated at
    first boot) until it holds one public key of O(key_type), or O(timeout) seconds have passed. The key arrives over
    the Proxmox API (TLS verified, token authenticated), not from the network the VM is on: pinning it in
    known_hosts before the first SSH connection means a machine answering at the VM's address with another key is
    refused, and nothing (no SSH key, no join token) is sent to it.
  - >-
    Retried while the guest agent is not running yet (the guest boots) and while the file does not exist yet
    (qemu-guest-agent usually answers before cloud-init has generated the host keys).
  - >-
    Needs C(VM.GuestAgent.FileRead) (or C(VM.GuestAgent.Unrestricted)) on the VM on Proxmox VE 9, C(VM.Monitor) on
    Proxmox VE 8 (qemu-server src/PVE/API2/Qemu/Agent.pm file-read); a 403 fails at once naming it.
options:
  vms: {description: "VMs: name, vmid, node", type: list, elements: dict, required: true}
  path: {description: The host public key file in the guest., type: str, default: /etc/ssh/ssh_host_ed25519_key.pub}
  key_type: {description: The key type the file must hold., type: str, default: ssh-ed25519}
  timeout: {description: Seconds to wait for each VM's key., type: int, default: 300}
  concurrency: {description: VMs read at once., type: int, default: 8}
extends_documentation_fragment: [agentkube.kamaji.proxmox_api]
author: AgentKube
"""

RETURN = r"""
host_keys:
  description: VM name -> its host public key (C(<type> <base64>), the comment dropped).
  type: dict
  returned: success
"""

# The guest is still booting: its agent is not up, or cloud-init has not written the key yet.
NOT_YET = ("guest agent is not running", "not running", "failed to open file", "no such file", "got timeout")


def read_host_key(client, vm: dict, path: str, key_type: str, timeout: float, sleep=time.sleep) -> str:
    """The VM's host public key, waiting for its guest to boot; PveApiError (403, other errors) at once,
    HostKeyError for content that is not one key of `key_type`, TimeoutError when the key never came."""
    deadline = time.monotonic() + timeout
    delay, last = 0.2, "no answer yet"
    while True:
        try:
            answer = client.get(f"/nodes/{vm['node']}/qemu/{vm['vmid']}/agent/file-read", file=path)
        except PveApiError as e:
            if e.status == 403:
                raise PveApiError(403, f"{e.message}: reading the host key through the guest agent needs "
                                       "VM.GuestAgent.FileRead on Proxmox VE 9 (VM.Monitor on 8)") from None
            if not any(m in e.message.lower() for m in NOT_YET):
                raise
            last = e.message
        else:
            content = (answer or {}).get("content") or ""
            if content.strip():
                return parse_public_key(content, key_type)
            last = f"{path} is empty"
        if time.monotonic() > deadline:
            raise TimeoutError(f"no host key after {timeout:g}s ({last})")
        sleep(delay)
        delay = min(delay * 1.5, 3.0)


def main():
    spec = client_argument_spec()
    spec.update(
        vms={"type": "list", "elements": "dict", "required": True},
        path={"type": "str", "default": "/etc/ssh/ssh_host_ed25519_key.pub"},
        key_type={"type": "str", "default": "ssh-ed25519"},
        timeout={"type": "int", "default": 300},
        concurrency={"type": "int", "default": 8},
    )
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    p = module.params
    try:
        client = client_from_params(p)
    except RuntimeError as e:
        module.fail_json(msg=str(e))

    keys, errors = {}, []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, p["concurrency"])) as ex:
        futures = {ex.submit(read_host_key, client, vm, p["path"], p["key_type"], p["timeout"]): vm
                   for vm in p["vms"]}
        for fut in concurrent.futures.as_completed(futures):
            vm = futures[fut]
            try:
                keys[vm["name"]] = fut.result()
            except (PveApiError, HostKeyError, TimeoutError) as e:
                errors.append(f"VM {vm['name']} ({vm['vmid']}): host key {p['path']}: {e}")
    if errors:
        module.fail_json(msg="; ".join(sorted(errors)), host_keys=keys)
    module.exit_json(changed=False, host_keys=keys)


if __name__ == "__main__":
    main()
