"""The worker plays connect only to addresses inside agentkube_worker_networks (the lab sets 127.0.0.0/8): a worker VM
with an address elsewhere fails the job naming it, before its host key is read or anything connects to it."""

from __future__ import annotations

import pytest
from kubeadm_lab_support import REPO, run_playbook

pytestmark = pytest.mark.integration

LOCALHOST = {"all": {"hosts": {"localhost": {"ansible_connection": "local",
                                             "ansible_python_interpreter": "{{ ansible_playbook_python }}"}}}}


def reach(tmp_path, workers: list[dict], networks: list[str]):
    play = [{"hosts": "localhost", "gather_facts": False,
             "tasks": [{"name": "Reach the workers", "ansible.builtin.include_tasks":
                        str(REPO / "playbooks" / "tasks" / "workers_inventory.yml")}]}]
    return run_playbook(tmp_path / "run", play, LOCALHOST, {
        "agentkube_tenant_name": "guard-a1b2c3", "agentkube_tenant": {"nodePools": []},
        "agentkube_workers_to_reach": workers, "agentkube_worker_networks": networks,
        "agentkube_known_hosts_dir": str(tmp_path / "known_hosts"),
        # no Proxmox behind these: reading a host key would fail loudly, so the guard must come first
        "proxmox_vm_api_host": "127.0.0.1", "proxmox_vm_api_port": 9, "proxmox_vm_api_token_id": "x@pve!t",
        "proxmox_vm_api_token_secret": "unused", "proxmox_vm_host_key_timeout": 1})


def test_a_worker_outside_the_allowed_networks_is_refused_naming_it(tmp_path):
    run = reach(tmp_path, [{"name": "guard-a1b2c3-default-0", "vmid": 4100, "node": "pve1", "ip": "10.0.0.60",
                            "status": "running"}], ["127.0.0.0/8"])
    assert run.rc != 0
    assert "VM guard-a1b2c3-default-0 has the address 10.0.0.60, not inside agentkube_worker_networks (127.0.0.0/8)" \
        in run.stdout, run.stdout[-3000:]
    assert "Read the host keys through the guest agents" not in run.stdout  # nothing was asked of anyone
    assert not (tmp_path / "known_hosts").exists()


def test_a_worker_without_an_address_is_refused_too(tmp_path):
    run = reach(tmp_path, [{"name": "guard-a1b2c3-default-0", "vmid": 4100, "node": "pve1", "ip": "",
                            "status": "running"}], ["0.0.0.0/0"])
    assert run.rc != 0 and "has the address none" in run.stdout, run.stdout[-3000:]
