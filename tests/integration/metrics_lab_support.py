"""A metrics lab for tests and bench/bench_metrics.py: the Fulcrum emulator (shipped catalog), the Kamaji
parent cluster emulator and the fakepve lab, started directly (not through agentkube_lab.lab), filled with
tenants through the emulators' Python APIs, and an inventory that points playbooks/metrics.yml at them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agentkube.core.settings import Settings, load_settings
from agentkube_lab.certs import LabCA
from agentkube_lab.fulcrum_catalog import Catalog, register_catalog
from agentkube_lab.fulcrum_emulator import FulcrumEmulator
from agentkube_lab.kube_emulator import KubeEmulator
from agentkube_lab.pve_lab import VM_STORAGE, PveLab

NAMESPACE = "kamaji-tenants"
TCP_API = "kamaji.clastix.io/v1alpha1"
GiB = 1024**3
SPEC = {"kubernetesVersion": "v1.35.7", "nodePools": [{"name": "default", "count": 1}]}


@dataclass
class Tenant:
    name: str
    service_id: str
    vm_names: list[str] = field(default_factory=list)
    node_names: list[str] = field(default_factory=list)

    @property
    def instance_id(self) -> str:
        return f"{NAMESPACE}/{self.name}"


class MetricsLab:
    def __init__(self, state_dir: Path, *, proxmox: bool = True, groups: int = 1,
                 extra_service_types: list[dict] | None = None):
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.ca = LabCA(self.state_dir / "ca")
        self.fulcrum = FulcrumEmulator(cert=self.ca.issue("fulcrum"))
        self.kube = KubeEmulator(self.state_dir / "kube", ready_delay=0.0)
        self.pve = PveLab(self.state_dir / "pve") if proxmox else None
        self.catalog: Catalog | None = None
        self.groups = groups
        self.extra_service_types = list(extra_service_types or [])
        self.tenants: dict[str, Tenant] = {}
        self._next_vmid = 5000

    def start(self) -> MetricsLab:
        self.fulcrum.start()
        self.catalog = register_catalog(self.fulcrum, groups=self.groups,
                                        extra_service_types=self.extra_service_types)
        self.kube.start()
        self.kube.put_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        if self.pve is not None:
            self.pve.start()
        self._write_files()
        return self

    def stop(self) -> None:
        if self.pve is not None:
            self.pve.stop()
        self.kube.stop()
        self.fulcrum.stop()

    def __enter__(self) -> MetricsLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- files the agent uses
    @property
    def inventory(self) -> Path:
        return self.state_dir / "inventory" / "hosts.yml"

    def _write_files(self) -> None:
        assert self.catalog is not None
        token_file = self.state_dir / "agent-token"
        token_file.write_text(self.catalog.agent_token)
        token_file.chmod(0o600)
        kubeconfig = self.kube.write_kubeconfig(self.state_dir / "parent.kubeconfig")
        group_vars: dict[str, Any] = {"kamaji_tcp_kubeconfig": str(kubeconfig), "kamaji_tcp_namespace": NAMESPACE,
                                      "tenant_metrics_tenant_timeout": 5}
        if self.pve is not None:
            group_vars.update(self.pve.group_vars())
        (self.inventory.parent / "group_vars").mkdir(parents=True, exist_ok=True)
        self.inventory.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": {
            "ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}"}}}}))
        gv = self.inventory.parent / "group_vars" / "all.yml"
        gv.write_text(yaml.safe_dump(group_vars))
        gv.chmod(0o600)

    def settings(self, **sections: dict[str, Any]) -> Settings:
        cfg: dict[str, Any] = {
            "fulcrum": {"url": self.fulcrum.url, "token_file": str(self.state_dir / "agent-token"),
                        "ca_file": str(self.ca.ca_file), "retry_attempts": 3, "retry_max_s": 0.2, "timeout_s": 5},
            "agent": {"state_dir": str(self.state_dir / "agent"), "heartbeat_interval_s": 0.5,
                      "poll_interval_s": 0.2, "shutdown_grace_s": 30},
            "runner": {"inventory": str(self.inventory)},
            "health": {"port": 0},
        }
        for name, values in sections.items():
            cfg.setdefault(name, {}).update(values)
        return load_settings(overrides=cfg)

    # ---------------------------------------------------------------- tenants
    def add_tenant(self, name: str, *, vms: int = 3, ready_nodes: int | None = None, pods: int = 2,
                   vm_stats: dict[str, Any] | None = None, service: bool = True) -> Tenant:
        """A tenant as the create playbook leaves it: a Fulcrum service whose agentInstanceId is
        `<namespace>/<name>`, a TCP, `vms` worker VMs tagged like proxmox_vm tags them (running), and as
        many tenant Nodes (the first `ready_nodes` Ready) with `pods` Running pods and one Pending."""
        service_id = self.add_service(name, instance_id=f"{NAMESPACE}/{name}")["id"] if service else ""
        tenant = Tenant(name, service_id)
        self.kube.put_object({
            "apiVersion": TCP_API, "kind": "TenantControlPlane", "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"dataStore": "default", "kubernetes": {"version": "v1.35.0", "kubelet": {"cgroupfs": "systemd"}},
                     "controlPlane": {"deployment": {"replicas": 2}, "service": {"serviceType": "ClusterIP"}},
                     # Kamaji's CEL rules read self.networkProfile: without it they error, as in a real apiserver
                     "networkProfile": {"port": 6443}},
        })
        tenant.vm_names = [f"{name}-default-{i}" for i in range(vms)]
        if self.pve is not None:
            for vm_name in tenant.vm_names:
                self.add_vm(vm_name, name, service_id, **(vm_stats or {}))
        tenant.node_names = list(tenant.vm_names)
        self.tenants[name] = tenant
        self._pending_nodes = getattr(self, "_pending_nodes", {})
        self._pending_nodes[name] = (ready_nodes if ready_nodes is not None else vms, pods)
        return tenant

    def add_service(self, name: str, *, group: int = 0, service_type_id: str | None = None,
                    instance_id: str | None = None) -> dict:
        """A Started Fulcrum service of this agent, as completing its create job leaves it."""
        assert self.catalog is not None
        svc = self.fulcrum.create_service(name, service_type_id or self.catalog.service_type_id,
                                          self.catalog.group_ids[group], self.catalog.agent_id, SPEC)
        state = self.fulcrum.state
        with state.lock:
            state.services[svc["id"]].agent_instance_id = instance_id
            state.services[svc["id"]].status = "Started"
            for job in state.jobs.values():
                if job.service_id == svc["id"] and job.status == "Pending":
                    job.status = "Completed"
        return svc

    def add_vm(self, name: str, tenant: str, service_id: str, *, status: str = "running", **stats: Any):
        assert self.pve is not None
        vmid = self._next_vmid
        self._next_vmid += 1
        fake = self.pve.fake
        svc_tag = f";svc-{service_id}" if service_id else ""

        def add():
            vm = fake.add_vm(vmid, name, node=self.pve.nodes[vmid % len(self.pve.nodes)], status=status, config={
                "scsi0": f"{VM_STORAGE}:vm-{vmid}-disk-0,size=20G", "cores": 2, "memory": 4096,
                "tags": f"agentkube{svc_tag};tenant-{tenant};pool-default"})
            vm.started_at = time.time() if status == "running" else None
            vm.stats.update(stats)
            return vm

        return self.pve.call(add)

    def set_vm_stats(self, name: str, **stats: Any) -> None:
        assert self.pve is not None

        def update():
            next(vm for vm in self.pve.fake.vms if vm.name == name).stats.update(stats)

        self.pve.call(update)

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Wait until every TCP is Ready with its tenant API up, then register the tenants' nodes and pods."""
        deadline = time.monotonic() + timeout
        pending = dict(getattr(self, "_pending_nodes", {}))
        while pending:
            for name in list(pending):
                api = self.kube.tenant(NAMESPACE, name)
                tcp = self.kube.get(TCP_API, "TenantControlPlane", NAMESPACE, name) or {}
                status = ((tcp.get("status") or {}).get("kubernetesResources") or {}).get("version", {})
                if api is None or not api.running or status.get("status") != "Ready":
                    continue
                ready, pods = pending.pop(name)
                for i, node in enumerate(self.tenants[name].node_names):
                    api.add_node(node, ready=i < ready)
                    for p in range(pods):
                        api.add_pod(f"app-{node}-{p}", node_name=node)
                    api.add_pod(f"pending-{node}", node_name=node, phase="Pending")
            if pending and time.monotonic() > deadline:
                raise AssertionError(f"tenants not Ready after {timeout}s: {sorted(pending)[:5]}")
            if pending:
                time.sleep(0.05)
        self._pending_nodes = {}

    # ---------------------------------------------------------------- counters
    def proxmox_requests(self) -> int:
        return len(self.pve.fake.requests) if self.pve is not None else 0

    def parent_requests(self) -> int:
        return sum(self.kube.request_count.values())
