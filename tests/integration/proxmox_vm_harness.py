"""Runs the proxmox_vm role (through ansible-runner) against the fakepve lab, and reads the fake's state."""

from __future__ import annotations

import os
import re
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import ansible_runner
import yaml

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = "tests/integration/playbooks/proxmox_vm.yml"


def pools(*specs: tuple[str, int], cores: int = 2, memory: int = 2048, disk: int = 20) -> list[dict]:
    return [{"name": n, "count": c, "cores": cores, "memoryMiB": memory, "diskGiB": disk} for n, c in specs]


@dataclass
class RoleRun:
    rc: int
    status: str
    changed: int
    nodes: list[dict]
    to_remove: list[dict]
    stdout: str
    artifacts: Path


@dataclass
class Tenant:
    """One service's worker VMs: runs the role with its identity against a PveLab."""

    lab: object
    workdir: Path
    name: str
    service_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    version: str = "v1.35.7"
    settings: dict = field(default_factory=dict)
    runs: int = 0

    def inventory(self) -> Path:
        inv = self.workdir / "inventory"
        (inv / "group_vars").mkdir(parents=True, exist_ok=True)
        (inv / "hosts.yml").write_text("all:\n  hosts:\n    localhost:\n")
        gv = dict(self.lab.group_vars(), **self.settings)
        path = inv / "group_vars" / "all.yml"
        path.write_text(yaml.safe_dump(gv))
        path.chmod(0o600)
        return inv

    def run(self, node_pools: list[dict] | None = None, state: str = "present", verbosity: int = 0,
            **extra) -> RoleRun:
        self.runs += 1
        extravars = {
            "agentkube_tenant_name": self.name,
            "agentkube_service": {"id": self.service_id, "name": self.name},
            "agentkube_tenant": {"kubernetesVersion": self.version, "nodePools": node_pools or []},
            "proxmox_vm_state": state,
            **extra,
        }
        private = self.workdir / f"runner-{self.runs}"
        private.mkdir(parents=True, exist_ok=True)
        env = {
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "ANSIBLE_PIPELINING": "True", "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        }
        r = ansible_runner.run(
            private_data_dir=str(private),
            project_dir=str(REPO),
            playbook=PLAYBOOK,
            inventory=str(self.inventory()),
            extravars=extravars,
            envvars=env,
            quiet=True,
            verbosity=verbosity,
        )
        stdout = r.stdout.read() if r.stdout else ""
        data = {"nodes": [], "to_remove": []}
        for event in r.events:
            if event.get("event") == "playbook_on_stats":
                data = (event["event_data"].get("artifact_data") or {}).get("proxmox_vm_test_result", data)
        changed = sum((r.stats or {}).get("changed", {}).values()) if r.stats else -1
        return RoleRun(r.rc, r.status, changed, data["nodes"], data["to_remove"], stdout, private / "artifacts")


# ------------------------------------------------------------------ fake state


def svc_tag(service_id: str) -> str:
    return "svc-" + service_id.lower()


def tenant_vms(fake, service_id: str) -> list:
    return [vm for vm in list(fake.vms) if svc_tag(service_id) in str(vm.config.get("tags", "")).split(";")]


def ip_of(vm) -> str | None:
    value = vm.pending.get("ipconfig0") or vm.config.get("ipconfig0") or ""
    m = re.search(r"ip=([0-9.]+)/", str(value))
    return m.group(1) if m else None


def assert_clean_cluster(fake, expected: dict[str, list[str]], vmid_range=(4100, 4999)) -> None:
    """Exactly the expected VM names per service; no duplicates, no orphans, no address used twice."""
    for service_id, names in expected.items():
        got = sorted(vm.name for vm in tenant_vms(fake, service_id))
        assert got == sorted(names), f"service {service_id}: {got} != {sorted(names)}"
    workers = [vm for vm in list(fake.vms) if not vm.template]
    orphans = [vm.name for vm in workers if vmid_range[0] <= vm.vmid <= vmid_range[1]
               and "agentkube" not in str(vm.config.get("tags", ""))]
    assert not orphans, f"orphans (untagged VMs in the range): {orphans}"
    assert not [vm.name for vm in workers if vm.lock], "VMs left locked"
    ips = [ip_of(vm) for vm in workers if ip_of(vm)]
    assert len(ips) == len(set(ips)), f"an address is used twice: {sorted(ips)}"
    names = [vm.name for vm in workers]
    assert len(names) == len(set(names)), f"duplicate VM names: {sorted(names)}"


def writes_to(fake, vmids: set[int], since: int) -> list[tuple[str, str]]:
    """Write requests (POST/PUT/DELETE) made to these VMs after request number `since`."""
    out = []
    for method, path, _body in fake.requests[since:]:
        m = re.search(r"/qemu/(\d+)(/|$)", path)
        if method != "GET" and m and int(m.group(1)) in vmids and not path.endswith("/clone"):
            out.append((method, path))
    return out


def locked_touches(fake) -> list[str]:
    """Tasks that failed because they touched a VM still being cloned."""
    return [t["upid"] for t in list(fake.tasklog) if "locked (clone)" in str(t.get("exitstatus", ""))]
