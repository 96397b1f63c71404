"""One full tenant metrics cycle (playbooks/metrics.yml through the job runner, conversion, posting every
entry to Fulcrum) with the lab filled with 50, then 200 tenants of 3 VMs each, through the emulators'
Python APIs (Fulcrum emulator, Kamaji parent cluster with one tenant API server per TCP, fakepve).

    python bench/bench_metrics.py [--tenants 50,200] [--vms 3]

Prints, per size: the cycle time against a quarter of the default interval (target: below), and the
calls made to Proxmox and to the parent cluster during the cycle (target: constant for Proxmox, whatever
the number of VMs). Tenant API calls (2 per Ready tenant) are printed too: they grow with tenants by design.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "agent"))
sys.path.insert(0, str(REPO / "tests" / "integration"))

from metrics_lab_support import GiB, MetricsLab  # noqa: E402

from agentkube.adapters.fulcrum_client import FulcrumClient  # noqa: E402
from agentkube.adapters.job_runner import JobRunner  # noqa: E402
from agentkube.agent.metrics_loop import MetricsLoop  # noqa: E402
from agentkube.core.redaction import Redactor  # noqa: E402
from agentkube.core.settings import MetricsSettings  # noqa: E402


def tenant_requests(lab: MetricsLab) -> int:
    return sum(sum(api.server.request_count.values()) for api in lab.kube.controller.tenants.values()
               if api.server is not None)


def fill(lab: MetricsLab, upto: int, vms: int) -> float:
    started = time.monotonic()
    for i in range(len(lab.tenants), upto):
        lab.add_tenant(f"t{i:04d}", vms=vms, pods=2,
                       vm_stats={"cpu": 0.1 + (i % 7) / 10, "mem": GiB, "disk": 2 * GiB, "netin": i * 1000,
                                 "netout": i * 500})
    lab.wait_ready(timeout=600)
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", default="50,200", help="comma-separated tenant counts, ascending")
    parser.add_argument("--vms", type=int, default=3, help="VMs (and tenant nodes) per tenant")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.tenants.split(",")]
    logging.basicConfig(level=logging.WARNING)
    default_interval = MetricsSettings().interval_s
    budget = default_interval / 4
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp, MetricsLab(Path(tmp) / "lab") as lab:
        settings = lab.settings()
        client = FulcrumClient(settings.fulcrum.url, settings.fulcrum.token.get_secret_value(),
                               verify=settings.fulcrum.verify, retry_attempts=3, retry_max_s=0.5, timeout_s=30)
        runner = JobRunner(settings.runner.project_dir, Path(tmp) / "runs", Redactor())
        loop = MetricsLoop(client, runner, settings.metrics, inventory=str(lab.inventory))
        try:
            loop.run_cycle()  # warm-up on the empty lab: kubernetes.core caches the API discovery
            for size in sizes:
                fill_s = fill(lab, size, args.vms)
                pve0, parent0, tenants0 = lab.proxmox_requests(), lab.parent_requests(), tenant_requests(lab)
                report = loop.run_cycle()
                if report is None or not report.ok:
                    print(f"{size} tenants: the cycle failed: {report and report.error}")
                    return 1
                rows.append({
                    "tenants": size, "vms": size * args.vms, "fill_s": fill_s, "cycle_s": report.duration_s,
                    "collect_s": report.collect_s, "post_s": report.post_s,
                    "proxmox_calls": lab.proxmox_requests() - pve0, "parent_calls": lab.parent_requests() - parent0,
                    "tenant_calls": tenant_requests(lab) - tenants0, "entries": report.entries,
                    "posted": report.posted, "dropped": report.dropped, "problems": len(report.problems),
                })
        finally:
            loop.stop()
            runner.close()
    print(f"one full metrics cycle (collect + convert + post), default interval {default_interval:.0f}s, "
          f"budget a quarter of it = {budget:.0f}s")
    print(f"{'tenants':>8} {'VMs':>5} {'cycle s':>8} {'collect':>8} {'post':>6} {'/budget':>8} "
          f"{'proxmox calls':>14} {'parent calls':>13} "
          f"{'tenant calls':>13} {'entries':>8} {'posted':>7} {'dropped':>8} {'problems':>9}")
    for r in rows:
        print(f"{r['tenants']:>8} {r['vms']:>5} {r['cycle_s']:>8.2f} {r['collect_s']:>8.2f} {r['post_s']:>6.2f} "
              f"{r['cycle_s'] / budget:>8.2f} "
              f"{r['proxmox_calls']:>14} {r['parent_calls']:>13} {r['tenant_calls']:>13} {r['entries']:>8} "
              f"{r['posted']:>7} {r['dropped']:>8} {r['problems']:>9}")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end (other work on the "
          "machine slows the cycle; the emulators share the bench process)")
    constant_pve = len({r["proxmox_calls"] for r in rows}) == 1
    constant_parent = len({r["parent_calls"] for r in rows}) == 1
    within = all(r["cycle_s"] < budget for r in rows)
    print(f"Proxmox calls per cycle constant across sizes: {'yes' if constant_pve else 'NO'}; "
          f"parent cluster calls constant: {'yes' if constant_parent else 'NO'}; "
          f"every cycle under the budget: {'yes' if within else 'NO'} "
          f"(largest: {max(r['cycle_s'] for r in rows) / budget:.2f} of the budget)")
    return 0 if constant_pve and within else 1


if __name__ == "__main__":
    raise SystemExit(main())
