"""Tenant metrics, pure: the metrics playbook's structured result becomes Fulcrum metric entries.

The playbook (playbooks/metrics.yml, role tenant_metrics) returns under `agentkube_result`:

    namespace: kamaji-tenants
    proxmox: {ok, error, [configured], sampledAt, vms: [{vmid, name, node, status, tenant, serviceId,
                                          cpu, maxcpu, mem, maxmem, disk, maxdisk, netin, netout}]}
    kamaji:  {ok, error, [configured], tcps: [{namespace, name, status, replicas, readyReplicas}]}
    tenants: [{namespace, name, queried, reachable, error, nodes: [{name, ready}], podsRunning}]
             (queried false: the control plane is not Ready, e.g. Sleeping; not a failure)

Entries are posted by agentInstanceId (`<namespace>/<tcp name>`, what the create playbook reports);
resourceId is the VM or node name, or the TCP name for cluster-level values. Metric type names match
agentkube/data/fulcrum/metric-types.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

VM_CPU = "vm.cpu.usage"
VM_MEMORY = "vm.memory.usage"
VM_DISK = "vm.disk.usage"
VM_NETWORK = "vm.network.throughput"
TCP_STATUS = "tcp.status"
TCP_REPLICAS_READY = "tcp.replicas.ready"
NODES_READY = "cluster.nodes.ready"
NODES_TOTAL = "cluster.nodes.total"
PODS_RUNNING = "cluster.pods.running"
NODE_READY = "node.ready"
METRIC_TYPES = (VM_CPU, VM_MEMORY, VM_DISK, VM_NETWORK, TCP_STATUS, TCP_REPLICAS_READY, NODES_READY,
                NODES_TOTAL, PODS_RUNNING, NODE_READY)

VM_STATES = ("running", "stopped", "other")


@dataclass(frozen=True)
class MetricEntry:
    agent_instance_id: str
    resource_id: str
    type_name: str
    value: float

    def to_api(self) -> dict[str, Any]:
        """The POST /metric-entries body."""
        return {"agentInstanceId": self.agent_instance_id, "resourceId": self.resource_id,
                "typeName": self.type_name, "value": self.value}


def instance_id(namespace: str, tenant: str) -> str:
    """The agentInstanceId of a tenant: its TCP's `<namespace>/<name>`."""
    return f"{namespace}/{tenant}"


def percent(used: Any, total: Any) -> float | None:
    """used/total in percent (0..100, rounded to 0.01); None when total is not a positive number."""
    try:
        u, t = float(used or 0), float(total or 0)
    except (TypeError, ValueError):
        return None
    if t <= 0:
        return None
    return round(min(100.0, max(0.0, 100.0 * u / t)), 2)


def throughput(prev: tuple[float, float] | None, cur: tuple[float, float]) -> float | None:
    """Bytes/s between two samples (time s, cumulative bytes). None without a previous sample, when time
    did not move forward, or when the counter went backwards (the VM restarted: its counters reset)."""
    if prev is None:
        return None
    dt = cur[0] - prev[0]
    delta = cur[1] - prev[1]
    if dt <= 0 or delta < 0:
        return None
    return round(delta / dt, 2)


@dataclass
class ThroughputTracker:
    """The previous network sample of each VM (kept in memory between cycles). VMs not seen in a
    sample are forgotten, so a deleted VM's counters never linger."""

    samples: dict[str, tuple[float, float]] = field(default_factory=dict)

    def update(self, sampled_at: float, counters: dict[str, float]) -> dict[str, float]:
        """counters: VM key -> netin+netout now. Returns VM key -> bytes/s for VMs with a usable previous
        sample, and remembers this sample."""
        rates: dict[str, float] = {}
        for key, total in counters.items():
            rate = throughput(self.samples.get(key), (sampled_at, total))
            if rate is not None:
                rates[key] = rate
        self.samples = {key: (sampled_at, total) for key, total in counters.items()}
        return rates


def _vm_key(vm: dict[str, Any]) -> str:
    return f"{vm.get('node', '')}/{vm.get('vmid', '')}/{vm.get('name', '')}"


def _tenant_vms(proxmox: dict[str, Any]) -> list[dict[str, Any]]:
    return [vm for vm in proxmox.get("vms") or [] if isinstance(vm, dict) and vm.get("tenant")]


def vm_entries(proxmox: dict[str, Any], namespace: str, tracker: ThroughputTracker) -> list[MetricEntry]:
    """vm.cpu/memory/disk.usage (percent) per VM, and vm.network.throughput once two samples exist.
    A failed Proxmox collection yields nothing and leaves the previous samples in place."""
    if not proxmox.get("ok"):
        return []
    vms = _tenant_vms(proxmox)
    out: list[MetricEntry] = []
    counters = {_vm_key(vm): float(vm.get("netin") or 0) + float(vm.get("netout") or 0) for vm in vms}
    rates = tracker.update(float(proxmox.get("sampledAt") or 0), counters)
    for vm in vms:
        iid, name = instance_id(namespace, vm["tenant"]), str(vm.get("name") or vm.get("vmid"))
        cpu = vm.get("cpu")
        values = {
            VM_CPU: round(min(100.0, max(0.0, float(cpu) * 100)), 2) if isinstance(cpu, int | float) else None,
            VM_MEMORY: percent(vm.get("mem"), vm.get("maxmem")),
            VM_DISK: percent(vm.get("disk"), vm.get("maxdisk")),
            VM_NETWORK: rates.get(_vm_key(vm)),
        }
        out += [MetricEntry(iid, name, t, v) for t, v in values.items() if v is not None]
    return out


def tcp_entries(kamaji: dict[str, Any]) -> list[MetricEntry]:
    """tcp.status (Ready = 1, else 0) and tcp.replicas.ready per TenantControlPlane."""
    if not kamaji.get("ok"):
        return []
    out: list[MetricEntry] = []
    for tcp in kamaji.get("tcps") or []:
        iid = instance_id(tcp["namespace"], tcp["name"])
        out.append(MetricEntry(iid, tcp["name"], TCP_STATUS, 1 if tcp.get("status") == "Ready" else 0))
        out.append(MetricEntry(iid, tcp["name"], TCP_REPLICAS_READY, int(tcp.get("readyReplicas") or 0)))
    return out


def tenant_entries(tenants: list[dict[str, Any]]) -> list[MetricEntry]:
    """cluster.nodes.ready/total and cluster.pods.running per reachable tenant (resourceId: the TCP name),
    and node.ready (1/0) per node (resourceId: the node name). Unreachable tenants yield nothing."""
    out: list[MetricEntry] = []
    for tenant in tenants:
        if not tenant.get("reachable"):
            continue
        iid, name = instance_id(tenant["namespace"], tenant["name"]), tenant["name"]
        nodes = tenant.get("nodes") or []
        out.append(MetricEntry(iid, name, NODES_READY, sum(1 for n in nodes if n.get("ready"))))
        out.append(MetricEntry(iid, name, NODES_TOTAL, len(nodes)))
        out.append(MetricEntry(iid, name, PODS_RUNNING, int(tenant.get("podsRunning") or 0)))
        out += [MetricEntry(iid, n["name"], NODE_READY, 1 if n.get("ready") else 0) for n in nodes]
    return out


def entries_from_result(result: dict[str, Any], tracker: ThroughputTracker) -> list[MetricEntry]:
    namespace = str(result.get("namespace") or "")
    return (vm_entries(result.get("proxmox") or {}, namespace, tracker)
            + tcp_entries(result.get("kamaji") or {})
            + tenant_entries(result.get("tenants") or []))


def vm_state(status: Any) -> str:
    return status if status in ("running", "stopped") else "other"


def vm_state_counts(proxmox: dict[str, Any], namespace: str) -> dict[str, Any]:
    """getVMStateCounts: tenant VMs by state (running / stopped / other), per service (agentInstanceId)
    and in total."""
    total = dict.fromkeys(VM_STATES, 0)
    services: dict[str, dict[str, int]] = {}
    for vm in _tenant_vms(proxmox):
        state = vm_state(vm.get("status"))
        total[state] += 1
        per = services.setdefault(instance_id(namespace, vm["tenant"]), dict.fromkeys(VM_STATES, 0))
        per[state] += 1
    return {"total": total, "services": services}


def job_stats(snapshot: dict[str, Any]) -> dict[str, Any]:
    """getJobStats: processed / failed / running, and per action count, failed, mean and max seconds."""
    actions = {}
    for action, a in sorted((snapshot.get("actions") or {}).items()):
        count = int(a.get("count") or 0)
        actions[action] = {"count": count, "failed": int(a.get("failed") or 0),
                           "mean_s": round(float(a.get("total_s") or 0) / count, 3) if count else 0.0,
                           "max_s": round(float(a.get("max_s") or 0), 3),
                           "total_s": round(float(a.get("total_s") or 0), 3)}
    return {"processed": int(snapshot.get("processed") or 0), "failed": int(snapshot.get("failed") or 0),
            "running": int(snapshot.get("running") or 0), "actions": actions}


def collection_problems(result: dict[str, Any]) -> list[str]:
    """One line per part of the collection that failed: Proxmox, Kamaji, each unreachable tenant. A part the
    operator did not configure (`configured: false`) is not a failure."""
    problems = []
    for part in ("proxmox", "kamaji"):
        section = result.get(part) or {}
        if not section.get("ok") and section.get("configured", True):
            problems.append(f"{part}: {section.get('error') or 'not collected'}")
    for tenant in result.get("tenants") or []:
        if tenant.get("queried", True) and not tenant.get("reachable"):
            problems.append(f"tenant {tenant.get('namespace')}/{tenant.get('name')}: "
                            f"{tenant.get('error') or 'unreachable'}")
    return problems
