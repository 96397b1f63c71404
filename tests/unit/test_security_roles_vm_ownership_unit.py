"""The VM ownership guard of module_utils (issue 10, item 3): proxmox_vm_config.owned_by, and the start, stop and
destroy of proxmox_vm_ops refusing a VM whose freshly read config is not the service's, before any write."""

from __future__ import annotations

import pytest
from unit_support import load_module_utils

SERVICE = "3f2c8a8e-1d2b-4c55-9a0e-0b4f7b1c9d21"
OTHER = "9d1e7f00-2a3b-4c5d-8e9f-001122334455"


api = load_module_utils("proxmox_api")
cfg = load_module_utils("proxmox_vm_config")
ops = load_module_utils("proxmox_vm_ops")

MINE = f"agentkube;pool-default;svc-{SERVICE};tenant-shop-abc123"


@pytest.mark.parametrize(("config", "owned"), [
    ({"tags": MINE}, True),
    ({"tags": MINE.replace(";", ",")}, True),
    ({"tags": "", "description": f"agentkube: service={SERVICE} ip=10.0.0.61"}, True),  # half-made clone
    # a clone not configured yet carries its template's tags
    ({"tags": "k8s-1-35;template", "description": f"agentkube: service={SERVICE} ip=10.0.0.61"}, True),
    ({"tags": "k8s-1-35;template", "description": f"agentkube: service={OTHER} ip=10.0.0.61"}, False),
    ({"tags": "k8s-1-35;template"}, False),
    ({"description": f"agentkube%3A%20service%3D{SERVICE}%20ip%3Ddhcp"}, True),  # PVE url-encodes descriptions
    ({"tags": f"agentkube;svc-{OTHER}"}, False),
    ({"tags": f"svc-{SERVICE}"}, False),                    # not the agent's owner tag
    ({"tags": "agentkube"}, False),
    ({"tags": f"other;svc-{SERVICE}", "description": f"agentkube: service={SERVICE} ip=dhcp"}, False),
    ({"description": f"agentkube: service={OTHER} ip=dhcp"}, False),
    ({"description": f"agentkube: service={SERVICE}x ip=dhcp"}, False),
    ({}, False),
    ({"tags": MINE, "template": 1}, False),                  # a template is never a worker
    (None, False),
])
def test_owned_by_reads_the_tags_else_the_clone_marker(config, owned):
    assert cfg.owned_by(config, "agentkube", SERVICE) is owned


def test_no_vm_is_owned_by_an_empty_service():
    assert cfg.owned_by({"tags": "agentkube;svc-"}, "agentkube", "") is False


class FakeClient:
    """Answers vm_config/vm_status/find_vm from a dict and records every write; PveClient's retrying runs once."""

    retry_delay = 0.0
    task_timeout = 5

    def __init__(self, config: dict, status: str = "running"):
        self.config = config
        self.status = status
        self.writes: list[tuple[str, str]] = []

    def retrying(self, action, what=""):
        return action()

    def find_vm(self, vmid):
        return {"vmid": vmid, "node": "pve1", "name": "shop-abc123-default-0"}

    def vm_status(self, node, vmid):
        return {"status": self.status}

    def vm_config(self, node, vmid):
        return {"name": "shop-abc123-default-0", **self.config}

    def run_task(self, method, path, node, data=None, timeout=None):
        self.writes.append((method, path))
        if path.endswith(("/status/shutdown", "/status/stop")):
            self.status = "stopped"
        elif path.endswith("/status/start"):
            self.status = "running"
        return "UPID:ok"


OWNER = ops.Owner(SERVICE, "agentkube")
VM = {"vmid": 4101, "node": "pve1", "name": "shop-abc123-default-0"}


@pytest.mark.parametrize("action", ["start", "stop", "destroy"])
def test_every_power_and_delete_refuses_a_foreign_vm_before_any_write(action):
    client = FakeClient({"tags": f"agentkube;pool-default;svc-{OTHER}"}, "stopped" if action == "start" else "running")
    with pytest.raises(ops.NotOwned) as refused:
        if action == "start":
            ops.start(client, VM, 0, 0.0, owner=OWNER)
        elif action == "stop":
            ops.stop(client, VM, 10, owner=OWNER)
        else:
            ops.destroy(client, VM["vmid"], VM["name"], 10, 5, owner=OWNER)
    assert client.writes == []
    message = str(refused.value)
    assert "refusing to touch VM 4101 (shop-abc123-default-0)" in message
    assert f"tags found: agentkube;pool-default;svc-{OTHER}" in message
    assert isinstance(refused.value, api.PveApiError) and not refused.value.missing


def test_a_stopped_foreign_vm_is_not_deleted_either():
    client = FakeClient({"tags": ""}, "stopped")
    with pytest.raises(ops.NotOwned, match="tags found: none"):
        ops.destroy(client, VM["vmid"], VM["name"], 10, 5, owner=OWNER)
    assert client.writes == []


def test_the_services_vm_is_stopped_and_deleted():
    client = FakeClient({"tags": MINE}, "running")
    assert ops.destroy(client, VM["vmid"], VM["name"], 10, 5, owner=OWNER) is True
    assert [m for m, _ in client.writes] == ["POST", "DELETE"]


def test_the_owner_argument_is_required():
    client = FakeClient({"tags": MINE})
    with pytest.raises(TypeError):
        ops.stop(client, VM, 10)  # type: ignore[call-arg]
