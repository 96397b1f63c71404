"""Chaos: tenants created and deleted through the agent (the real action playbooks against the Kamaji and
Proxmox emulators) while the agent process is killed with SIGKILL at random moments and restarted.

Every job ends Completed, its result accepted once; no job ever has two playbook runs at once (RunMonitor
watches the run guards in /proc); no run outlives the test; nothing is left in Kamaji or Proxmox. Slow: one
test, a handful of tenants."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import pytest
import yaml
from agent_harness import AGENTKUBE, RunMonitor, agent_config, wait_for

from agentkube_lab.lab import Lab

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TENANTS = 3
SPEC = {"kubernetesVersion": "v1.34.4", "controlPlane": {"replicas": 1, "serviceType": "ClusterIP"},
        "nodePools": [{"name": "default", "count": 1, "cores": 2, "memoryMiB": 2048, "diskGiB": 20}]}


def test_tenants_survive_an_agent_killed_at_random_moments(tmp_path, capsys):
    rng = random.Random(int(os.environ.get("AGENTKUBE_CHAOS_SEED", "12")))
    with Lab(tmp_path / "lab", groups=TENANTS, emulated_workers=False, tcp_ready_delay=0.2) as lab:
        cfg = agent_config(lab)
        cfg["runner"]["actions"] = {}  # the real action playbooks
        cfg["health"] = {"port": 0}
        cfg["agent"].update({"max_concurrent_jobs": TENANTS, "reconcile_interval_s": 5})
        cfg["leadership"].update({"lease_duration_s": 4, "renew_deadline_s": 3, "retry_period_s": 1})
        config = tmp_path / "agent.yaml"
        config.write_text(yaml.safe_dump(cfg))
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTKUBE_")}
        log = tmp_path / "agent.log"
        kills = 0

        def start() -> subprocess.Popen:
            return subprocess.Popen([*AGENTKUBE, "run", "--config", str(config)], env=env, stdout=log.open("ab"),
                                    stderr=subprocess.STDOUT, start_new_session=True)

        def all_done(jobs: list[dict]) -> bool:
            return all(lab.fulcrum.get_job(j["id"])["status"] in ("Completed", "Failed") for j in jobs)

        def chaos(jobs: list[dict], times: int) -> subprocess.Popen:
            """Kill the agent `times` times, at random moments while its jobs run, restarting it each time."""
            nonlocal agent, kills
            for _ in range(times):
                deadline = time.monotonic() + rng.uniform(2.0, 12.0)
                while time.monotonic() < deadline and not all_done(jobs):
                    time.sleep(0.2)
                if all_done(jobs):
                    break
                os.killpg(agent.pid, signal.SIGKILL)
                agent.wait(30)
                kills += 1
                agent = start()
            return agent

        assert lab.catalog is not None
        agent = start()
        with RunMonitor(tmp_path) as monitor:
            svcs = [lab.fulcrum.create_service(f"Chaos {i}", lab.catalog.service_type_id, lab.catalog.group_ids[i],
                                               lab.catalog.agent_id, SPEC) for i in range(TENANTS)]
            creates = [next(j for j in lab.fulcrum.jobs if j["serviceId"] == s["id"]) for s in svcs]
            chaos(creates, 3)
            wait_for(lambda: all_done(creates), 600, interval=1, what="the creates")
            deletes = [lab.fulcrum.request_action(s["id"], "delete") for s in svcs]
            chaos(deletes, 2)
            wait_for(lambda: all_done(deletes), 600, interval=1, what="the deletes")
            agent.send_signal(signal.SIGTERM)
            agent.wait(120)
        jobs = creates + deletes
        with capsys.disabled():
            runs = sum(len(monitor.runs.get(j["id"], ())) for j in jobs)
            print(f"\n[chaos] jobs={len(jobs)} kills={kills} playbook runs={runs} "
                  f"takeovers={log.read_text().count('running it again') + log.read_text().count('taking it over')}")
        failed = {j["id"]: lab.fulcrum.get_job(j["id"]).get("errorMessage") for j in jobs
                  if lab.fulcrum.get_job(j["id"])["status"] != "Completed"}
        assert not failed, failed
        for job in jobs:
            accepted = [r for r in lab.fulcrum.request_log
                        if r.path.endswith(f"/jobs/{job['id']}/complete") and 204 in (r.status, r.handled_status)]
            assert len(accepted) == 1, job
        assert monitor.overlaps == []
        wait_for(lambda: not monitor.guards(jobs_only=False), 30, what="every run to end")
        assert lab.kube.list("kamaji.clastix.io/v1alpha1", "TenantControlPlane", "kamaji-tenants") == []
        assert lab.pve.call(lambda: [vm.vmid for vm in lab.pve.fake.vms if "tenant-" in str(vm.config.get("tags"))]) \
            == []
