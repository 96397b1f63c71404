"""Runs the proxmox_vm role (through ansible-runner) against the fakepve lab, and reads the fake's state.

The fake-state helpers take the FakePve itself or a `Snapshot` of it (same attribute names): a snapshot,
taken in the fake's own thread right after a run, lets a test check that moment later (see `Story`).
"""

from __future__ import annotations

import os
import re
import sys
import threading
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

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


@dataclass
class Snapshot:
    """The fake's VMs (copies), task log and request log at one moment; read like the FakePve."""

    vms: list
    tasklog: list
    requests: list


def snapshot(lab) -> Snapshot:
    """Copy the fake's state in its own thread (consistent, not torn by a request being served)."""
    def take() -> Snapshot:
        fake = lab.fake
        vms = [SimpleNamespace(name=vm.name, vmid=vm.vmid, template=vm.template, lock=vm.lock, status=vm.status,
                               config=dict(vm.config), pending=dict(vm.pending),
                               agent=dict(vm.agent) if vm.agent else None,
                               agent_requests=list(vm.agent_requests))
               for vm in fake.vms]
        return Snapshot(vms, [dict(t) for t in fake.tasklog], list(fake.requests))

    return lab.call(take)


class Story:
    """A tenant's life as named steps run in order, in a background thread, on a lab no other test uses:
    each step gets the results of the steps before it, runs the role and returns what its tests check.
    Tests wait for the step they check with `story[name]`, so the playbook runs are shared by many tests
    and overlap with the tests of other labs. A step that raises stops the story; the tests of it and of
    later steps fail, showing its traceback."""

    def __init__(self, steps: list[tuple[str, Callable[[dict], dict]]]):
        self._steps = steps
        self._done = {name: threading.Event() for name, _ in steps}
        self._results: dict[str, dict] = {}
        self._failure: tuple[str, str] | None = None
        self._thread = threading.Thread(target=self._run, name="proxmox-vm-story", daemon=True)

    def start(self) -> Story:
        self._thread.start()
        return self

    def _run(self) -> None:
        for name, step in self._steps:
            try:
                if self._failure is None:
                    self._results[name] = step(self._results)
            except Exception:  # noqa: BLE001 - reported to the tests of this and later steps
                self._failure = (name, traceback.format_exc())
            self._done[name].set()

    def __getitem__(self, name: str) -> dict:
        if not self._done[name].wait(1800):
            raise TimeoutError(f"story step {name!r} did not finish")
        if name not in self._results:
            failed, trace = self._failure or ("?", "")
            raise RuntimeError(f"story step {failed!r} failed, so {name!r} did not run:\n{trace}")
        return self._results[name]

    def join(self, timeout: float = 1800) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)


def svc_tag(service_id: str) -> str:
    return "svc-" + service_id.lower()


def agent_ipv4(vm) -> str | None:
    """The IPv4 address the lab's guest agent of this VM reports on eth0 (None while it is down)."""
    for iface in ((vm.agent or {}).get("interfaces") or []):
        if iface["name"] == "eth0":
            return next((a["ip-address"] for a in iface["ip-addresses"] if a["ip-address-type"] == "ipv4"), None)
    return None


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
