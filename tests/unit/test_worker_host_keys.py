"""Pinning a worker's host key: the key read through the guest agent (proxmox_vm_host_keys), checked before it can
reach known_hosts, and the address guard the worker plays apply (agentkube_address_in)."""

from __future__ import annotations

import base64
import re
import struct
import subprocess

import pytest
from unit_support import load_module, load_module_utils, playbook_filters

keys = load_module_utils("ssh_host_keys")
host_keys_module = load_module("proxmox_vm_host_keys")
PveApiError = load_module_utils("proxmox_api").PveApiError

VM = {"name": "t-a1b2c3-default-0", "vmid": 4101, "node": "pve1"}


def blob(kind: str, payload: bytes = b"\x00" * 32) -> str:
    data = struct.pack(">I", len(kind)) + kind.encode() + struct.pack(">I", len(payload)) + payload
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def real_key(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("key") / "host"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "root@worker", "-f", str(path)], check=True)
    return (path.parent / "host.pub").read_text()


def test_a_pub_file_gives_its_key_without_the_comment(real_key):
    parsed = keys.parse_public_key(real_key, "ssh-ed25519")
    assert parsed == " ".join(real_key.split()[:2])


@pytest.mark.parametrize("content, why", [
    ("", "found 0 lines"),
    (f"ssh-ed25519 {blob('ssh-ed25519')}\nssh-ed25519 {blob('ssh-ed25519')}\n", "found 2 lines"),
    (f"ssh-rsa {blob('ssh-rsa')}", "not a ssh-ed25519 public key"),
    ("ssh-ed25519 not*base64", "not valid base64"),
    (f"ssh-ed25519 {blob('ssh-rsa')}", "of type 'ssh-rsa'"),
    ("ssh-ed25519", "not a ssh-ed25519 public key"),
])
def test_anything_but_one_key_of_the_type_is_refused(content, why):
    with pytest.raises(keys.HostKeyError, match=why):
        keys.parse_public_key(content, "ssh-ed25519")


class AgentClient:
    """Answers file-read as a booting guest does: agent down, then the file missing, then the key."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = []

    def get(self, path, **params):
        self.calls.append((path, params))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_the_key_is_waited_for_while_the_guest_boots(real_key):
    client = AgentClient([
        PveApiError(500, "QEMU guest agent is not running"),
        PveApiError(500, "Agent error: failed to open file '/etc/ssh/ssh_host_ed25519_key.pub' (mode: 'r'): "
                         "No such file or directory"),
        {"content": real_key},
    ])
    key = host_keys_module.read_host_key(client, VM, "/etc/ssh/ssh_host_ed25519_key.pub", "ssh-ed25519", 30,
                                         sleep=lambda s: None)
    assert key == " ".join(real_key.split()[:2])
    assert client.calls[-1] == ("/nodes/pve1/qemu/4101/agent/file-read",
                                {"file": "/etc/ssh/ssh_host_ed25519_key.pub"})


def test_a_missing_privilege_fails_at_once_naming_it():
    client = AgentClient([PveApiError(403, "Permission check failed (/vms/4101, VM.GuestAgent.FileRead)")])
    with pytest.raises(PveApiError, match=re.escape("VM.GuestAgent.FileRead on Proxmox VE 9 (VM.Monitor on 8)")):
        host_keys_module.read_host_key(client, VM, "/x", "ssh-ed25519", 30, sleep=lambda s: None)
    assert len(client.calls) == 1


def test_a_key_that_never_comes_times_out_saying_the_last_error():
    client = AgentClient([PveApiError(500, "QEMU guest agent is not running")])
    with pytest.raises(TimeoutError, match="guest agent is not running"):
        host_keys_module.read_host_key(client, VM, "/x", "ssh-ed25519", 0, sleep=lambda s: None)


def test_other_errors_are_not_retried():
    client = AgentClient([PveApiError(500, "No QEMU guest agent configured")])
    with pytest.raises(PveApiError, match="No QEMU guest agent configured"):
        host_keys_module.read_host_key(client, VM, "/x", "ssh-ed25519", 30, sleep=lambda s: None)


@pytest.mark.parametrize("address, networks, inside", [
    ("127.0.10.60", ["127.0.0.0/8"], True),
    ("10.0.0.60", ["127.0.0.0/8"], False),
    ("192.168.1.5", ["10.0.0.0/24", "192.168.1.0/24"], True),
    ("", ["0.0.0.0/0"], False),
    ("not-an-ip; rm -rf /", ["0.0.0.0/0"], False),
    ("10.0.0.7", "10.0.0.0/24", True),
])
def test_workers_are_reached_only_inside_the_allowed_networks(address, networks, inside):
    assert playbook_filters("agentkube_filters_hostkeys")["agentkube_address_in"](address, networks) is inside


def test_a_bad_network_is_an_error_naming_the_setting():
    from ansible.errors import AnsibleFilterError

    with pytest.raises(AnsibleFilterError, match="agentkube_worker_networks"):
        playbook_filters("agentkube_filters_hostkeys2")["agentkube_address_in"]("10.0.0.1", ["10.0.0.0/33"])
