"""The lab demo: one tenant's whole lifecycle through Fulcrum, the agent and the playbooks, on loopback.

lab up -> service created in the Fulcrum emulator -> create -> start -> update (pool 1 -> 3 workers) ->
update (one Kubernetes minor up) -> stop -> start -> delete -> a table of the jobs, and a check of what is
left behind.
"""

from __future__ import annotations

import copy
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from agentkube_lab.lab import Lab

SPEC: dict[str, Any] = {
    "kubernetesVersion": "v1.34.4",
    "controlPlane": {"replicas": 2, "serviceType": "LoadBalancer", "address": "10.0.0.50"},
    "nodePools": [{"name": "default", "count": 1, "cores": 2, "memoryMiB": 4096, "diskGiB": 40}],
    "baseline": {"cni": "calico", "podSecurity": "baseline"},
}


@dataclass
class Step:
    title: str
    action: str
    params: dict[str, Any] | None = None


def story() -> list[Step]:
    scaled = copy.deepcopy(SPEC)
    scaled["nodePools"][0]["count"] = 3
    upgraded = copy.deepcopy(scaled)
    upgraded["kubernetesVersion"] = "v1.35.7"
    return [
        Step("create the tenant", "create"),
        Step("start it", "start"),
        Step("grow the pool from 1 to 3 workers", "update", {"nodePools": scaled["nodePools"]}),
        Step("upgrade Kubernetes one minor (v1.34 -> v1.35)", "update",
             {"kubernetesVersion": upgraded["kubernetesVersion"]}),
        Step("stop it", "stop"),
        Step("start it again", "start"),
        Step("delete it", "delete"),
    ]

WORKERS_BOOTED = ("booted like VMs (cloud-init, an sshd each), reached over SSH as the cloud-init user with become, "
                  "host keys pinned through the guest agent, packages from the lab's pkgs.k8s.io; "
                  "kubeadm and kubelet EMULATED")


class Demo:
    def __init__(self, state_dir: Path, out: TextIO = sys.stdout, step_timeout_s: float = 600):
        self.lab = Lab(state_dir)
        self.out = out
        self.step_timeout_s = step_timeout_s
        self.rows: list[tuple[str, str, float, str, str]] = []
        self.services: list[dict[str, Any]] = []

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def run(self) -> int:
        started = time.monotonic()
        # fakepve logs every HTTP request at INFO: keep the story readable.
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
        with self.lab:
            self.say(f"lab up: Fulcrum emulator {self.lab.fulcrum.url}, Kamaji parent {self.lab.kube.url}, "
                     f"Proxmox VE {self.lab.pve.url} ({self.lab.pve.realism.describe()}); workers: "
                     + (WORKERS_BOOTED if self.lab.emulated_workers
                        else "VMs only, join skipped (agentkube_join_workers: false)"))
            # The agent runs as its own process, as it is deployed (and so it does not share the emulators'
            # interpreter); its log goes to a file in the lab's state folder.
            log_path = self.lab.state_dir / "agent.log"
            with open(log_path, "wb") as agent_log:
                agent = subprocess.Popen(
                    [sys.executable, "-m", "agentkube.cli", "run", "--config", str(self.lab.config_file)],
                    stdout=agent_log, stderr=subprocess.STDOUT, env=_agent_env())
                self.say(f"agent started (pid {agent.pid}), log: {log_path}")
                try:
                    ok = self._story()
                finally:
                    agent.send_signal(signal.SIGTERM)
                    try:
                        agent.wait(timeout=120)
                    except subprocess.TimeoutExpired:
                        agent.kill()
                        agent.wait()
            leftovers = self.leftovers()
        self._table()
        if leftovers:
            self.say("LEFT BEHIND: " + "; ".join(leftovers))
        else:
            self.say("nothing left behind: " + ", ".join(["the Fulcrum service is Deleted", *self.lab.checked]))
        self.say(f"demo {'succeeded' if ok and not leftovers else 'FAILED'} in {time.monotonic() - started:.0f}s")
        return 0 if ok and not leftovers else 1

    def _story(self) -> bool:
        catalog = self.lab.catalog
        assert catalog is not None
        svc = self.lab.fulcrum.create_service("Demo Cluster", catalog.service_type_id, catalog.group_ids[0],
                                              catalog.agent_id, SPEC)
        self.services.append(svc)
        self.say(f"service 'Demo Cluster' ({svc['id']}) requested in Fulcrum")
        for i, step in enumerate(story(), 1):
            if step.action == "create":
                job = self.lab.fulcrum.jobs[-1]
            else:
                job = self.lab.fulcrum.request_action(svc["id"], step.action, step.params)
            self.say(f"[{i}/{len(story())}] {step.title}: job {step.action} {job['id'][:8]} queued")
            t0 = time.monotonic()
            done = _wait(lambda j=job: self.lab.fulcrum.get_job(j["id"])["status"] in ("Completed", "Failed"),
                         self.step_timeout_s)
            final = self.lab.fulcrum.get_job(job["id"])
            service = self.lab.fulcrum.get_service(svc["id"])
            status = final["status"] if done else "TimedOut"
            self.rows.append((step.title, step.action, time.monotonic() - t0, status,
                              final.get("errorMessage") or f"service {service['status']}"))
            self.say(f"      -> {status} in {time.monotonic() - t0:.1f}s; service is {service['status']}"
                     + (f": {final.get('errorMessage')}" if final.get("errorMessage") else ""))
            if status != "Completed":
                return False
        return True

    def leftovers(self) -> list[str]:
        left = [f"service {s['name']} is {s['status']}" for s in self.services if
                self.lab.fulcrum.get_service(s["id"])["status"] != "Deleted"]
        return left + self.lab.leftovers()

    def _table(self) -> None:
        self.say("")
        self.say(f"{'step':<48} {'action':<8} {'seconds':>8}  {'result':<10} detail")
        for title, action, secs, status, detail in self.rows:
            self.say(f"{title:<48} {action:<8} {secs:>8.1f}  {status:<10} {detail}")
        self.say("")


def _agent_env() -> dict[str, str]:
    """The environment for the agent process: the lab's configuration file, not the caller's AGENTKUBE_*."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AGENTKUBE_")}


def _wait(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False
